//! The OpenAI Chat Completions provider, also used for OpenAI-compatible servers (Ollama, vLLM,
//! llama.cpp's server) by changing the base URL.

use std::borrow::Cow;
use std::time::Duration;

use rein_core::{Message, OutputFormat, ToolCall, ToolChoice, Usage};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{client, endpoint, post_json};
use crate::{BoxFuture, ChatRequest, ChatResponse, Provider, ProviderError, WireNames};

/// Settings of an OpenAI-compatible provider.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// The API root, for example `https://api.openai.com/v1` or `http://localhost:11434/v1`.
    pub base_url: String,
    /// The key, sent as a bearer token; `None` for local servers that need none.
    pub api_key: Option<String>,
    /// The model name.
    pub model: String,
    /// How long one call may take.
    pub timeout: Duration,
    /// The most tokens a reply may have, sent as `max_completion_tokens` (and, to servers other
    /// than OpenAI's, also as `max_tokens`, the name older compatible servers know).
    pub max_tokens: u32,
    /// `temperature`, sent only when set.
    pub temperature: Option<f32>,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The Chat Completions provider.
#[derive(Debug)]
pub struct OpenAiProvider {
    config: OpenAiConfig,
    client: reqwest::Client,
    url: reqwest::Url,
}

impl OpenAiProvider {
    /// The default API root.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    /// A provider with these settings.
    pub fn new(config: OpenAiConfig) -> Result<OpenAiProvider, String> {
        let url = endpoint(&config.base_url, "/chat/completions", &config.model)?;
        Ok(OpenAiProvider {
            client: client(config.timeout)?,
            config,
            url,
        })
    }

    /// The request's body, serialized from the conversation where it lies (nothing of it is
    /// copied into a JSON tree first).
    fn body<'a>(&'a self, request: &'a ChatRequest<'a>, names: &'a WireNames) -> Body<'a> {
        let settings = request.settings();
        // At most the operator's cap (a u32), so it fits one.
        let max_tokens = settings.max_tokens_within(u64::from(self.config.max_tokens)) as u32;
        let mut messages = Vec::with_capacity(request.messages.len() + 1);
        messages.push(WireMessage::System {
            content: request.system,
        });
        for message in request.messages {
            messages.push(match message {
                Message::User { text } => WireMessage::User { content: text },
                Message::Assistant { text, tool_calls } => WireMessage::Assistant {
                    content: text.as_deref(),
                    tool_calls: tool_calls
                        .iter()
                        .map(|c| WireCall {
                            id: &c.id,
                            kind: "function",
                            function: WireFunction {
                                name: names.to_wire(&c.name),
                                arguments: match (&c.invalid_arguments, &c.arguments) {
                                    (Some(_), Value::String(raw)) => Cow::Borrowed(raw.as_str()),
                                    _ => Cow::Owned(c.arguments.to_string()),
                                },
                            },
                        })
                        .collect(),
                },
                Message::Tool {
                    call_id, content, ..
                } => WireMessage::Tool {
                    tool_call_id: call_id,
                    content,
                },
            });
        }
        let compatible = !self.config.base_url.starts_with(Self::DEFAULT_BASE_URL);
        Body {
            model: &self.config.model,
            messages,
            tools: request
                .tools
                .iter()
                .map(|t| WireTool {
                    kind: "function",
                    function: WireToolFunction {
                        name: names.to_wire(&t.name),
                        description: &t.description,
                        parameters: &t.parameters,
                    },
                })
                .collect(),
            max_completion_tokens: max_tokens,
            max_tokens: compatible.then_some(max_tokens),
            temperature: settings.temperature_over(self.config.temperature),
            top_p: settings.top_p,
            stop: &settings.stop,
            tool_choice: settings
                .tool_choice_for(request.tools)
                .map(|choice| match choice {
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::None => json!("none"),
                    ToolChoice::Required => json!("required"),
                    ToolChoice::Tool(name) => {
                        json!({"type": "function", "function": {"name": names.to_wire(name)}})
                    }
                }),
            response_format: settings.format.as_ref().map(|format| match format {
                OutputFormat::JsonObject => json!({"type": "json_object"}),
                OutputFormat::JsonSchema {
                    name,
                    schema,
                    strict,
                } => {
                    let mut spec = json!({"name": name, "schema": schema});
                    if let Some(strict) = strict {
                        spec["strict"] = json!(strict);
                    }
                    json!({"type": "json_schema", "json_schema": spec})
                }
            }),
            parallel_tool_calls: settings.parallel_tool_calls_for(request.tools),
            seed: settings.seed,
            reasoning_effort: settings.reasoning_effort.as_deref(),
        }
    }
}

/// A Chat Completions request body.
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    max_completion_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// `null` when the model said nothing, as the API has it.
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: String,
    /// The arguments as a JSON text; ones the model sent that were not JSON, as it sent them.
    arguments: Cow<'a, str>,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireToolFunction<'a>,
}

#[derive(Serialize)]
struct WireToolFunction<'a> {
    name: String,
    description: &'a str,
    parameters: &'a Value,
}

impl Provider for OpenAiProvider {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.config.model
    }

    fn max_output_tokens(&self) -> u64 {
        u64::from(self.config.max_tokens)
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        Box::pin(async move {
            let names = WireNames::new(request.tools.iter().map(|t| t.name.as_str()));
            let mut headers = HeaderMap::new();
            if let Some(key) = &self.config.api_key {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    ProviderError::Rejected {
                        status: 0,
                        message: "the API key holds characters that cannot be sent in a header"
                            .into(),
                    }
                })?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            let answer = post_json(
                &self.client,
                &self.url,
                headers,
                &self.body(request, &names),
                self.config.timeout,
            )
            .await?;
            parse_response(&answer, &names)
        })
    }
}

fn parse_response(answer: &Value, names: &WireNames) -> Result<ChatResponse, ProviderError> {
    let malformed = |detail: &str| ProviderError::Malformed {
        detail: detail.to_owned(),
    };
    let choice = answer
        .pointer("/choices/0")
        .ok_or_else(|| malformed("no choices[0] in the answer"))?;
    let message = choice
        .get("message")
        .ok_or_else(|| malformed("no choices[0].message in the answer"))?;
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").filter(|v| !v.is_null()) {
        let calls = calls
            .as_array()
            .ok_or_else(|| malformed("tool_calls is not a list"))?;
        for (i, call) in calls.iter().enumerate() {
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("call_{i}"));
            let function = call
                .get("function")
                .ok_or_else(|| malformed("a tool call has no function"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("a tool call has no name"))?;
            let raw = function
                .get("arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}");
            let (arguments, invalid_arguments) =
                match serde_json::from_str::<Value>(if raw.trim().is_empty() { "{}" } else { raw })
                {
                    Ok(v) => (v, None),
                    Err(e) => (
                        Value::String(raw.to_owned()),
                        Some(format!("arguments are not valid JSON: {e}")),
                    ),
                };
            tool_calls.push(ToolCall {
                id,
                name: names.from_wire(name),
                arguments,
                invalid_arguments,
            });
        }
    }
    let usage = Usage {
        input_tokens: answer
            .pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: answer
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let stop_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(ChatResponse {
        text,
        tool_calls,
        usage,
        stop_reason,
        stop_sequence: None,
    })
}
