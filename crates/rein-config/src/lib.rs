//! agent.toml for rein: strict parsing with errors that name the file, line and field; resolution
//! into a typed [`AgentSpec`]; and the file's JSON Schema.
//!
//! Loading happens in two passes, after Codex's `ConfigToml` → `Config`: [`raw`] mirrors the file
//! with every field optional and unknown fields refused, then [`load`] checks what types cannot
//! (which fields go together, that referenced files exist) and fills in defaults once.

pub mod raw;
mod resolve;
mod security;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rein_core::{Durability, Limits};
use serde_json::Value;

pub use resolve::load;
pub use security::{AnswerSpec, DataSpec, SandboxFallback, SandboxSpec, StripLinks, read_data};

/// The file name of an agent's configuration inside its folder.
pub const AGENT_FILE: &str = "agent.toml";

/// An agent, resolved: every default filled in, every path absolute, every file checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// The agent's name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The agent folder (absolute).
    pub dir: PathBuf,
    /// The operator's instructions.
    pub instructions: String,
    /// The task used when none is given.
    pub default_task: Option<String>,
    /// The model.
    pub model: ModelSpec,
    /// The tools, in the order declared.
    pub tools: Vec<ToolEntrySpec>,
    /// Hard limits.
    pub limits: Limits,
    /// The workspace.
    pub workspace: WorkspaceSpec,
    /// How durable commits are.
    pub durability: Durability,
    /// How long an approval request stays open before it counts as denied.
    pub approval_ttl: Duration,
    /// MCP servers, in the order declared.
    pub mcp: Vec<McpServerSpec>,
    /// The other models (`[[models]]`), by id.
    pub models: Vec<ModelSpec>,
    /// Ids of the models tried in order when `[model]` fails.
    pub fallbacks: Vec<String>,
    /// The model for steps that only read tool results, if routed.
    pub route_tool_results: Option<String>,
    /// The model for the wrap-up turn when a budget runs out, if routed.
    pub route_wrap_up: Option<String>,
    /// Spending limits: the run's own and shared ones.
    pub budgets: Vec<rein_core::budget::Limit>,
    /// The most tool calls in a run.
    pub max_tool_calls: Option<u32>,
    /// Prices that override the built-in table, by model name.
    pub prices: BTreeMap<String, rein_core::budget::Price>,
    /// The context budget.
    pub context: ContextSpec,
    /// The most a model call may take before a miss is recorded.
    pub model_latency_target: Option<Duration>,
    /// The most a tool call may take before a miss is recorded.
    pub tool_latency_target: Option<Duration>,
    /// What one model reply may hold.
    pub reply_limits: rein_core::reply::ReplyLimits,
    /// Every secret the agent refers to (`secret:NAME`), so all can be resolved before it runs.
    pub secrets: Vec<String>,
    /// Policy data files (`[data]`), by name.
    pub data: Vec<DataSpec>,
    /// The model that fixes a run's grants when its caller gives none (`[grants] planner`).
    pub planner: Option<String>,
    /// How the run's answer is treated as a sink (`[answer]`).
    pub answer: AnswerSpec,
    /// What happens when the kernel cannot sandbox command tools.
    pub sandbox_fallback: SandboxFallback,
    /// How the agent answers as a gateway (`[gateway]`), when it is one.
    pub gateway: Option<GatewaySpec>,
    /// SHA-256 over agent.toml and every file it references, to notice changes between runs.
    pub digest: String,
}

/// How a gateway answers its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewaySpec {
    /// What a client gets for a denied tool call.
    pub on_denied: OnDenied,
}

/// What a gateway does with a tool call the policies deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDenied {
    /// Leave it out of the answer, whose text says which call was refused and why.
    Remove,
    /// Fail the request with an error naming the call and the reason.
    Error,
}

/// Which model answers and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Its id: `primary` for `[model]`, else the `[[models]]` entry's `id`.
    pub id: String,
    /// The provider and its settings.
    pub provider: ProviderSpec,
    /// The model name.
    pub name: String,
    /// How long one call may take.
    pub timeout: Duration,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// The most tokens per reply.
    pub max_tokens: Option<u32>,
    /// Tries in all for errors that may pass.
    pub max_attempts: u32,
    /// The longest wait between tries.
    pub max_backoff: Duration,
}

/// A provider and the settings only it has.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSpec {
    /// Replies from a script file.
    Scripted {
        /// The script (absolute).
        script: PathBuf,
    },
    /// OpenAI Chat Completions or a compatible server.
    OpenAi {
        /// The API root.
        base_url: String,
        /// Where the key comes from, if the server needs one.
        api_key: Option<KeySource>,
    },
    /// Anthropic Messages.
    Anthropic {
        /// The API root.
        base_url: String,
        /// Where the key comes from.
        api_key: Option<KeySource>,
    },
}

impl ProviderSpec {
    /// The provider kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSpec::Scripted { .. } => "scripted",
            ProviderSpec::OpenAi { .. } => "openai",
            ProviderSpec::Anthropic { .. } => "anthropic",
        }
    }
}

/// Where a provider's API key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable (`api_key_env`).
    Env(String),
    /// A secret (`api_key = "secret:NAME"`).
    Secret(String),
}

/// One tool as configured: what it is, and what the gate knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolEntrySpec {
    /// The tool itself.
    pub tool: ToolConfig,
    /// What its output is.
    pub labels: Vec<String>,
    /// Whether it sends data outside.
    pub sink: bool,
    /// `low`, `medium` or `high`.
    pub risk: String,
    /// Its tool groups.
    pub groups: Vec<String>,
    /// Argument fields the audit trail stores only as keyed hashes.
    pub sensitive: Vec<String>,
    /// Retries and circuit breaker.
    pub resilience: Resilience,
    /// Labels of parts of its output, by JSON pointer pattern.
    pub field_labels: BTreeMap<String, Vec<String>>,
    /// The policy data set its output feeds.
    pub data: Option<String>,
}

impl ToolEntrySpec {
    /// The tool's name.
    pub fn name(&self) -> &str {
        self.tool.name()
    }
}

/// One tool, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolConfig {
    /// `fs.read`.
    FsRead,
    /// `fs.write`.
    FsWrite,
    /// `memory.read`: a note from session, agent or user memory.
    MemoryRead,
    /// `memory.write`: keep a note in session, agent or user memory.
    MemoryWrite,
    /// `http.get` with its allowlist.
    HttpGet {
        /// Allowed hosts.
        allow_hosts: Vec<String>,
        /// The most body bytes returned.
        max_bytes: usize,
        /// Per-call timeout.
        timeout: Duration,
    },
    /// A sub-agent that a task is delegated to.
    Delegate {
        /// The tool's name.
        name: String,
        /// What the sub-agent does, for the model.
        description: String,
        /// The sub-agent's folder (absolute).
        agent_dir: PathBuf,
    },
    /// A tool the gateway's clients run themselves: rein judges its calls and hands the allowed
    /// ones over.
    Client {
        /// The tool's name.
        name: String,
        /// What it does (empty when the client's declaration is all there is).
        description: String,
        /// JSON Schema its arguments must match (`{"type": "object"}` when not given).
        args_schema: Value,
        /// Whether repeating it is safe.
        idempotent: bool,
    },
    /// An executable speaking JSON on stdin and stdout.
    Command {
        /// The tool's name.
        name: String,
        /// What it does.
        description: String,
        /// The program (absolute when it was given as a path).
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
        /// JSON Schema of its arguments.
        args_schema: Value,
        /// Whether repeating it is safe.
        idempotent: bool,
        /// Per-call timeout.
        timeout: Duration,
        /// The most bytes it may print.
        max_output_bytes: usize,
        /// What its program may reach.
        sandbox: Box<SandboxSpec>,
    },
}

impl ToolConfig {
    /// The tool's name.
    pub fn name(&self) -> &str {
        match self {
            ToolConfig::FsRead => "fs.read",
            ToolConfig::FsWrite => "fs.write",
            ToolConfig::MemoryRead => "memory.read",
            ToolConfig::MemoryWrite => "memory.write",
            ToolConfig::HttpGet { .. } => "http.get",
            ToolConfig::Command { name, .. }
            | ToolConfig::Delegate { name, .. }
            | ToolConfig::Client { name, .. } => name,
        }
    }
}

/// What the model is sent: at most `max_tokens` of conversation, the `keep_recent` last
/// messages never elided, the `pinned` constraints always present.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContextSpec {
    /// The budget, if any.
    pub max_tokens: Option<u64>,
    /// Recent messages never elided.
    pub keep_recent: usize,
    /// The operator's constraints.
    pub pinned: Vec<String>,
}

/// How a tool is retried and when its circuit breaker opens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resilience {
    /// Tries in all.
    pub max_attempts: u32,
    /// The first wait between tries.
    pub backoff: Duration,
    /// Failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open.
    pub breaker_cooldown: Duration,
    /// A call of a tool that is not idempotent which times out or is killed counts as failed
    /// (`on_timeout = "failed"`) rather than in doubt.
    pub timeout_is_failure: bool,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            max_attempts: 1,
            backoff: Duration::from_millis(200),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            timeout_is_failure: false,
        }
    }
}

/// An MCP server, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct McpServerSpec {
    /// Its name; its tools are `<name>.<tool>`.
    pub name: String,
    /// How to reach it.
    pub transport: McpTransportSpec,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Timeout for starting and listing.
    pub startup_timeout: Duration,
    /// The most bytes of a result passed on.
    pub max_output_bytes: usize,
    /// The operator's manifests, by the server's tool name.
    pub tools: BTreeMap<String, McpToolPolicy>,
    /// The line in agent.toml that declares it, for messages.
    pub line: usize,
}

impl McpServerSpec {
    /// The operator's manifest for one of the server's tools, or the restrictive defaults.
    pub fn tool_policy(&self, tool: &str) -> McpToolPolicy {
        self.tools.get(tool).cloned().unwrap_or_default()
    }
}

/// How an MCP server is reached.
#[derive(Debug, Clone, PartialEq)]
pub enum McpTransportSpec {
    /// A child process speaking MCP on stdin and stdout.
    Stdio {
        /// The program (absolute when given as a path).
        program: PathBuf,
        /// Its arguments, `{workspace}` replaced.
        args: Vec<String>,
        /// Extra environment variables (values may be `secret:NAME`).
        env: BTreeMap<String, String>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
        /// Headers (values may be `secret:NAME`).
        headers: BTreeMap<String, String>,
    },
}

/// What the operator declares about one MCP tool; the defaults are the most restrictive.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolPolicy {
    /// Replaces the server's description.
    pub description: Option<String>,
    /// What its output is.
    pub labels: Vec<String>,
    /// Whether it sends data outside.
    pub sink: bool,
    /// `low`, `medium` or `high`.
    pub risk: String,
    /// Tool groups.
    pub groups: Vec<String>,
    /// Whether repeating it is safe.
    pub idempotent: bool,
    /// A timed-out call counts as failed rather than in doubt.
    pub timeout_is_failure: bool,
    /// Argument fields kept out of the audit trail in clear.
    pub sensitive: Vec<String>,
    /// Labels of parts of its output, by JSON pointer pattern.
    pub field_labels: BTreeMap<String, Vec<String>>,
    /// The policy data set its output feeds.
    pub data: Option<String>,
    /// Whether it is offered at all.
    pub enabled: bool,
    /// Whether the operator declared it (false: these are the defaults).
    pub declared: bool,
}

impl Default for McpToolPolicy {
    fn default() -> Self {
        McpToolPolicy {
            description: None,
            labels: vec![rein_core::labels::UNTRUSTED.to_owned()],
            sink: true,
            risk: "high".into(),
            groups: vec![],
            idempotent: false,
            timeout_is_failure: false,
            sensitive: vec![],
            field_labels: BTreeMap::new(),
            data: None,
            enabled: true,
            declared: false,
        }
    }
}

/// Where tools work.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceSpec {
    /// The folder (absolute).
    pub path: PathBuf,
    /// Whether each run gets its own copy.
    pub isolate: bool,
}

/// A problem in an agent folder, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{}: {}{message}", file.display(), position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default(), field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// The file at fault.
    pub file: PathBuf,
    /// Line and column, when known.
    pub position: Option<(usize, usize)>,
    /// The field at fault, as a path (`tools[1].command`), when known.
    pub field: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The JSON Schema of agent.toml, as `rein schema agent` prints it.
pub fn agent_schema() -> String {
    let schema = schemars::schema_for!(raw::AgentFile);
    // Keys sorted, so the text is the same whether or not another crate in the build turned on
    // serde_json's `preserve_order`.
    let schema = sorted(serde_json::to_value(&schema).unwrap_or_default());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
