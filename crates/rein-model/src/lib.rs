//! Model providers for rein behind one [`Provider`] trait, all with tool calling:
//!
//! - [`ScriptedProvider`]: deterministic replies read from a script file, for tests, demos and
//!   replays;
//! - [`OpenAiProvider`]: the Chat Completions API at any base URL (OpenAI, and compatible servers
//!   such as Ollama, vLLM and llama.cpp's server);
//! - [`AnthropicProvider`]: the Messages API.
//!
//! Providers only translate: they never retry, sleep or record anything. Errors say whether a
//! retry could help and how long the provider asked to wait; the engine decides what to do.

mod anthropic;
mod http;
mod openai;
mod scripted;
mod wire_names;

use std::time::Duration;

use rein_core::{Message, ModelSettings, ToolCall, ToolSpec, Usage};

pub use anthropic::{ANTHROPIC_VERSION, AnthropicConfig, AnthropicProvider};
pub use openai::{OpenAiConfig, OpenAiProvider};
pub use scripted::{
    InjectedTurn, Scenario, ScriptError, ScriptedCall, ScriptedProvider, ScriptedTurn,
};
pub use wire_names::WireNames;

pub use rein_core::BoxFuture;

/// What a provider is asked: the conversation so far and the tools on offer. It borrows them, so
/// building a request costs nothing however long the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatRequest<'a> {
    /// The operator's instructions (system prompt).
    pub system: &'a str,
    /// The conversation after the instructions.
    pub messages: &'a [Message],
    /// The tools the model may call.
    pub tools: &'a [ToolSpec],
    /// The caller's own settings for this call (a gateway client's), over the operator's.
    pub settings: Option<&'a ModelSettings>,
}

/// The settings of a request that carries none of its own.
static NO_SETTINGS: ModelSettings = ModelSettings {
    temperature: None,
    top_p: None,
    max_tokens: None,
    stop: Vec::new(),
    tool_choice: None,
    format: None,
    parallel_tool_calls: None,
    seed: None,
    reasoning_effort: None,
};

impl<'a> ChatRequest<'a> {
    /// The caller's settings (none, if it gave none).
    pub fn settings(&self) -> &'a ModelSettings {
        self.settings.unwrap_or(&NO_SETTINGS)
    }
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The model's text, if any.
    pub text: Option<String>,
    /// The tool calls it asked for, with rein's tool names.
    pub tool_calls: Vec<ToolCall>,
    /// Tokens used (as reported, or estimated where the provider reports nothing).
    pub usage: Usage,
    /// Why the model stopped, as the provider said.
    pub stop_reason: Option<String>,
    /// The stop text the model stopped at, where the provider says which (Anthropic's
    /// `stop_sequence`; OpenAI-compatible providers say only `stop`).
    pub stop_sequence: Option<String>,
}

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// HTTP 429: the provider asks us to slow down.
    #[error("rate limited (HTTP 429){}: {message}", fmt_retry(retry_after))]
    RateLimited {
        /// The wait the provider asked for (Retry-After), if it gave one.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// A server-side failure (HTTP 5xx, 529, 408): may pass.
    #[error("provider error (HTTP {status}){}: {message}", fmt_retry(retry_after))]
    Server {
        /// The HTTP status.
        status: u16,
        /// The wait the provider asked for, if any.
        retry_after: Option<Duration>,
        /// The provider's message.
        message: String,
    },
    /// No answer within the configured timeout.
    #[error("no answer within {} ms", after.as_millis())]
    Timeout {
        /// The timeout that passed.
        after: Duration,
    },
    /// The request was refused (HTTP 4xx other than 408 and 429): retrying will not help.
    #[error("request refused (HTTP {status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider refused the account, not the request: it is out of credit or quota (HTTP
    /// 402; OpenAI's `insufficient_quota`, `billing_hard_limit_reached`, `billing_not_active`;
    /// Anthropic's `billing_error`, and its 400 whose message begins "Your credit balance is too
    /// low", in its own error shape). No retry helps until someone pays, and
    /// it says the model cannot serve anyone: it counts against the model's breaker, so the
    /// fallbacks take over, and a gateway's client is answered 502, not told to fix its request.
    #[error("the provider refused the account (HTTP {status}): {message}")]
    Account {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The answer could not be understood.
    #[error("malformed answer: {detail}")]
    Malformed {
        /// What was wrong with it.
        detail: String,
    },
    /// The connection failed.
    #[error("could not reach the provider: {message}")]
    Transport {
        /// What failed.
        message: String,
    },
    /// The scripted provider has no turn for this request.
    #[error("{0}")]
    Script(String),
}

fn fmt_retry(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {} ms", d.as_millis()))
        .unwrap_or_default()
}

impl ProviderError {
    /// Whether the same request might succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::RateLimited { .. }
            | ProviderError::Server { .. }
            | ProviderError::Timeout { .. }
            | ProviderError::Transport { .. }
            | ProviderError::Malformed { .. } => true,
            ProviderError::Rejected { .. }
            | ProviderError::Account { .. }
            | ProviderError::Script(_) => false,
        }
    }

    /// Whether the provider refused the request for what it holds (HTTP 400, 413, 422: a value
    /// out of range, a schema it cannot take, too much of it), not for anything wrong with the
    /// model or rein's access to it: such a failure says nothing of the model's health.
    pub fn is_request_fault(&self) -> bool {
        matches!(
            self,
            ProviderError::Rejected {
                status: 400 | 413 | 422,
                ..
            }
        )
    }

    /// The wait the provider asked for before a retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. }
            | ProviderError::Server { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A model provider with tool calling.
pub trait Provider: Send + Sync {
    /// The provider kind: `scripted`, `openai` or `anthropic`.
    fn kind(&self) -> &'static str;
    /// The model this provider calls.
    fn model(&self) -> &str;
    /// The most tokens one reply may have: sent with every request (so the provider stops
    /// there) and reserved on the budgets before the call.
    fn max_output_tokens(&self) -> u64;
    /// Asks the model for its next turn.
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;
}

/// The reply cap of OpenAI-compatible models when the agent sets none.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

/// Estimates tokens for text where no tokenizer applies: one token per four bytes, rounded up.
/// Used by the scripted provider, whose "model" reports no usage.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}
