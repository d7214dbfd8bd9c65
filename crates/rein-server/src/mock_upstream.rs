//! A mock OpenAI-compatible upstream that `rein bench gateway` measures the gateway against:
//! every `POST /v1/chat/completions` is answered at once with the same reply, a short text and
//! one tool call, so what is measured is rein's own cost, not a model's. And the bare relay
//! `rein bench gateway --floor` measures in the gateway's place: the least any gateway in front
//! of the mock costs on the machine.

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
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

/// Serves, on `listener`, a relay of every `POST /v1/chat/completions` to `upstream` (its base
/// URL): the body forwarded as it came and the reply returned as it came, through the HTTP
/// server and client rein serves and calls models with (axum on hyper, reqwest), with nothing
/// read, judged, reserved or recorded, the upstream's status passed on. What it costs per request is the floor under any gateway's
/// cost on the machine: a request in and a request out on loopback.
pub async fn relay(listener: tokio::net::TcpListener, upstream: &str) -> std::io::Result<()> {
    // Built as rein's providers build theirs (a time limit on each call and on connecting).
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(std::io::Error::other)?;
    let url = format!("{upstream}/v1/chat/completions");
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |body: axum::body::Bytes| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(reply) => {
                        let status = StatusCode::from_u16(reply.status().as_u16())
                            .unwrap_or(StatusCode::BAD_GATEWAY);
                        match reply.bytes().await {
                            Ok(bytes) => (status, [("content-type", "application/json")], bytes)
                                .into_response(),
                            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                        }
                    }
                    Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app).await
}
