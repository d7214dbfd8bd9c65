//! Conversation types shared by the engine, the model providers and the tools: messages, tool
//! calls, tool specifications and token usage.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a conversation after the system instructions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Text from the person the agent works for (the task).
    User {
        /// The text.
        text: String,
    },
    /// A model turn: optional text and zero or more tool calls.
    Assistant {
        /// What the model said, if anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The tool calls it asked for, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, as the model will read it.
    Tool {
        /// The id of the call this answers.
        call_id: String,
        /// The tool's name.
        name: String,
        /// The result (or the error) as text.
        content: String,
        /// Whether the call failed or was rejected.
        #[serde(default)]
        is_error: bool,
    },
}

/// A tool call proposed by a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (unique within a run's step).
    pub id: String,
    /// The tool's name as rein knows it (for example `fs.read`).
    pub name: String,
    /// The arguments. When the model sent text that is not JSON, this holds that text as a string
    /// and `invalid_arguments` says what was wrong.
    pub arguments: Value,
    /// Set when the model's arguments could not be parsed as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_arguments: Option<String>,
}

/// What a model is told about a tool it may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: Value,
}

/// Tokens used by one model call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

impl Usage {
    /// The sum of two usages (saturating).
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
        }
    }
}
