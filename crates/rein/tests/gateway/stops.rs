//! A stop text through the gateway: an answer an Anthropic model stopped at one of the client's
//! stop texts reaches the client saying which, in each API's words (the Messages API's
//! `stop_sequence`, Chat Completions' `stop`); the SDKs' part is `tests/sdk/stop_client.py`.

use serde_json::{Value, json};

use super::{provider_gateway, python_client};

/// A Messages API answer with `text`, stopped as `stop_reason` says, at `stop_sequence`.
fn stopped(text: &str, stop_reason: &str, stop_sequence: Value) -> Value {
    json!({"id": "msg_up", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason, "stop_sequence": stop_sequence,
        "usage": {"input_tokens": 9, "output_tokens": 4}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stop_text_an_anthropic_model_stopped_at_reaches_the_client_in_its_apis_words() {
    let at_stop = stopped("a, b", "stop_sequence", json!("###"));
    let upstream = rein_testkit::fake::server(vec![
        at_stop.clone(),
        at_stop.clone(),
        at_stop,
        stopped("a, b, c", "end_turn", Value::Null),
        // An upstream naming a stop text the client did not give says nothing it could use.
        stopped("a, b", "stop_sequence", json!("<made up>")),
    ])
    .await;
    let (s, agent, _dirs) = provider_gateway("anthropic", &upstream.uri(), "max_attempts = 1\n");
    python_client("stop_client.py", &[&s.base, &agent]);
    let asked = upstream.received_requests().await.unwrap();
    assert_eq!(asked.len(), 5, "every request reached the provider once");
    for r in &asked {
        let body: Value = r.body_json().unwrap();
        assert_eq!(body["stop_sequences"], json!(["###"]), "{body}");
    }
    drop(s);
}
