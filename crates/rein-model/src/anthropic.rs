//! The Anthropic Messages API provider.

use std::time::Duration;

use rein_core::{Message, ToolCall, Usage};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::http::{client, post_json};
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
    url: String,
}

impl AnthropicProvider {
    /// The default API root.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";

    /// A provider with these settings.
    pub fn new(config: AnthropicConfig) -> Result<AnthropicProvider, String> {
        let url = format!("{}/v1/messages", config.base_url.trim_end_matches('/'));
        Ok(AnthropicProvider {
            client: client(config.timeout)?,
            config,
            url,
        })
    }

    fn body(&self, request: &ChatRequest<'_>, names: &WireNames) -> Value {
        let mut messages: Vec<Value> = Vec::new();
        for message in request.messages {
            match message {
                Message::User { text } => messages.push(json!({"role": "user", "content": text})),
                Message::Assistant { text, tool_calls } => {
                    let mut content = Vec::new();
                    if let Some(text) = text {
                        content.push(json!({"type": "text", "text": text}));
                    }
                    for c in tool_calls {
                        let input = if c.arguments.is_object() {
                            c.arguments.clone()
                        } else {
                            json!({})
                        };
                        content.push(json!({"type": "tool_use", "id": c.id, "name": names.to_wire(&c.name), "input": input}));
                    }
                    messages.push(json!({"role": "assistant", "content": content}));
                }
                Message::Tool {
                    call_id,
                    content,
                    is_error,
                    ..
                } => {
                    let block = json!({"type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error});
                    // Results of one turn's calls travel together in one user message.
                    match messages.last_mut() {
                        Some(last) if last["role"] == "user" && last["content"].is_array() => {
                            if let Some(blocks) = last["content"].as_array_mut() {
                                blocks.push(block);
                            }
                        }
                        _ => messages.push(json!({"role": "user", "content": [block]})),
                    }
                }
            }
        }
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "system": request.system,
            "messages": messages,
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|t| json!({"name": names.to_wire(&t.name), "description": t.description, "input_schema": t.parameters}))
                .collect();
        }
        if let Some(t) = self.config.temperature {
            body["temperature"] = json!(t);
        }
        body
    }
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
            parse_response(&answer, &names)
        })
    }
}

fn parse_response(answer: &Value, names: &WireNames) -> Result<ChatResponse, ProviderError> {
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
    Ok(ChatResponse {
        text,
        tool_calls,
        usage,
        stop_reason,
    })
}
