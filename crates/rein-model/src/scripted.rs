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

use crate::{BoxFuture, ChatRequest, ChatResponse, Provider, ProviderError};

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
    /// What the model does instead if a tool's output in the conversation contains some text:
    /// a compromised model following an injected instruction.
    #[serde(default)]
    pub on_injection: Option<InjectedTurn>,
}

/// The turn a compromised model plays once it has seen an injected instruction.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectedTurn {
    /// The text whose presence in a tool's output triggers this turn.
    pub seen: String,
    /// What the model says.
    #[serde(default)]
    pub text: Option<String>,
    /// The tool calls it makes.
    #[serde(default)]
    pub calls: Vec<ScriptedCall>,
}

/// Turns played when the task contains some text, instead of the default `turns`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The text the task must contain.
    pub when_task_contains: String,
    /// The turns.
    pub turns: Vec<ScriptedTurn>,
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
    #[serde(default)]
    scenarios: Vec<Scenario>,
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
    max_output_tokens: u64,
    turns: Vec<ScriptedTurn>,
    scenarios: Vec<Scenario>,
    source: String,
}

impl ScriptedProvider {
    /// A provider playing these turns, under this model name.
    pub fn new(model: impl Into<String>, turns: Vec<ScriptedTurn>) -> ScriptedProvider {
        ScriptedProvider {
            model: model.into(),
            max_output_tokens: 1024,
            turns,
            scenarios: Vec::new(),
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
        let lists = std::iter::once(("turns".to_owned(), &file.turns)).chain(
            file.scenarios
                .iter()
                .enumerate()
                .map(|(s, sc)| (format!("scenarios[{s}].turns"), &sc.turns)),
        );
        for (list, turns) in lists {
            for (i, turn) in turns.iter().enumerate() {
                if turn.text.is_none() && turn.calls.is_empty() {
                    return Err(error(
                        None,
                        format!("{list}[{i}] has neither `text` nor `calls`"),
                    ));
                }
                let injected = turn.on_injection.iter().flat_map(|t| t.calls.iter());
                for (j, call) in turn.calls.iter().chain(injected).enumerate() {
                    if call.args.is_some() && call.raw_args.is_some() {
                        return Err(error(
                            None,
                            format!(
                                "{list}[{i}].calls[{j}] has both `args` and `raw_args`: keep one"
                            ),
                        ));
                    }
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
            max_output_tokens: 1024,
            turns: file.turns,
            scenarios: file.scenarios,
            source: path.display().to_string(),
        })
    }

    /// Sets the reply cap budgets reserve for this "model" (default 1024).
    pub fn with_max_output_tokens(mut self, max: u64) -> ScriptedProvider {
        self.max_output_tokens = max;
        self
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

    fn max_output_tokens(&self) -> u64 {
        self.max_output_tokens
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
        let task = request.messages.iter().find_map(|m| match m {
            Message::User { text } => Some(text.as_str()),
            _ => None,
        });
        let turns = self
            .scenarios
            .iter()
            .find(|s| task.is_some_and(|t| t.contains(&s.when_task_contains)))
            .map_or(&self.turns, |s| &s.turns);
        let result = match turns.get(index) {
            None => Err(ProviderError::Script(format!(
                "{} has {} turns and the run asked for turn {}: end the script with a turn that has only `text`",
                self.source,
                turns.len(),
                index + 1
            ))),
            Some(turn) => {
                // A compromised model: once the injected text is in a tool's output, it obeys it.
                let injected = turn.on_injection.as_ref().filter(|inj| {
                    request.messages.iter().any(|m| match m {
                        Message::Tool { content, .. } => content
                            .replace(rein_core::labels::DATAMARK, " ")
                            .contains(&inj.seen),
                        _ => false,
                    })
                });
                let (text, calls) = match injected {
                    Some(inj) => (&inj.text, &inj.calls),
                    None => (&turn.text, &turn.calls),
                };
                let tool_calls = calls
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
                let input = bytes_to_tokens(
                    request.system.len()
                        + request.messages.iter().map(message_bytes).sum::<usize>(),
                );
                let output = bytes_to_tokens(
                    text.as_deref().map_or(0, str::len)
                        + tool_calls
                            .iter()
                            .map(|c| c.name.len() + rein_core::reply::json_len(&c.arguments))
                            .sum::<usize>(),
                );
                Ok(ChatResponse {
                    text: text.clone(),
                    stop_reason: Some(
                        if tool_calls.is_empty() {
                            "end_turn"
                        } else {
                            "tool_use"
                        }
                        .into(),
                    ),
                    stop_sequence: None,
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

/// The bytes of a message's text and calls, counted without building a string.
fn message_bytes(message: &Message) -> usize {
    match message {
        Message::User { text } => text.len(),
        Message::Assistant { text, tool_calls } => {
            text.as_deref().map_or(0, str::len)
                + tool_calls
                    .iter()
                    .map(|c| c.name.len() + rein_core::reply::json_len(&c.arguments))
                    .sum::<usize>()
        }
        Message::Tool { content, .. } => content.len(),
    }
}

/// The documented estimate: one token per four bytes, rounded up (see [`estimate_tokens`]).
fn bytes_to_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}
