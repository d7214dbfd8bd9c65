//! The Anthropic Messages API provider.

use std::sync::LazyLock;
use std::time::Duration;

use rein_core::{Message, ModelSettings, OutputFormat, ToolCall, ToolChoice, ToolSpec, Usage};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::{client, endpoint, post_json};
use crate::{BoxFuture, ChatRequest, ChatResponse, Provider, ProviderError, WireNames};

/// The API version header rein speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Settings of the Anthropic provider.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// The API root, `https://api.anthropic.com` unless a proxy sits in front.
    pub base_url: String,
    /// The key, sent as `x-api-key`.
    pub api_key: Option<String>,
    /// The model name.
    pub model: String,
    /// How long one call may take.
    pub timeout: Duration,
    /// `max_tokens` (required by the API).
    pub max_tokens: u32,
    /// `temperature`, sent only when set.
    pub temperature: Option<f32>,
}

impl std::fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The Messages API provider.
#[derive(Debug)]
pub struct AnthropicProvider {
    config: AnthropicConfig,
    client: reqwest::Client,
    url: reqwest::Url,
}

impl AnthropicProvider {
    /// The default API root.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";

    /// A provider with these settings.
    pub fn new(config: AnthropicConfig) -> Result<AnthropicProvider, String> {
        let url = endpoint(&config.base_url, "/v1/messages", &config.model)?;
        Ok(AnthropicProvider {
            client: client(config.timeout)?,
            config,
            url,
        })
    }

    /// The request's body, serialized from the conversation where it lies (nothing of it is
    /// copied into a JSON tree first).
    fn body<'a>(&'a self, request: &'a ChatRequest<'a>, names: &'a WireNames) -> Body<'a> {
        let settings = request.settings();
        let mut messages: Vec<WireMessage<'a>> = Vec::with_capacity(request.messages.len());
        for message in request.messages {
            match message {
                Message::User { text } => messages.push(WireMessage {
                    role: "user",
                    content: Content::Text(text),
                }),
                Message::Assistant { text, tool_calls } => {
                    let mut blocks = Vec::with_capacity(tool_calls.len() + 1);
                    if let Some(text) = text {
                        blocks.push(Block::Text { text });
                    }
                    for c in tool_calls {
                        blocks.push(Block::ToolUse {
                            id: &c.id,
                            name: names.to_wire(&c.name),
                            input: if c.arguments.is_object() {
                                &c.arguments
                            } else {
                                &EMPTY_INPUT
                            },
                        });
                    }
                    messages.push(WireMessage {
                        role: "assistant",
                        content: Content::Blocks(blocks),
                    });
                }
                Message::Tool {
                    call_id,
                    content,
                    is_error,
                    ..
                } => {
                    let block = Block::ToolResult {
                        tool_use_id: call_id,
                        content,
                        is_error: *is_error,
                    };
                    // Results of one turn's calls travel together in one user message.
                    match messages.last_mut() {
                        Some(WireMessage {
                            role: "user",
                            content: Content::Blocks(blocks),
                        }) => blocks.push(block),
                        _ => messages.push(WireMessage {
                            role: "user",
                            content: Content::Blocks(vec![block]),
                        }),
                    }
                }
            }
        }
        Body {
            model: &self.config.model,
            // At most the operator's cap (a u32), so it fits one.
            max_tokens: settings.max_tokens_within(u64::from(self.config.max_tokens)) as u32,
            system: request.system,
            messages,
            tools: request
                .tools
                .iter()
                .map(|t| WireTool {
                    name: names.to_wire(&t.name),
                    description: &t.description,
                    input_schema: &t.parameters,
                })
                .collect(),
            temperature: settings.temperature_over(self.config.temperature),
            top_p: settings.top_p,
            stop_sequences: &settings.stop,
            tool_choice: tool_choice(settings, request.tools, names),
            // The Messages API takes a schema only: `json_object` has no words in it.
            output_config: match &settings.format {
                Some(OutputFormat::JsonSchema { schema, .. }) => {
                    Some(json!({"format": {"type": "json_schema", "schema": schema}}))
                }
                Some(OutputFormat::JsonObject) | None => None,
            },
        }
    }
}

/// The tool choice a caller's settings make with `offered` tools, in the Messages API's words:
/// its choice, and whether the model may call several tools at once, which the API says inside
/// the choice (`disable_parallel_tool_use`; `auto` when the caller chose nothing else, and not
/// with `none`, which calls no tool).
fn tool_choice(settings: &ModelSettings, offered: &[ToolSpec], names: &WireNames) -> Option<Value> {
    let one_at_a_time = settings.parallel_tool_calls_for(offered) == Some(false);
    let mut choice = match settings.tool_choice_for(offered) {
        Some(ToolChoice::None) => return Some(json!({"type": "none"})),
        None if !one_at_a_time => return None,
        None | Some(ToolChoice::Auto) => json!({"type": "auto"}),
        Some(ToolChoice::Required) => json!({"type": "any"}),
        Some(ToolChoice::Tool(name)) => json!({"type": "tool", "name": names.to_wire(name)}),
    };
    if one_at_a_time {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Some(choice)
}

/// The input of a call whose arguments are not an object: the API takes only objects.
static EMPTY_INPUT: LazyLock<Value> = LazyLock::new(|| Value::Object(serde_json::Map::new()));

/// A Messages request body.
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    max_tokens: u32,
    system: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<Value>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Content<'a>,
}

/// A message's content: a user's text, or blocks.
#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(&'a str),
    Blocks(Vec<Block<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: String,
        input: &'a Value,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: &'a str,
        is_error: bool,
    },
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: String,
    description: &'a str,
    input_schema: &'a Value,
}

impl Provider for AnthropicProvider {
    fn kind(&self) -> &'static str {
        "anthropic"
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
            headers.insert(
                "anthropic-version",
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
            if let Some(key) = &self.config.api_key {
                let mut value =
                    HeaderValue::from_str(key).map_err(|_| ProviderError::Rejected {
                        status: 0,
                        message: "the API key holds characters that cannot be sent in a header"
                            .into(),
                    })?;
                value.set_sensitive(true);
                headers.insert("x-api-key", value);
            }
            let answer = post_json(
                &self.client,
                &self.url,
                headers,
                &self.body(request, &names),
                self.config.timeout,
            )
            .await?;
            parse_response(&answer, &names, &request.settings().stop)
        })
    }
}

/// The answer in rein's terms. A stop text is reported only when it is one the request gave: an
/// upstream naming any other says nothing a client could act on.
fn parse_response(
    answer: &Value,
    names: &WireNames,
    stops: &[String],
) -> Result<ChatResponse, ProviderError> {
    let malformed = |detail: &str| ProviderError::Malformed {
        detail: detail.to_owned(),
    };
    let blocks = answer
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no content list in the answer"))?;
    let mut texts = Vec::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                if let Some(t) = block.get("text").and_then(Value::as_str) {
                    texts.push(t.to_owned());
                }
            }
            Some("tool_use") => {
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("a tool_use block has no id"))?;
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("a tool_use block has no name"))?;
                let input = block.get("input").cloned().unwrap_or(Value::Null);
                let invalid_arguments =
                    (!input.is_object()).then(|| "the tool input is not a JSON object".to_owned());
                tool_calls.push(ToolCall {
                    id: id.to_owned(),
                    name: names.from_wire(name),
                    arguments: input,
                    invalid_arguments,
                });
            }
            // Thinking and other block types carry nothing rein acts on.
            _ => {}
        }
    }
    let text = (!texts.is_empty()).then(|| texts.join("\n"));
    let usage = Usage {
        input_tokens: answer
            .pointer("/usage/input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        output_tokens: answer
            .pointer("/usage/output_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let stop_reason = answer
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let stop_sequence = answer
        .get("stop_sequence")
        .and_then(Value::as_str)
        .filter(|s| stop_reason.as_deref() == Some("stop_sequence") && stops.iter().any(|t| t == s))
        .map(str::to_owned);
    Ok(ChatResponse {
        text,
        tool_calls,
        usage,
        stop_reason,
        stop_sequence,
    })
}
