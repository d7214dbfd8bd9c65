//! Structured answers through the gateway: a client that asked for JSON (`parse()` in the
//! official SDKs) gets the model's JSON intact when rein withheld a call beside it, with rein's
//! note where each API puts a refusal; the SDKs' part is `tests/sdk/structured_client.py`.

use serde_json::{Value, json};

use super::{python_client, upstream_gateway};

/// A Chat Completions answer: `text` (if any) and a call of `drop_tables`, which the operator
/// does not know.
fn json_and_a_refused_call(text: Option<&str>, id: &str) -> Value {
    let mut answer = rein_testkit::fake::openai_calls(&[(id, "drop_tables", "{}")]);
    answer["choices"][0]["message"]["content"] = json!(text);
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_structured_answer_parses_in_each_sdk_with_the_withheld_call_told_apart() {
    let json = Some(r#"{"order_id": "A1"}"#);
    let answers = (1..=9)
        .map(|n| json_and_a_refused_call(json.filter(|_| n != 3 && n != 8), &format!("call_{n}")))
        .collect();
    let upstream = rein_testkit::fake::server(answers).await;
    let (s, agent, _dirs) = upstream_gateway(
        &upstream.uri(),
        "max_attempts = 1\n[[tools]]\nclient = true\nname = \"orders_lookup\"\n",
    );
    python_client("structured_client.py", &[&s.base, &agent]);
    let asked = upstream.received_requests().await.unwrap();
    assert_eq!(asked.len(), 9, "every request reached the provider once");
    // Each structured request asked the provider for its format; the last asked for none.
    let formats: Vec<Value> = asked
        .iter()
        .map(|r| r.body_json::<Value>().unwrap()["response_format"]["type"].clone())
        .collect();
    assert!(
        formats[..8].iter().all(|f| f == "json_schema"),
        "{formats:?}"
    );
    assert_eq!(formats[8], Value::Null);
    drop(s);
}
