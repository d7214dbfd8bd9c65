//! OpenAI Responses (`POST /v1/responses`), stateless (`store: false`: the client sends the whole
//! conversation each time), with function tools, streaming and not: what the OpenAI Agents SDK
//! and Codex speak.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use rein_api::Caller;
use rein_api::gateway::{ChatMessage, GatewayAnswer, GatewayRequest, ToolCall, ToolSpec};
use serde::Deserialize;
use serde_json::{Value, json};

use super::openai::{arguments_text, parse_arguments, text_of};
use super::settings::Given;
use super::{Dialect, GwError, Said, answer, created, pick};
use crate::state::AppState;

const D: Dialect = Dialect::OpenAi;

/// The parts of a Responses request rein reads.
#[derive(Debug, Deserialize)]
pub(crate) struct ResponsesRequest {
    #[serde(default)]
    model: String,
    input: Value,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    tools: Vec<Value>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    max_output_tokens: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<Value>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    text: Option<Value>,
}

fn bad(message: String) -> GwError {
    GwError::new(D, StatusCode::BAD_REQUEST, message)
}

fn field<'a>(item: &'a Value, name: &str, at: &str) -> Result<&'a str, GwError> {
    super::required(item, name, at, D)
}

impl ResponsesRequest {
    fn into_gateway(self, conversation: Option<String>) -> Result<GatewayRequest, GwError> {
        if self.previous_response_id.is_some() {
            return Err(bad(
                "previous_response_id: rein's gateway keeps no responses (use `store: false` and send the whole conversation as `input`)".into(),
            ));
        }
        let settings = Given {
            temperature: self.temperature,
            top_p: self.top_p,
            max_output_tokens: self.max_output_tokens,
            tool_choice: self.tool_choice,
            text: self.text,
            parallel_tool_calls: self.parallel_tool_calls,
            reasoning: self.reasoning,
            ..Given::default()
        }
        .settings(D)?;
        let mut system: Vec<String> = self.instructions.into_iter().collect();
        let mut messages: Vec<ChatMessage> = Vec::new();
        let mut names = std::collections::HashMap::new();
        let items = match self.input {
            Value::String(text) => vec![json!({"role": "user", "content": text})],
            Value::Array(items) => items,
            _ => return Err(bad("input: expected a string or an array of items".into())),
        };
        for (i, item) in items.into_iter().enumerate() {
            let at = format!("input[{i}]");
            let kind = item
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("message");
            match kind {
                "message" => {
                    let content = item.get("content").cloned().unwrap_or(Value::Null);
                    let text = text_of(&content, &at, D)?;
                    match field(&item, "role", &at)? {
                        "system" | "developer" => system.push(text),
                        "user" => messages.push(ChatMessage::User { text }),
                        "assistant" => messages.push(ChatMessage::Assistant {
                            text: Some(text),
                            tool_calls: vec![],
                        }),
                        other => return Err(bad(format!("{at}.role: `{other}` is not a role"))),
                    }
                }
                "function_call" => {
                    let call = ToolCall {
                        id: field(&item, "call_id", &at)?.to_owned(),
                        name: field(&item, "name", &at)?.to_owned(),
                        arguments: parse_arguments(
                            item.get("arguments")
                                .and_then(Value::as_str)
                                .unwrap_or_default(),
                        ),
                        invalid_arguments: None,
                    };
                    names.insert(call.id.clone(), call.name.clone());
                    match messages.last_mut() {
                        Some(ChatMessage::Assistant { tool_calls, .. }) => tool_calls.push(call),
                        _ => messages.push(ChatMessage::Assistant {
                            text: None,
                            tool_calls: vec![call],
                        }),
                    }
                }
                "function_call_output" => {
                    let call_id = field(&item, "call_id", &at)?.to_owned();
                    let output = item.get("output").cloned().unwrap_or(Value::Null);
                    messages.push(ChatMessage::Tool {
                        name: names.get(&call_id).cloned().unwrap_or_default(),
                        call_id,
                        content: text_of(&output, &at, D)?,
                        is_error: false,
                    });
                }
                // The model's reasoning is its own: not judged, not resent.
                "reasoning" => {}
                other => {
                    return Err(bad(format!(
                        "{at}.type: rein's gateway takes message, function_call and function_call_output items, not `{other}`"
                    )));
                }
            }
        }
        let tools = self
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = format!("tools[{i}]");
                match t.get("type").and_then(Value::as_str) {
                    Some("function") => Ok(ToolSpec {
                        name: field(t, "name", &at)?.to_owned(),
                        description: t
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        parameters: t
                            .get("parameters")
                            .cloned()
                            .filter(|p| !p.is_null())
                            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                    }),
                    other => Err(bad(format!(
                        "{at}.type: rein's gateway takes function tools only, not `{}`",
                        other.unwrap_or("none")
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(GatewayRequest {
            conversation,
            system: system.join("\n\n"),
            messages,
            tools,
            settings,
        })
    }
}

/// `POST /v1/responses`.
pub(crate) async fn responses(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, GwError> {
    let body = super::body(&state, body, D).await?;
    let request: ResponsesRequest = super::parse(&body, D, "a Responses request")?;
    let stream = request.stream;
    let echo = Echo::of(&request);
    let agent = pick(&state, &caller, &request.model, D).await?;
    let gateway = request.into_gateway(super::conversation(&headers))?;
    let structured = gateway.settings.format.is_some();
    let answer = answer(&state, &agent, &caller, gateway, D).await?;
    let said = Said::of(&answer, structured);
    let response = if stream {
        streamed(&answer, &said, &echo)
    } else {
        axum::Json(response_object(&answer, &said, &echo, end_status(&answer))).into_response()
    };
    Ok(super::with_headers(response, &answer))
}

/// What a response object repeats of its request, as the API does: the model, the instructions,
/// the tools and the settings the client sent (each as sent; the API's default where it sent
/// none).
#[derive(Debug)]
struct Echo {
    model: String,
    instructions: Option<String>,
    tools: Vec<Value>,
    tool_choice: Value,
    parallel_tool_calls: Value,
    temperature: Value,
    top_p: Value,
    max_output_tokens: Value,
    text: Value,
    reasoning: Value,
}

impl Echo {
    fn of(r: &ResponsesRequest) -> Self {
        let or = |v: &Option<Value>, default: Value| {
            v.clone().filter(|v| !v.is_null()).unwrap_or(default)
        };
        Echo {
            model: r.model.clone(),
            instructions: r.instructions.clone(),
            tools: r.tools.clone(),
            tool_choice: or(&r.tool_choice, json!("auto")),
            parallel_tool_calls: or(&r.parallel_tool_calls, json!(true)),
            temperature: or(&r.temperature, Value::Null),
            top_p: or(&r.top_p, Value::Null),
            max_output_tokens: or(&r.max_output_tokens, Value::Null),
            text: or(&r.text, json!({"format": {"type": "text"}})),
            reasoning: or(&r.reasoning, json!({"effort": null, "summary": null})),
        }
    }
}

/// A message's content parts: the text, then rein's note when it is apart (a refusal part).
fn content_parts(said: &Said) -> Vec<Value> {
    let mut parts = Vec::new();
    if let Some(text) = &said.text {
        parts.push(json!({"type": "output_text", "text": text, "annotations": []}));
    }
    if let Some(refusal) = &said.refusal {
        parts.push(json!({"type": "refusal", "refusal": refusal}));
    }
    parts
}

fn output_items(answer: &GatewayAnswer, said: &Said) -> Vec<Value> {
    let mut out = Vec::new();
    let content = content_parts(said);
    if !content.is_empty() {
        out.push(json!({
            "type": "message", "id": format!("msg_{}", answer.run_id), "status": "completed",
            "role": "assistant", "content": content,
        }));
    }
    for c in &answer.calls {
        out.push(json!({
            "type": "function_call", "id": format!("fc_{}", c.id), "call_id": c.id,
            "name": c.name, "arguments": arguments_text(&c.arguments), "status": "completed",
        }));
    }
    out
}

/// How a response ended: `incomplete` when the model's answer stopped at its cap (its text is
/// cut short), as the API says it.
fn end_status(answer: &GatewayAnswer) -> &'static str {
    if answer.cut {
        "incomplete"
    } else {
        "completed"
    }
}

fn response_object(answer: &GatewayAnswer, said: &Said, echo: &Echo, status: &str) -> Value {
    let output = if status == "in_progress" {
        vec![]
    } else {
        output_items(answer, said)
    };
    let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
    json!({
        "id": format!("resp_{}", answer.run_id),
        "object": "response",
        "created_at": created(),
        "status": status,
        "model": echo.model,
        "output": output,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "tool_choice": echo.tool_choice,
        "tools": echo.tools,
        "store": false,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": echo.instructions,
        "metadata": {},
        "temperature": echo.temperature,
        "top_p": echo.top_p,
        "max_output_tokens": echo.max_output_tokens,
        "reasoning": echo.reasoning,
        "text": echo.text,
        "usage": {
            "input_tokens": answer.usage.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": answer.usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": answer.usage.input_tokens + answer.usage.output_tokens,
        },
    })
}

/// The judged answer as Responses streaming events.
fn streamed(answer: &GatewayAnswer, said: &Said, echo: &Echo) -> Response {
    let mut events: Vec<Value> = vec![
        json!({"type": "response.created", "response": response_object(answer, said, echo, "in_progress")}),
        json!({"type": "response.in_progress", "response": response_object(answer, said, echo, "in_progress")}),
    ];
    for (index, item) in output_items(answer, said).into_iter().enumerate() {
        let id = item["id"].clone();
        let mut added = item.clone();
        added["status"] = json!("in_progress");
        if item["type"] == "message" {
            added["content"] = json!([]);
            events.push(
                json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            );
            let parts = item["content"].as_array().cloned().unwrap_or_default();
            for (at, part) in parts.into_iter().enumerate() {
                let event = |kind: &str, more: Value| {
                    let mut e = json!({"type": kind, "item_id": id, "output_index": index, "content_index": at});
                    if let (Some(e), Value::Object(more)) = (e.as_object_mut(), more) {
                        e.extend(more);
                    }
                    e
                };
                let (added_part, delta, done) = if part["type"] == "refusal" {
                    let refusal = &part["refusal"];
                    (
                        json!({"type": "refusal", "refusal": ""}),
                        event("response.refusal.delta", json!({"delta": refusal})),
                        event("response.refusal.done", json!({"refusal": refusal})),
                    )
                } else {
                    let text = &part["text"];
                    (
                        json!({"type": "output_text", "text": "", "annotations": []}),
                        event(
                            "response.output_text.delta",
                            json!({"delta": text, "logprobs": []}),
                        ),
                        event(
                            "response.output_text.done",
                            json!({"text": text, "logprobs": []}),
                        ),
                    )
                };
                events.push(event(
                    "response.content_part.added",
                    json!({"part": added_part}),
                ));
                events.push(delta);
                events.push(done);
                events.push(event("response.content_part.done", json!({"part": part})));
            }
        } else {
            let arguments = item["arguments"].clone();
            added["arguments"] = json!("");
            events.push(
                json!({"type": "response.output_item.added", "output_index": index, "item": added}),
            );
            events.push(json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": index, "delta": arguments}));
            events.push(json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": index, "arguments": arguments}));
        }
        events.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
    }
    let status = end_status(answer);
    events.push(json!({"type": format!("response.{status}"), "response": response_object(answer, said, echo, status)}));
    let events = events.into_iter().enumerate().map(|(n, mut e)| {
        e["sequence_number"] = json!(n);
        let name = e["type"].as_str().unwrap_or_default().to_owned();
        Ok::<_, Infallible>(SseEvent::default().event(name).data(e.to_string()))
    });
    Sse::new(futures_util::stream::iter(events)).into_response()
}
