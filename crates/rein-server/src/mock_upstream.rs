//! A mock OpenAI-compatible upstream that `rein bench gateway` measures the gateway against:
//! every `POST /v1/chat/completions` is answered at once with the same reply, a short text and
//! one tool call, so what is measured is rein's own cost, not a model's.

use axum::Router;
use axum::routing::post;
use serde_json::{Value, json};

/// The reply: one call of `orders_lookup`, as a model with tools would answer.
pub fn reply() -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": "mock",
        "choices": [{
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Let me look that order up.",
                "tool_calls": [{
                    "id": "call_mock",
                    "type": "function",
                    "function": {"name": "orders_lookup", "arguments": "{\"order_id\":\"A-1001\"}"},
                }],
            },
            "finish_reason": "tool_calls",
        }],
        "usage": {"prompt_tokens": 60, "completion_tokens": 20, "total_tokens": 80},
    })
}

/// Serves the mock on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let body = reply().to_string();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    axum::serve(listener, app).await
}
