//! Anthropic Messages (`POST /v1/messages`, streaming and not, with tools), as the official SDK
//! and Claude Code speak it. As with the OpenAI face, a stream carries the judged answer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use rein_api::Caller;
use rein_api::gateway::{ChatMessage, GatewayAnswer, GatewayRequest, ToolCall, ToolSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::openai::text_of;
use super::settings::Given;
use super::{Dialect, GwError, Said, answer, pick, required};
use crate::state::AppState;

const D: Dialect = Dialect::Anthropic;

/// The parts of a Messages request rein reads.
#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest {
    #[serde(default)]
    model: String,
    #[serde(default)]
    system: Value,
    messages: Vec<WireMessage>,
    #[serde(default)]
    tools: Vec<WireTool>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    output_config: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    input_schema: Option<Value>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// The text of a `text` block.
fn block_text(b: &Value) -> String {
    b.get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn bad(message: String) -> GwError {
    GwError::new(D, StatusCode::BAD_REQUEST, message)
}

impl MessagesRequest {
    fn into_gateway(self, conversation: Option<String>) -> Result<GatewayRequest, GwError> {
        let settings = Given {
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            stop_sequences: self.stop_sequences,
            tool_choice: self.tool_choice,
            output_config: self.output_config,
            ..Given::default()
        }
        .settings(D)?;
        let system = match &self.system {
            Value::Null => String::new(),
            other => text_of(other, "system", D)?,
        };
        let mut messages = Vec::new();
        let mut names: HashMap<String, String> = HashMap::new();
        for (i, m) in self.messages.into_iter().enumerate() {
            let at = format!("messages[{i}]");
            let blocks = match m.content {
                Value::String(text) => vec![json!({"type": "text", "text": text})],
                Value::Array(blocks) => blocks,
                _ => {
                    return Err(bad(format!(
                        "{at}.content: expected a string or an array of content blocks"
                    )));
                }
            };
            match m.role.as_str() {
                "user" => {
                    let mut text = Vec::new();
                    for (j, b) in blocks.iter().enumerate() {
                        match b.get("type").and_then(Value::as_str).unwrap_or_default() {
                            "text" => text.push(block_text(b)),
                            "tool_result" => {
                                let call_id =
                                    required(b, "tool_use_id", &format!("{at}.content[{j}]"), D)?
                                        .to_owned();
                                let content = match b.get("content") {
                                    None => String::new(),
                                    Some(c) => text_of(c, &format!("{at}.content[{j}]"), D)?,
                                };
                                messages.push(ChatMessage::Tool {
                                    name: names.get(&call_id).cloned().unwrap_or_default(),
                                    call_id,
                                    content,
                                    is_error: b
                                        .get("is_error")
                                        .and_then(Value::as_bool)
                                        .unwrap_or(false),
                                });
                            }
                            other => {
                                return Err(bad(format!(
                                    "{at}.content[{j}]: rein's gateway takes text and tool_result blocks from the user, not `{other}`"
                                )));
                            }
                        }
                    }
                    if !text.is_empty() {
                        messages.push(ChatMessage::User {
                            text: text.join("\n"),
                        });
                    }
                }
                "assistant" => {
                    let mut text = Vec::new();
                    let mut calls = Vec::new();
                    for (j, b) in blocks.iter().enumerate() {
                        match b.get("type").and_then(Value::as_str).unwrap_or_default() {
                            "text" => text.push(block_text(b)),
                            "tool_use" => {
                                let block = format!("{at}.content[{j}]");
                                let id = required(b, "id", &block, D)?.to_owned();
                                let name = required(b, "name", &block, D)?.to_owned();
                                names.insert(id.clone(), name.clone());
                                calls.push(ToolCall {
                                    id,
                                    name,
                                    arguments: b.get("input").cloned().unwrap_or(json!({})),
                                    invalid_arguments: None,
                                });
                            }
                            // Thinking is the model's own; it is not judged or resent.
                            "thinking" | "redacted_thinking" => {}
                            other => {
                                return Err(bad(format!(
                                    "{at}.content[{j}]: rein's gateway takes text and tool_use blocks from the assistant, not `{other}`"
                                )));
                            }
                        }
                    }
                    messages.push(ChatMessage::Assistant {
                        text: (!text.is_empty()).then(|| text.join("\n")),
                        tool_calls: calls,
                    });
                }
                other => {
                    return Err(bad(format!(
                        "{at}.role: `{other}` is not a role of the Messages API (user, assistant)"
                    )));
                }
            }
        }
        let tools = self
            .tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| match t.kind.as_deref() {
                None | Some("custom") => Ok(ToolSpec {
                    name: t.name,
                    description: t.description,
                    parameters: t
                        .input_schema
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                }),
                Some(kind) => Err(bad(format!(
                    "tools[{i}]: rein's gateway takes client tools only, not Anthropic's server tool `{kind}`"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(GatewayRequest {
            conversation,
            system,
            messages,
            tools,
            settings,
        })
    }
}

/// `POST /v1/messages`.
pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, GwError> {
    let body = super::body(&state, body, D).await?;
    let request: MessagesRequest = super::parse(&body, D, "a Messages request")?;
    let model = request.model.clone();
    let stream = request.stream;
    let agent = pick(&state, &caller, &model, D).await?;
    let gateway = request.into_gateway(super::conversation(&headers))?;
    let structured = gateway.settings.format.is_some();
    let answer = answer(&state, &agent, &caller, gateway, D).await?;
    let said = Said::of(&answer, structured);
    let response = if stream {
        streamed(&answer, &said, &model)
    } else {
        axum::Json(message(&answer, &said, &model)).into_response()
    };
    Ok(super::with_headers(response, &answer))
}

/// A block of the answer's content.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: &'a Value,
    },
}

fn blocks<'a>(answer: &'a GatewayAnswer, said: &'a Said) -> Vec<OutBlock<'a>> {
    let text = said.text.as_deref().map(|text| OutBlock::Text { text });
    let calls = answer.calls.iter().map(|c| OutBlock::ToolUse {
        id: &c.id,
        name: &c.name,
        input: &c.arguments,
    });
    text.into_iter().chain(calls).collect()
}

/// Why the answer stopped: a `refusal` when rein withheld all of it, `stop_sequence` when the
/// model stopped at one of the client's stop texts (the upstream said which: an Anthropic one).
fn stop_reason(answer: &GatewayAnswer, said: &Said) -> &'static str {
    if !answer.calls.is_empty() {
        "tool_use"
    } else if answer.cut {
        "max_tokens"
    } else if answer.stop_sequence.is_some() {
        "stop_sequence"
    } else if said.refusal.is_some() && said.text.as_deref().is_none_or(str::is_empty) {
        "refusal"
    } else {
        "end_turn"
    }
}

/// The stop text the answer stopped at, with the `stop_sequence` stop reason only.
fn stop_sequence<'a>(answer: &'a GatewayAnswer, said: &Said) -> Option<&'a str> {
    (stop_reason(answer, said) == "stop_sequence")
        .then_some(answer.stop_sequence.as_deref())
        .flatten()
}

/// rein's note when it is apart from the text: where the API explains a refusal.
#[derive(Serialize)]
struct StopDetails<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    category: Option<()>,
    explanation: &'a str,
}

fn stop_details(said: &Said) -> Option<StopDetails<'_>> {
    said.refusal.as_deref().map(|explanation| StopDetails {
        kind: "refusal",
        category: None,
        explanation,
    })
}

/// A Messages answer, serialised from the judged answer as it is (a `json!` tree cost a hashed
/// map insert for each of its keys, as `serde_json` keeps its maps in order here).
#[derive(Serialize)]
struct OutMessage<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<OutBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'a str>,
    stop_details: Option<StopDetails<'a>>,
    usage: OutUsage,
}

#[derive(Serialize)]
struct OutUsage {
    input_tokens: u64,
    output_tokens: u64,
}

fn message<'a>(answer: &'a GatewayAnswer, said: &'a Said, model: &'a str) -> OutMessage<'a> {
    OutMessage {
        id: format!("msg_{}", answer.run_id),
        kind: "message",
        role: "assistant",
        model,
        content: blocks(answer, said),
        stop_reason: Some(stop_reason(answer, said)),
        stop_sequence: stop_sequence(answer, said),
        stop_details: stop_details(said),
        usage: OutUsage {
            input_tokens: answer.usage.input_tokens,
            output_tokens: answer.usage.output_tokens,
        },
    }
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: OutMessage<'a>,
}

/// The judged answer as a Messages event stream.
fn streamed(answer: &GatewayAnswer, said: &Said, model: &str) -> Response {
    let events = stream_events(answer, said, model)
        .into_iter()
        .map(|(name, data)| Ok::<_, Infallible>(SseEvent::default().event(name).data(data)));
    Sse::new(futures_util::stream::iter(events)).into_response()
}

/// The stream's events, each its name and its data: the message with nothing in it yet, each
/// block started, given and stopped, why it stopped, and its end.
fn stream_events(answer: &GatewayAnswer, said: &Said, model: &str) -> Vec<(&'static str, String)> {
    let mut events: Vec<(&'static str, String)> = Vec::new();
    let mut start = message(answer, said, model);
    start.content.clear();
    start.stop_reason = None;
    start.stop_sequence = None;
    start.stop_details = None;
    start.usage.output_tokens = 0;
    let start = MessageStart {
        kind: "message_start",
        message: start,
    };
    events.push((
        "message_start",
        serde_json::to_string(&start).unwrap_or_default(),
    ));
    for (index, block) in blocks(answer, said).into_iter().enumerate() {
        let (empty, delta) = match block {
            OutBlock::Text { text } => (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": text}),
            ),
            OutBlock::ToolUse { id, name, input } => (
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                json!({"type": "input_json_delta", "partial_json": input.to_string()}),
            ),
        };
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": empty})
                .to_string(),
        ));
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}).to_string(),
        ));
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}).to_string(),
        ));
    }
    events.push((
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {
                "stop_reason": stop_reason(answer, said),
                "stop_sequence": stop_sequence(answer, said),
                "stop_details": stop_details(said),
            },
            "usage": {"output_tokens": answer.usage.output_tokens},
        })
        .to_string(),
    ));
    events.push(("message_stop", json!({"type": "message_stop"}).to_string()));
    events
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::gateway::fixtures;

    /// The answer's content as it was built before it was serialised from typed structs.
    fn tree_blocks(answer: &GatewayAnswer, said: &Said) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(text) = &said.text {
            out.push(json!({"type": "text", "text": text}));
        }
        for c in &answer.calls {
            out.push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}));
        }
        out
    }

    fn tree_details(said: &Said) -> Value {
        match &said.refusal {
            Some(r) => json!({"type": "refusal", "category": null, "explanation": r}),
            None => Value::Null,
        }
    }

    /// The answer as the `json!` tree it was.
    fn tree(answer: &GatewayAnswer, said: &Said, model: &str) -> Value {
        json!({
            "id": format!("msg_{}", answer.run_id), "type": "message", "role": "assistant",
            "model": model, "content": tree_blocks(answer, said),
            "stop_reason": stop_reason(answer, said),
            "stop_sequence": stop_sequence(answer, said),
            "stop_details": tree_details(said),
            "usage": {"input_tokens": answer.usage.input_tokens,
                "output_tokens": answer.usage.output_tokens},
        })
    }

    /// The stream as it was built from the tree.
    fn tree_events(
        answer: &GatewayAnswer,
        said: &Said,
        model: &str,
    ) -> Vec<(&'static str, String)> {
        let mut events: Vec<(&'static str, Value)> = Vec::new();
        let mut start = tree(answer, said, model);
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["stop_sequence"] = Value::Null;
        start["stop_details"] = Value::Null;
        start["usage"]["output_tokens"] = json!(0);
        events.push((
            "message_start",
            json!({"type": "message_start", "message": start}),
        ));
        for (index, block) in tree_blocks(answer, said).into_iter().enumerate() {
            let (empty, delta) = match block["type"].as_str() {
                Some("text") => (
                    json!({"type": "text", "text": ""}),
                    json!({"type": "text_delta", "text": block["text"]}),
                ),
                _ => (
                    json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                    json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
                ),
            };
            events.push((
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": empty}),
            ));
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
            events.push((
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push((
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop_reason(answer, said),
                "stop_sequence": stop_sequence(answer, said), "stop_details": tree_details(said)},
                "usage": {"output_tokens": answer.usage.output_tokens}}),
        ));
        events.push(("message_stop", json!({"type": "message_stop"})));
        events
            .into_iter()
            .map(|(n, d)| (n, d.to_string()))
            .collect()
    }

    #[test]
    fn a_message_and_its_stream_say_what_the_json_trees_they_replaced_said_key_for_key() {
        for a in &fixtures::answers() {
            for said in fixtures::ways_to_say(a) {
                let typed = serde_json::to_string(&message(a, &said, "gw")).unwrap();
                assert_eq!(typed, tree(a, &said, "gw").to_string());
                assert_eq!(stream_events(a, &said, "gw"), tree_events(a, &said, "gw"));
            }
        }
    }
}
