//! Provider tests. The HTTP providers talk to a local mock server that records each request, so the
//! tests assert the real request shape (headers, tool schemas, tool results in the conversation)
//! and replay recorded answers, including errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rein_core::{Message, ToolCall, ToolSpec, Usage};
use rein_model::{
    AnthropicConfig, AnthropicProvider, ChatRequest, OpenAiConfig, OpenAiProvider, Provider,
    ProviderError, ScriptedProvider,
};
use serde_json::{Value, json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An owned conversation that tests lend to providers as a `ChatRequest`.
struct Conversation {
    system: String,
    messages: Vec<Message>,
    tools: Vec<ToolSpec>,
}

impl Conversation {
    fn request(&self) -> ChatRequest<'_> {
        ChatRequest {
            system: &self.system,
            messages: &self.messages,
            tools: &self.tools,
            settings: None,
        }
    }
}

fn conversation() -> Conversation {
    Conversation {
        system: "You are a support agent.".into(),
        messages: vec![
            Message::User {
                text: "Where is order A-1?".into(),
            },
            Message::Assistant {
                text: Some("Looking it up.".into()),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "orders.lookup".into(),
                    arguments: json!({"order_id": "A-1"}),
                    invalid_arguments: None,
                }],
            },
            Message::Tool {
                call_id: "call_1".into(),
                name: "orders.lookup".into(),
                content: "{\"status\":\"shipped\"}".into(),
                is_error: false,
            },
        ],
        tools: vec![ToolSpec {
            name: "orders.lookup".into(),
            description: "Look up an order".into(),
            parameters: json!({"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}),
        }],
    }
}

fn openai(server: &MockServer, timeout_ms: u64) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key: Some("sk-test".into()),
        model: "gpt-test".into(),
        timeout: Duration::from_millis(timeout_ms),
        max_tokens: 256,
        temperature: None,
    })
    .unwrap()
}

fn anthropic(server: &MockServer) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig {
        base_url: server.uri(),
        api_key: Some("ak-test".into()),
        model: "claude-test".into(),
        timeout: Duration::from_secs(5),
        max_tokens: 512,
        temperature: Some(0.0),
    })
    .unwrap()
}

async fn only_request_body(server: &MockServer) -> Value {
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    requests[0].body_json().unwrap()
}

#[tokio::test]
async fn openai_sends_the_conversation_and_tools_and_maps_the_answer_back() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(header("authorization", "Bearer sk-test"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_9", "type": "function", "function": {"name": "orders_lookup", "arguments": "{\"order_id\":\"A-2\"}"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 42, "completion_tokens": 7}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let reply = openai(&server, 5_000)
        .complete(&conversation().request())
        .await
        .unwrap();
    assert_eq!(reply.text, None);
    assert_eq!(
        reply.tool_calls,
        vec![ToolCall {
            id: "call_9".into(),
            name: "orders.lookup".into(),
            arguments: json!({"order_id": "A-2"}),
            invalid_arguments: None
        }]
    );
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 42,
            output_tokens: 7
        }
    );
    assert_eq!(reply.stop_reason.as_deref(), Some("tool_calls"));

    let body = only_request_body(&server).await;
    assert_eq!(body["model"], "gpt-test");
    // The reply cap is sent: as max_completion_tokens, and as max_tokens to servers other than
    // OpenAI's own.
    assert_eq!(body["max_completion_tokens"], 256);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are a support agent."})
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Where is order A-1?"})
    );
    assert_eq!(
        body["messages"][2]["tool_calls"][0],
        json!({"id": "call_1", "type": "function", "function": {"name": "orders_lookup", "arguments": "{\"order_id\":\"A-1\"}"}})
    );
    assert_eq!(
        body["messages"][3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"status\":\"shipped\"}"})
    );
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "orders_lookup");
    assert_eq!(
        body["tools"][0]["function"]["parameters"]["required"],
        json!(["order_id"])
    );
}

#[tokio::test]
async fn anthropic_sends_tool_results_as_blocks_and_maps_the_answer_back() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", "ak-test"))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "content": [
                {"type": "text", "text": "Refunding now."},
                {"type": "tool_use", "id": "toolu_1", "name": "orders_lookup", "input": {"order_id": "A-3"}}
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 100, "output_tokens": 20}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let reply = anthropic(&server)
        .complete(&conversation().request())
        .await
        .unwrap();
    assert_eq!(reply.text.as_deref(), Some("Refunding now."));
    assert_eq!(reply.tool_calls[0].name, "orders.lookup");
    assert_eq!(reply.tool_calls[0].arguments, json!({"order_id": "A-3"}));
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 100,
            output_tokens: 20
        }
    );

    let body = only_request_body(&server).await;
    assert_eq!(body["system"], "You are a support agent.");
    assert_eq!(body["max_tokens"], 512);
    assert_eq!(
        body["messages"][0],
        json!({"role": "user", "content": "Where is order A-1?"})
    );
    assert_eq!(
        body["messages"][1]["content"],
        json!([
            {"type": "text", "text": "Looking it up."},
            {"type": "tool_use", "id": "call_1", "name": "orders_lookup", "input": {"order_id": "A-1"}}
        ])
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "{\"status\":\"shipped\"}", "is_error": false}]})
    );
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
}

/// A conversation with every shape a body carries: an assistant turn without text and with
/// two calls (one whose arguments were not JSON, one whose were not an object), both results
/// (one an error), then the user again.
fn every_shape() -> Conversation {
    let call = |id: &str, arguments: Value, invalid: Option<&str>| ToolCall {
        id: id.into(),
        name: "orders.lookup".into(),
        arguments,
        invalid_arguments: invalid.map(str::to_owned),
    };
    let result = |id: &str, content: &str, is_error: bool| Message::Tool {
        call_id: id.into(),
        name: "orders.lookup".into(),
        content: content.into(),
        is_error,
    };
    let mut c = conversation();
    c.messages = vec![
        Message::User {
            text: "Where are \"A-1\" and A-2?".into(),
        },
        Message::Assistant {
            text: None,
            tool_calls: vec![
                call("call_1", json!("{order_id: A-1"), Some("not JSON")),
                call("call_2", json!(["A-2"]), None),
            ],
        },
        result("call_1", "the arguments are not JSON", true),
        result("call_2", "shipped", false),
        Message::User {
            text: "Thanks.".into(),
        },
    ];
    c
}

/// Answers `provider`'s request for `every_shape` with `reply`; returns the body it sent.
async fn body_sent<P: Provider>(server: &MockServer, provider: &P, reply: Value) -> Value {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(reply))
        .mount(server)
        .await;
    provider.complete(&every_shape().request()).await.unwrap();
    only_request_body(server).await
}

#[tokio::test]
async fn openai_sends_every_shape_of_a_conversation_as_the_api_has_it() {
    let server = MockServer::start().await;
    let provider = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", server.uri()),
        api_key: None,
        model: "gpt-test".into(),
        timeout: Duration::from_secs(5),
        max_tokens: 256,
        // Sent as configured: built as a JSON tree, the body once widened the f32 to
        // 0.699999988079071.
        temperature: Some(0.7),
    })
    .unwrap();
    let reply = json!({"choices": [{"message": {"content": "ok"}}]});
    let body = body_sent(&server, &provider, reply).await;
    let call = |id: &str, arguments: &str| json!({"id": id, "type": "function", "function": {"name": "orders_lookup", "arguments": arguments}});
    assert_eq!(
        body,
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are a support agent."},
                {"role": "user", "content": "Where are \"A-1\" and A-2?"},
                // No text is sent as null; arguments that were not JSON go back as they came.
                {"role": "assistant", "content": null, "tool_calls": [
                    call("call_1", "{order_id: A-1"),
                    call("call_2", "[\"A-2\"]"),
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "the arguments are not JSON"},
                {"role": "tool", "tool_call_id": "call_2", "content": "shipped"},
                {"role": "user", "content": "Thanks."},
            ],
            "tools": [{"type": "function", "function": {
                "name": "orders_lookup",
                "description": "Look up an order",
                "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
            }}],
            "max_completion_tokens": 256,
            "max_tokens": 256,
            "temperature": 0.7,
        })
    );
}

#[tokio::test]
async fn anthropic_sends_every_shape_of_a_conversation_as_the_api_has_it() {
    let server = MockServer::start().await;
    let reply = json!({"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"});
    let body = body_sent(&server, &anthropic(&server), reply).await;
    assert_eq!(
        body,
        json!({
            "model": "claude-test",
            "max_tokens": 512,
            "system": "You are a support agent.",
            "messages": [
                {"role": "user", "content": "Where are \"A-1\" and A-2?"},
                // Arguments that are not an object go as an empty input (the API takes only
                // objects); the results of one turn travel together in one user message.
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "call_1", "name": "orders_lookup", "input": {}},
                    {"type": "tool_use", "id": "call_2", "name": "orders_lookup", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "the arguments are not JSON", "is_error": true},
                    {"type": "tool_result", "tool_use_id": "call_2", "content": "shipped", "is_error": false},
                ]},
                {"role": "user", "content": "Thanks."},
            ],
            "tools": [{
                "name": "orders_lookup",
                "description": "Look up an order",
                "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
            }],
            "temperature": 0.0,
        })
    );
}

async fn openai_answering(template: ResponseTemplate, timeout_ms: u64) -> ProviderError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(template)
        .mount(&server)
        .await;
    openai(&server, timeout_ms)
        .complete(&conversation().request())
        .await
        .unwrap_err()
}

#[tokio::test]
async fn http_errors_are_classified_with_retry_hints() {
    let err = openai_answering(
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(json!({"error": {"message": "slow down"}})),
        5_000,
    )
    .await;
    assert_eq!(
        err,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
            message: "slow down".into()
        }
    );
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    let err = openai_answering(
        ResponseTemplate::new(500).set_body_string("upstream exploded"),
        5_000,
    )
    .await;
    assert_eq!(
        err,
        ProviderError::Server {
            status: 500,
            retry_after: None,
            message: "upstream exploded".into()
        }
    );
    assert!(err.is_retryable());

    let err = openai_answering(
        ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "bad key"}})),
        5_000,
    )
    .await;
    assert_eq!(
        err,
        ProviderError::Rejected {
            status: 401,
            message: "bad key".into()
        }
    );
    assert!(!err.is_retryable());
}

/// An account out of credit or quota, as each API says it, is told from a rate limit and from a
/// request the provider cannot take: no retry, and not the request's fault (so it counts against
/// the model's breaker and a gateway's client is not told to fix its request).
#[tokio::test]
async fn an_account_out_of_credit_or_quota_is_told_from_a_rate_limit_and_a_bad_request() {
    let openai_quota = json!({"error": {"message": "You exceeded your current quota",
        "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}});
    let anthropic_credit = json!({"type": "error", "error": {"type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API."}});
    let cases = [
        (429, openai_quota, true),
        (
            429,
            json!({"error": {"message": "hard limit", "code": "billing_hard_limit_reached"}}),
            true,
        ),
        (400, anthropic_credit, true),
        (402, json!({"error": {"message": "pay up"}}), true),
        (
            400,
            json!({"type": "error", "error": {"type": "billing_error", "message": "no plan"}}),
            true,
        ),
        // A rate, and a value the provider cannot take, stay what they were.
        (
            429,
            json!({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}),
            false,
        ),
        (
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too large"}}),
            false,
        ),
        (429, json!({"error": "insufficient_quota"}), true),
        // Even when the provider quotes a client's value that says the words: a client must not
        // be able to open the model's breaker for everyone.
        (
            400,
            json!({"type": "error", "error": {"type": "invalid_request_error",
            "message": "tools.0.name: 'Your credit balance is too low' does not match '^[a-z_]+$'"}}),
            false,
        ),
        (
            400,
            json!({"error": {"message": "Your credit balance is too low", "type": "invalid_request_error"}}),
            false,
        ),
    ];
    for (status, body, account) in cases {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_json(&body))
            .mount(&server)
            .await;
        for err in [
            openai(&server, 5_000)
                .complete(&conversation().request())
                .await
                .unwrap_err(),
            anthropic(&server)
                .complete(&conversation().request())
                .await
                .unwrap_err(),
        ] {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map_or_else(|| body.to_string(), str::to_owned);
            if account {
                assert_eq!(
                    err,
                    ProviderError::Account {
                        status,
                        message: message.clone()
                    },
                    "{body}"
                );
                assert!(!err.is_retryable() && !err.is_request_fault(), "{body}");
            } else {
                assert!(
                    !matches!(err, ProviderError::Account { .. }),
                    "{body}: {err:?}"
                );
                assert_eq!(err.is_request_fault(), status == 400, "{body}");
                assert_eq!(err.is_retryable(), status == 429, "{body}");
            }
        }
    }
}

#[tokio::test]
async fn a_slow_provider_times_out() {
    let err = openai_answering(
        ResponseTemplate::new(200)
            .set_delay(Duration::from_secs(5))
            .set_body_json(json!({})),
        150,
    )
    .await;
    assert_eq!(
        err,
        ProviderError::Timeout {
            after: Duration::from_millis(150)
        }
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn malformed_answers_are_errors_not_panics() {
    let err = openai_answering(
        ResponseTemplate::new(200).set_body_string("{\"choices\": [tru"),
        5_000,
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Malformed { detail } if detail.contains("not JSON")),
        "{err}"
    );
    let err = openai_answering(
        ResponseTemplate::new(200).set_body_json(json!({"choices": []})),
        5_000,
    )
    .await;
    assert!(
        matches!(&err, ProviderError::Malformed { detail } if detail.contains("choices[0]")),
        "{err}"
    );

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"content": "nope"})))
        .mount(&server)
        .await;
    let err = anthropic(&server)
        .complete(&conversation().request())
        .await
        .unwrap_err();
    assert!(matches!(&err, ProviderError::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn a_tool_call_with_invalid_arguments_is_kept_and_flagged() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "choices": [{"message": {"content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "orders_lookup", "arguments": "{order_id: A-1"}}
            ]}, "finish_reason": "tool_calls"}]
        })))
        .mount(&server)
        .await;
    let reply = openai(&server, 5_000)
        .complete(&conversation().request())
        .await
        .unwrap();
    let call = &reply.tool_calls[0];
    assert_eq!(call.arguments, Value::String("{order_id: A-1".into()));
    assert!(
        call.invalid_arguments
            .as_deref()
            .unwrap()
            .contains("not valid JSON")
    );
    assert_eq!(reply.usage, Usage::default());
}

/// A `base_url` that is not an http(s) URL is refused when the provider is made, naming the
/// model and the value, rather than failing every call; one that is goes on working as written.
#[test]
fn a_base_url_that_is_not_an_http_url_is_refused_when_the_provider_is_made() {
    let config = |base_url: &str| OpenAiConfig {
        base_url: base_url.into(),
        api_key: None,
        model: "m".into(),
        timeout: Duration::from_secs(2),
        max_tokens: 4096,
        temperature: None,
    };
    let anthropic = |base_url: &str| AnthropicConfig {
        base_url: base_url.into(),
        api_key: None,
        model: "claude".into(),
        timeout: Duration::from_secs(2),
        max_tokens: 512,
        temperature: None,
    };
    // No scheme (read as a scheme of its own), a word, a file, nothing at all.
    for bad in ["localhost:8080/v1", "not a url", "file:///etc/v1", ""] {
        let err = OpenAiProvider::new(config(bad)).unwrap_err();
        assert!(
            err.contains("model `m`")
                && err.contains(&format!("{bad:?}"))
                && err.contains("https://"),
            "{err}"
        );
        let err = AnthropicProvider::new(anthropic(bad)).unwrap_err();
        assert!(err.contains("model `claude`"), "{err}");
    }
    for good in [
        "http://127.0.0.1:9/v1",
        "https://api.openai.com/v1/",
        "http://[::1]:8080",
    ] {
        OpenAiProvider::new(config(good)).unwrap();
        AnthropicProvider::new(anthropic(good)).unwrap();
    }
}

#[tokio::test]
async fn an_unreachable_provider_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let provider = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        api_key: None,
        model: "m".into(),
        timeout: Duration::from_secs(2),
        max_tokens: 4096,
        temperature: None,
    })
    .unwrap();
    let err = provider
        .complete(&conversation().request())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Transport { .. } | ProviderError::Timeout { .. }
        ),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn the_scripted_provider_plays_turns_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.toml");
    std::fs::write(
        &script,
        r#"
[[turns]]
text = "first"
[[turns.calls]]
tool = "orders.lookup"
args = { order_id = "A-1" }
[[turns.calls]]
tool = "orders.lookup"
raw_args = "{broken"

[[turns]]
text = "done"
"#,
    )
    .unwrap();
    let provider = ScriptedProvider::from_file("scripted", &script).unwrap();
    let mut request = conversation();
    request.messages.truncate(1);
    let first = provider.complete(&request.request()).await.unwrap();
    assert_eq!(first.text.as_deref(), Some("first"));
    assert_eq!(first.tool_calls[0].id, "call_1_1");
    assert_eq!(first.tool_calls[0].arguments, json!({"order_id": "A-1"}));
    assert!(first.tool_calls[1].invalid_arguments.is_some());
    assert!(first.usage.input_tokens > 0 && first.usage.output_tokens > 0);
    // The same request gets the same answer: replays are deterministic.
    assert_eq!(provider.complete(&request.request()).await.unwrap(), first);

    let second = provider.complete(&conversation().request()).await.unwrap();
    assert_eq!(
        (second.text.as_deref(), second.tool_calls.len()),
        (Some("done"), 0)
    );

    let mut past_the_end = conversation();
    past_the_end.messages.push(Message::Assistant {
        text: Some("x".into()),
        tool_calls: vec![],
    });
    let err = provider
        .complete(&past_the_end.request())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has 2 turns and the run asked for turn 3"),
        "{err}"
    );
    assert!(!err.is_retryable());
}

#[test]
fn bad_scripts_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.toml");
    std::fs::write(
        &script,
        "[[turns]]\ntext = \"ok\"\n\n[[turns]]\ntxt = \"typo\"\n",
    )
    .unwrap();
    let err = ScriptedProvider::from_file("m", &script).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("{}:5:1", script.display())),
        "{msg}"
    );
    assert!(msg.contains("unknown field `txt`"), "{msg}");

    std::fs::write(&script, "[[turns]]\n").unwrap();
    let err = ScriptedProvider::from_file("m", &script).unwrap_err();
    assert!(
        err.to_string().contains("neither `text` nor `calls`"),
        "{err}"
    );

    let err = ScriptedProvider::from_file("m", &dir.path().join("missing.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("missing.toml: cannot read the script"),
        "{err}"
    );
}

#[tokio::test]
async fn an_answer_larger_than_any_model_reply_is_refused_unread() {
    let server = MockServer::start().await;
    let huge = "x".repeat(17 * 1024 * 1024);
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;
    let err = openai(&server, 5_000)
        .complete(&conversation().request())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

/// What an OpenAI and an Anthropic provider send for `conversation` with `settings`: the
/// Chat Completions body and the Messages body.
async fn sent_by_both(
    conversation: &Conversation,
    settings: Option<&rein_core::ModelSettings>,
) -> (Value, Value) {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"choices": [{"message":
            {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"}),
        ))
        .mount(&server)
        .await;
    let request = ChatRequest {
        settings,
        ..conversation.request()
    };
    openai(&server, 5_000).complete(&request).await.unwrap();
    anthropic(&server).complete(&request).await.unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    (
        requests[0].body_json().unwrap(),
        requests[1].body_json().unwrap(),
    )
}

/// A caller's own settings (a gateway client's) go to each API in its words: its sampling over
/// the operator's, its cap only where it lowers the operator's, its stop texts, its tool choice
/// naming the tool as the API knows it, its output format. Without settings, none of these is
/// sent; nor a tool choice with no tools to choose from.
#[tokio::test]
async fn a_callers_settings_are_sent_in_each_apis_words_within_the_operators_cap() {
    use rein_core::{ModelSettings, OutputFormat, ToolChoice};
    let conversation = conversation();
    let mut settings = ModelSettings {
        temperature: Some(0.3),
        top_p: Some(0.5),
        max_tokens: Some(100),
        stop: vec!["END".into()],
        tool_choice: Some(ToolChoice::Tool("orders.lookup".into())),
        format: Some(OutputFormat::JsonSchema {
            name: "status".into(),
            schema: json!({"type": "object"}),
            strict: Some(true),
        }),
        parallel_tool_calls: Some(false),
        seed: Some(7),
        reasoning_effort: Some("low".into()),
    };
    // The operators' caps: 256 (OpenAI), 512 (Anthropic); the Anthropic operator's temperature
    // is 0.0, which the caller's replaces.
    for (asked, caps) in [
        (Some(100), (100, 100)),
        (Some(300), (256, 300)),
        (Some(10_000), (256, 512)),
        (None, (256, 512)),
    ] {
        settings.max_tokens = asked;
        let (chat, messages) = sent_by_both(&conversation, Some(&settings)).await;
        assert_eq!(chat["max_completion_tokens"], caps.0);
        assert_eq!(chat["max_tokens"], caps.0, "to a compatible server");
        assert_eq!(messages["max_tokens"], caps.1);
        for body in [&chat, &messages] {
            assert_eq!(body["temperature"], 0.3);
            assert_eq!(body["top_p"], 0.5);
        }
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(messages["stop_sequences"], json!(["END"]));
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "orders_lookup"}})
        );
        assert_eq!(
            messages["tool_choice"],
            json!({"type": "tool", "name": "orders_lookup", "disable_parallel_tool_use": true})
        );
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["seed"], 7);
        assert_eq!(chat["reasoning_effort"], "low");
        // The Messages API has no seed, and no reasoning effort in these words.
        for key in ["seed", "reasoning_effort", "parallel_tool_calls"] {
            assert!(messages.get(key).is_none(), "{key} in {messages}");
        }
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "status", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            messages["output_config"],
            json!({"format": {"type": "json_schema", "schema": {"type": "object"}}})
        );
    }
    // One call at a time is said inside the Messages API's choice (not with `none`, which calls
    // no tool); parallel calls allowed, as in its default.
    for (choice, parallel, openai_words, anthropic_words) in [
        (
            Some(ToolChoice::Auto),
            Some(false),
            json!("auto"),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (
            None,
            Some(false),
            Value::Null,
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        ),
        (None, Some(true), Value::Null, Value::Null),
        (
            Some(ToolChoice::None),
            Some(false),
            json!("none"),
            json!({"type": "none"}),
        ),
        (
            Some(ToolChoice::Required),
            Some(false),
            json!("required"),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (
            Some(ToolChoice::Required),
            None,
            json!("required"),
            json!({"type": "any"}),
        ),
    ] {
        settings.tool_choice = choice;
        settings.parallel_tool_calls = parallel;
        let (chat, messages) = sent_by_both(&conversation, Some(&settings)).await;
        assert_eq!(chat["tool_choice"], openai_words);
        assert_eq!(chat["parallel_tool_calls"], json!(parallel));
        assert_eq!(messages["tool_choice"], anthropic_words);
    }
    // `json_object` has no words in the Messages API: not sent there.
    settings.format = Some(OutputFormat::JsonObject);
    let (chat, messages) = sent_by_both(&conversation, Some(&settings)).await;
    assert_eq!(chat["response_format"], json!({"type": "json_object"}));
    assert!(messages.get("output_config").is_none(), "{messages}");
    // No settings, none sent (the Anthropic operator's temperature stands); no tools, no choice.
    let (chat, messages) = sent_by_both(&conversation, None).await;
    for key in [
        "top_p",
        "stop",
        "temperature",
        "response_format",
        "tool_choice",
        "parallel_tool_calls",
        "seed",
        "reasoning_effort",
    ] {
        assert!(chat.get(key).is_none(), "{key} in {chat}");
    }
    for key in ["top_p", "stop_sequences", "output_config", "tool_choice"] {
        assert!(messages.get(key).is_none(), "{key} in {messages}");
    }
    assert_eq!(messages["temperature"], 0.0);
    assert_eq!(chat["max_completion_tokens"], 256);
    // A caller's top_p alone replaces the operator's sampling: the Anthropic operator's
    // temperature is not sent beside it (some models refuse both at once).
    let top_p_only = ModelSettings {
        top_p: Some(0.5),
        ..ModelSettings::default()
    };
    let (_, messages) = sent_by_both(&conversation, Some(&top_p_only)).await;
    assert_eq!(messages["top_p"], 0.5);
    assert!(messages.get("temperature").is_none(), "{messages}");
    let bare = Conversation {
        tools: Vec::new(),
        ..conversation
    };
    settings.parallel_tool_calls = Some(false);
    let (chat, messages) = sent_by_both(&bare, Some(&settings)).await;
    assert!(chat.get("tool_choice").is_none(), "{chat}");
    assert!(chat.get("parallel_tool_calls").is_none(), "{chat}");
    assert!(messages.get("tool_choice").is_none(), "{messages}");
}

/// The Messages API says which stop text the model stopped at; the reply keeps it, but only one
/// the request gave (an upstream naming another, or naming one without stopping at it, says
/// nothing a client could act on).
#[tokio::test]
async fn the_stop_text_an_anthropic_model_stopped_at_is_kept_when_the_request_gave_it() {
    let settings = rein_core::ModelSettings {
        stop: vec!["###".into(), "END".into()],
        ..Default::default()
    };
    let conversation = conversation();
    for (answer, kept) in [
        (
            json!({"stop_reason": "stop_sequence", "stop_sequence": "END"}),
            Some("END"),
        ),
        (
            json!({"stop_reason": "stop_sequence", "stop_sequence": "other"}),
            None,
        ),
        (
            json!({"stop_reason": "end_turn", "stop_sequence": "END"}),
            None,
        ),
        (
            json!({"stop_reason": "stop_sequence", "stop_sequence": 7}),
            None,
        ),
        (
            json!({"stop_reason": "stop_sequence", "stop_sequence": null}),
            None,
        ),
    ] {
        let server = MockServer::start().await;
        let mut body = json!({"content": [{"type": "text", "text": "the list: a, b"}]});
        body.as_object_mut()
            .unwrap()
            .extend(answer.as_object().unwrap().clone());
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&server)
            .await;
        let request = ChatRequest {
            settings: Some(&settings),
            ..conversation.request()
        };
        let reply = anthropic(&server).complete(&request).await.unwrap();
        assert_eq!(reply.stop_sequence.as_deref(), kept, "{answer}");
        assert_eq!(reply.text.as_deref(), Some("the list: a, b"));
        assert_eq!(
            reply.stop_reason,
            answer["stop_reason"].as_str().map(str::to_owned)
        );
    }
}
