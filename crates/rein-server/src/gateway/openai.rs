//! OpenAI Chat Completions (`POST /v1/chat/completions`, streaming and not, with tools) and
//! `GET /v1/models`, as the official SDKs speak them. A streamed answer is sent once it is
//! judged: the client never sees a call, or a word, before rein has decided it may.

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

use super::settings::Given;
use super::{Dialect, GwError, Said, answer, caller, created, pick};
use crate::state::AppState;

const D: Dialect = Dialect::OpenAi;

/// The parts of a Chat Completions request rein reads; the rest (temperature, `n`, ...) is
/// accepted and left to the gateway's configuration.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    #[serde(default)]
    model: String,
    messages: Vec<WireMessage>,
    #[serde(default)]
    tools: Vec<WireTool>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<Value>,
    #[serde(default)]
    seed: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    /// How many choices: rein judges and answers one.
    #[serde(default)]
    n: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireCall {
    id: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize)]
struct WireTool {
    #[serde(rename = "type", default)]
    kind: String,
    function: Option<WireToolFunction>,
}

#[derive(Debug, Deserialize)]
struct WireToolFunction {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: Option<Value>,
}

/// Text content: a string, or an array of `text` parts. Anything else (images, audio) is
/// refused by name, since rein judges what it can read.
pub(crate) fn text_of(content: &Value, at: &str, dialect: Dialect) -> Result<String, GwError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = Vec::new();
            for (i, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                match (kind, part.get("text").and_then(Value::as_str)) {
                    ("text" | "input_text" | "output_text", Some(t)) => out.push(t),
                    _ => {
                        return Err(GwError::new(
                            dialect,
                            StatusCode::BAD_REQUEST,
                            format!(
                                "{at}.content[{i}]: rein's gateway takes text parts only, not `{kind}`"
                            ),
                        ));
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(GwError::new(
            dialect,
            StatusCode::BAD_REQUEST,
            format!("{at}.content: expected a string or an array of text parts"),
        )),
    }
}

/// Arguments as the model sent them: JSON when they parse, the text otherwise.
pub(crate) fn parse_arguments(text: &str) -> Value {
    if text.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

impl ChatRequest {
    fn into_gateway(self, conversation: Option<String>) -> Result<GatewayRequest, GwError> {
        if let Some(n) = self.n.filter(|n| !n.is_null() && n != &json!(1)) {
            return Err(GwError::new(
                D,
                StatusCode::BAD_REQUEST,
                format!(
                    "n: {n} choices asked; rein's gateway judges and answers one choice a request (send n = 1, or several requests)"
                ),
            ));
        }
        let settings = Given {
            temperature: self.temperature,
            top_p: self.top_p,
            max_completion_tokens: self.max_completion_tokens,
            max_tokens: self.max_tokens,
            stop: self.stop,
            tool_choice: self.tool_choice,
            response_format: self.response_format,
            parallel_tool_calls: self.parallel_tool_calls,
            seed: self.seed,
            reasoning_effort: self.reasoning_effort,
            ..Given::default()
        }
        .settings(D)?;
        let mut system = Vec::new();
        let mut messages = Vec::new();
        // Tool results name only their call: the tool is the one the assistant called.
        let mut names: HashMap<String, String> = HashMap::new();
        for (i, m) in self.messages.into_iter().enumerate() {
            let at = format!("messages[{i}]");
            match m.role.as_str() {
                "system" | "developer" => system.push(text_of(&m.content, &at, D)?),
                "user" => messages.push(ChatMessage::User {
                    text: text_of(&m.content, &at, D)?,
                }),
                "assistant" => {
                    let text = text_of(&m.content, &at, D)?;
                    let tool_calls = m
                        .tool_calls
                        .into_iter()
                        .map(|c| {
                            names.insert(c.id.clone(), c.function.name.clone());
                            ToolCall {
                                id: c.id,
                                name: c.function.name,
                                arguments: parse_arguments(&c.function.arguments),
                                invalid_arguments: None,
                            }
                        })
                        .collect();
                    messages.push(ChatMessage::Assistant {
                        text: (!text.is_empty()).then_some(text),
                        tool_calls,
                    });
                }
                "tool" => {
                    let call_id = m.tool_call_id.ok_or_else(|| {
                        GwError::new(
                            D,
                            StatusCode::BAD_REQUEST,
                            format!("{at}.tool_call_id: a tool message names the call it answers"),
                        )
                    })?;
                    messages.push(ChatMessage::Tool {
                        name: names.get(&call_id).cloned().unwrap_or_default(),
                        call_id,
                        content: text_of(&m.content, &at, D)?,
                        is_error: false,
                    });
                }
                other => {
                    return Err(GwError::new(
                        D,
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{at}.role: `{other}` is not a role rein's gateway takes (system, developer, user, assistant, tool)"
                        ),
                    ));
                }
            }
        }
        let tools = self
            .tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| match (t.kind.as_str(), t.function) {
                ("function", Some(f)) => Ok(ToolSpec {
                    name: f.name,
                    description: f.description,
                    parameters: f
                        .parameters
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                }),
                (kind, _) => Err(GwError::new(
                    D,
                    StatusCode::BAD_REQUEST,
                    format!("tools[{i}]: rein's gateway takes function tools only, not `{kind}`"),
                )),
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

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Extension(caller): axum::Extension<Caller>,
    body: axum::body::Body,
) -> Result<Response, GwError> {
    let body = super::body(&state, body, D).await?;
    let request: ChatRequest = super::parse(&body, D, "a Chat Completions request")?;
    let model = request.model.clone();
    let stream = request.stream;
    let usage_chunk = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let agent = pick(&state, &caller, &model, D).await?;
    let gateway = request.into_gateway(super::conversation(&headers))?;
    let structured = gateway.settings.format.is_some();
    let answer = answer(&state, &agent, &caller, gateway, D).await?;
    let said = Said::of(&answer, structured);
    let response = if stream {
        streamed(&answer, &said, &model, usage_chunk)
    } else {
        axum::Json(completion(&answer, &said, &model)).into_response()
    };
    Ok(super::with_headers(response, &answer))
}

/// A call as an answer carries it.
#[derive(Serialize)]
struct OutCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunction<'a>,
}

#[derive(Serialize)]
struct OutFunction<'a> {
    name: &'a str,
    arguments: String,
}

impl<'a> OutCall<'a> {
    fn of(call: &'a ToolCall) -> Self {
        OutCall {
            id: &call.id,
            kind: "function",
            function: OutFunction {
                name: &call.name,
                arguments: arguments_text(&call.arguments),
            },
        }
    }
}

/// Arguments as the wire carries them: JSON text (a model's non-JSON text as it was).
pub(crate) fn arguments_text(arguments: &Value) -> String {
    match arguments {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn finish_reason(answer: &GatewayAnswer) -> &'static str {
    if !answer.calls.is_empty() {
        "tool_calls"
    } else if answer.cut {
        "length"
    } else {
        "stop"
    }
}

/// What the answer used, as Chat Completions counts it.
#[derive(Serialize)]
struct OutUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

fn usage(answer: &GatewayAnswer) -> OutUsage {
    OutUsage {
        prompt_tokens: answer.usage.input_tokens,
        completion_tokens: answer.usage.output_tokens,
        total_tokens: answer.usage.input_tokens + answer.usage.output_tokens,
    }
}

/// A Chat Completions answer, serialised from the judged answer as it is (a `json!` tree cost a
/// hashed map insert for each of its keys, as `serde_json` keeps its maps in order here).
#[derive(Serialize)]
struct Completion<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: OutUsage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: OutMessage<'a>,
    finish_reason: &'static str,
    logprobs: Option<()>,
}

#[derive(Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutCall<'a>>,
}

fn completion<'a>(answer: &'a GatewayAnswer, said: &'a Said, model: &'a str) -> Completion<'a> {
    Completion {
        id: format!("chatcmpl-{}", answer.run_id),
        object: "chat.completion",
        created: created(),
        model,
        choices: [Choice {
            index: 0,
            message: OutMessage {
                role: "assistant",
                content: said.text.as_deref(),
                refusal: said.refusal.as_deref(),
                tool_calls: answer.calls.iter().map(OutCall::of).collect(),
            },
            finish_reason: finish_reason(answer),
            logprobs: None,
        }],
        usage: usage(answer),
    }
}

/// The judged answer as a Chat Completions stream: the role, the text, the refusal, each call,
/// the finish reason, the usage if asked for, and `[DONE]`.
fn streamed(answer: &GatewayAnswer, said: &Said, model: &str, usage_chunk: bool) -> Response {
    let id = format!("chatcmpl-{}", answer.run_id);
    let created = created();
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    if let Some(text) = &said.text {
        chunks.push(chunk(json!({"content": text}), None));
    }
    if let Some(refusal) = &said.refusal {
        chunks.push(chunk(json!({"refusal": refusal}), None));
    }
    for (index, call) in answer.calls.iter().enumerate() {
        chunks.push(chunk(
            json!({"tool_calls": [{
                "index": index, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": arguments_text(&call.arguments)},
            }]}),
            None,
        ));
    }
    chunks.push(chunk(json!({}), Some(finish_reason(answer))));
    if usage_chunk {
        chunks.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(answer),
        }));
    }
    let events = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(SseEvent::default().data(c.to_string())))
        .chain(std::iter::once(Ok(SseEvent::default().data("[DONE]"))));
    Sse::new(futures_util::stream::iter(events)).into_response()
}

/// `GET /v1/models`: the gateways the caller may use.
pub(crate) async fn models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, GwError> {
    let caller = caller(&state, &headers, D)?;
    let data: Vec<Value> = super::usable(&state, &caller)
        .await
        .iter()
        .map(|a| json!({"id": a.name(), "object": "model", "created": 0, "owned_by": "rein"}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/models/{model}`: the gateway of that name, if the caller may use it (the OpenAI
/// SDK's `models.retrieve`), else 404 in the API's shape.
pub(crate) async fn model(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(model): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response, GwError> {
    let caller = caller(&state, &headers, D)?;
    let usable = super::usable(&state, &caller).await;
    match usable.iter().find(|a| a.name() == model) {
        Some(a) => Ok(axum::Json(
            json!({"id": a.name(), "object": "model", "created": 0, "owned_by": "rein"}),
        )
        .into_response()),
        None => Err(GwError::new(
            D,
            StatusCode::NOT_FOUND,
            format!(
                "no gateway `{model}` for this token: GET /v1/models lists the ones it may use"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::gateway::fixtures;

    /// The answer as it was built before it was serialised from typed structs: a `json!` tree.
    fn as_tree(answer: &GatewayAnswer, said: &Said, model: &str) -> Value {
        let mut message =
            json!({"role": "assistant", "content": said.text, "refusal": said.refusal});
        if !answer.calls.is_empty() {
            let calls: Vec<Value> = answer
                .calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": arguments_text(&c.arguments)}})
                })
                .collect();
            message["tool_calls"] = Value::Array(calls);
        }
        json!({
            "id": format!("chatcmpl-{}", answer.run_id), "object": "chat.completion",
            "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(answer),
                "logprobs": null}],
            "usage": {"prompt_tokens": answer.usage.input_tokens,
                "completion_tokens": answer.usage.output_tokens,
                "total_tokens": answer.usage.input_tokens + answer.usage.output_tokens},
        })
    }

    #[test]
    fn a_completion_says_what_the_json_tree_it_replaced_said_key_for_key() {
        for a in &fixtures::answers() {
            for said in fixtures::ways_to_say(a) {
                let mut typed = serde_json::to_value(completion(a, &said, "gw")).unwrap();
                typed["created"] = json!(0);
                let tree = as_tree(a, &said, "gw");
                // Equal, and in the same order (serde_json keeps keys in order here).
                assert_eq!(typed, tree);
                assert_eq!(typed.to_string(), tree.to_string());
            }
        }
    }
}
