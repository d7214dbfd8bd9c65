//! The scripted provider: deterministic replies from a file, for tests, demos and replays.
//!
//! A script is a list of turns. The provider answers a request with the turn whose index is the
//! number of model turns already in the conversation, so a run that is resumed after a crash gets
//! exactly the reply it would have got, and a script never depends on timing.
//!
//! ```toml
//! [[turns]]
//! text = "Let me look that up."
//! [[turns.calls]]
//! tool = "orders.lookup"
//! args = { order_id = "A-1001" }
//!
//! [[turns]]
//! text = "Your order has shipped."
//! ```

use std::path::{Path, PathBuf};

use rein_core::{Message, ToolCall, Usage};
use serde::Deserialize;
use serde_json::Value;

use crate::{BoxFuture, ChatRequest, ChatResponse, Provider, ProviderError, estimate_tokens};

/// One scripted model turn.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedTurn {
    /// What the model says.
    #[serde(default)]
    pub text: Option<String>,
    /// The tool calls it makes, in order.
    #[serde(default)]
    pub calls: Vec<ScriptedCall>,
}

/// One scripted tool call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedCall {
    /// The tool's name.
    pub tool: String,
    /// The arguments.
    #[serde(default)]
    pub args: Option<Value>,
    /// Arguments as raw text, exactly as a misbehaving model might send them (for example text
    /// that is not JSON). Takes the place of `args`.
    #[serde(default)]
    pub raw_args: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    #[serde(default)]
    turns: Vec<ScriptedTurn>,
}

/// A script file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ScriptError {
    /// The script file.
    pub path: PathBuf,
    /// Line and column, when known.
    pub line: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

/// Plays a script.
#[derive(Debug, Clone)]
pub struct ScriptedProvider {
    model: String,
    turns: Vec<ScriptedTurn>,
    source: String,
}

impl ScriptedProvider {
    /// A provider playing these turns, under this model name.
    pub fn new(model: impl Into<String>, turns: Vec<ScriptedTurn>) -> ScriptedProvider {
        ScriptedProvider {
            model: model.into(),
            turns,
            source: "the script".into(),
        }
    }

    /// Reads a script file (TOML, a `[[turns]]` list).
    pub fn from_file(
        model: impl Into<String>,
        path: &Path,
    ) -> Result<ScriptedProvider, ScriptError> {
        let error = |line, message: String| ScriptError {
            path: path.to_owned(),
            line,
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(None, format!("cannot read the script: {e}")))?;
        let file: ScriptFile = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| rein_core::text::line_col(&text, s.start));
            error(line, e.message().to_owned())
        })?;
        for (i, turn) in file.turns.iter().enumerate() {
            if turn.text.is_none() && turn.calls.is_empty() {
                return Err(error(
                    None,
                    format!("turns[{i}] has neither `text` nor `calls`"),
                ));
            }
            for (j, call) in turn.calls.iter().enumerate() {
                if call.args.is_some() && call.raw_args.is_some() {
                    return Err(error(
                        None,
                        format!("turns[{i}].calls[{j}] has both `args` and `raw_args`: keep one"),
                    ));
                }
            }
        }
        if file.turns.is_empty() {
            return Err(error(
                None,
                "the script has no turns: add at least one `[[turns]]` table".into(),
            ));
        }
        Ok(ScriptedProvider {
            model: model.into(),
            turns: file.turns,
            source: path.display().to_string(),
        })
    }

    /// The turns this provider plays.
    pub fn turns(&self) -> &[ScriptedTurn] {
        &self.turns
    }
}

impl Provider for ScriptedProvider {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        let index = request
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Assistant { .. }))
            .count();
        let result = match self.turns.get(index) {
            None => Err(ProviderError::Script(format!(
                "{} has {} turns and the run asked for turn {}: end the script with a turn that has only `text`",
                self.source,
                self.turns.len(),
                index + 1
            ))),
            Some(turn) => {
                let tool_calls = turn
                    .calls
                    .iter()
                    .enumerate()
                    .map(|(j, c)| {
                        let id = format!("call_{}_{}", index + 1, j + 1);
                        match &c.raw_args {
                            Some(raw) => match serde_json::from_str::<Value>(raw) {
                                Ok(arguments) => ToolCall {
                                    id,
                                    name: c.tool.clone(),
                                    arguments,
                                    invalid_arguments: None,
                                },
                                Err(e) => ToolCall {
                                    id,
                                    name: c.tool.clone(),
                                    arguments: Value::String(raw.clone()),
                                    invalid_arguments: Some(format!(
                                        "arguments are not valid JSON: {e}"
                                    )),
                                },
                            },
                            None => ToolCall {
                                id,
                                name: c.tool.clone(),
                                arguments: c
                                    .args
                                    .clone()
                                    .unwrap_or_else(|| Value::Object(Default::default())),
                                invalid_arguments: None,
                            },
                        }
                    })
                    .collect::<Vec<_>>();
                let input: u64 = estimate_tokens(request.system)
                    + request
                        .messages
                        .iter()
                        .map(|m| estimate_tokens(&message_text(m)))
                        .sum::<u64>();
                let output = estimate_tokens(turn.text.as_deref().unwrap_or(""))
                    + tool_calls
                        .iter()
                        .map(|c| {
                            estimate_tokens(&c.arguments.to_string()) + estimate_tokens(&c.name)
                        })
                        .sum::<u64>();
                Ok(ChatResponse {
                    text: turn.text.clone(),
                    stop_reason: Some(
                        if tool_calls.is_empty() {
                            "end_turn"
                        } else {
                            "tool_use"
                        }
                        .into(),
                    ),
                    tool_calls,
                    usage: Usage {
                        input_tokens: input,
                        output_tokens: output,
                    },
                })
            }
        };
        Box::pin(std::future::ready(result))
    }
}

fn message_text(message: &Message) -> String {
    match message {
        Message::User { text } => text.clone(),
        Message::Assistant { text, tool_calls } => {
            let mut s = text.clone().unwrap_or_default();
            for c in tool_calls {
                s.push_str(&c.name);
                s.push_str(&c.arguments.to_string());
            }
            s
        }
        Message::Tool { content, .. } => content.clone(),
    }
}
