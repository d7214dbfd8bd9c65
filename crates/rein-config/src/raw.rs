//! agent.toml as written: every section, with `deny_unknown_fields`, documented for the JSON
//! Schema that `rein schema agent` prints. Nothing here is checked beyond types; [`crate::resolve`]
//! turns it into an [`crate::AgentSpec`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

/// An agent: its model, instructions, tools and limits. Paths are relative to the agent folder.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rein agent.toml")]
pub struct AgentFile {
    /// The agent's name: letters, digits, `.`, `_` and `-`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// What the agent is for, for people.
    #[serde(default)]
    pub description: Option<String>,
    /// The operator's instructions (system prompt). Give this or `instructions_file`.
    #[serde(default)]
    pub instructions: Option<String>,
    /// A file holding the instructions.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub instructions_file: Option<Spanned<String>>,
    /// The task used when `rein run` is given no `--task`.
    #[serde(default)]
    pub default_task: Option<String>,
    /// `normal` (survives a killed process) or `fsync` (also survives power loss).
    #[serde(default)]
    pub durability: Option<DurabilityName>,
    /// Which model answers, and how to reach it.
    pub model: ModelSection,
    /// The tools the agent may call.
    #[serde(default)]
    #[schemars(with = "Vec<ToolEntry>")]
    pub tools: Vec<Spanned<ToolEntry>>,
    /// Hard limits on a run.
    #[serde(default)]
    pub limits: Option<LimitsSection>,
    /// Where tools read and write files.
    #[serde(default)]
    pub workspace: Option<WorkspaceSection>,
    /// How approvals behave.
    #[serde(default)]
    pub approvals: Option<ApprovalsSection>,
    /// More models, by `id`: fallbacks for `[model]` (`model.fallbacks`) and targets of `[routing]`.
    #[serde(default)]
    pub models: Vec<ModelSection>,
    /// Which model answers which kind of step.
    #[serde(default)]
    pub routing: Option<RoutingSection>,
    /// Limits on one run's spending (its sub-agents spend from it too).
    #[serde(default)]
    pub budget: Option<BudgetSection>,
    /// Limits shared by many runs over a period: per agent, per user or per tenant.
    #[serde(default)]
    pub budgets: Vec<SharedBudgetSection>,
    /// Prices per million tokens, by model name, overriding the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceSection>,
    /// The context sent to the model: its budget and what compaction keeps.
    #[serde(default)]
    pub context: Option<ContextSection>,
    /// Latency targets; a miss is recorded as an event.
    #[serde(default)]
    pub latency: Option<LatencySection>,
    /// Policy data: name = "file.json" (relative to the agent folder). Each file's strings and
    /// numbers become the set `context.data.<name>` (saved payees, the org's domains).
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
    /// Grants fixed before untrusted data is read.
    #[serde(default)]
    pub grants: Option<GrantsSection>,
    /// The run's answer as a sink.
    #[serde(default)]
    pub answer: Option<AnswerSection>,
    /// How command tools are sandboxed.
    #[serde(default)]
    pub sandbox: Option<SandboxSection>,
    /// MCP servers whose tools the agent may call, each offered as `server.tool`.
    #[serde(default)]
    #[schemars(with = "Vec<McpServerEntry>")]
    pub mcp: Vec<Spanned<McpServerEntry>>,
    /// This agent is a gateway for agents built elsewhere (`rein serve`'s OpenAI- and
    /// Anthropic-compatible endpoints): how it answers them.
    #[serde(default)]
    pub gateway: Option<GatewaySection>,
}

/// The `[gateway]` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// What a client gets when the policies deny a tool call in the model's answer: `remove`
    /// (default: the call is left out and the answer's text says which call was refused and
    /// why) or `error` (the request fails with a 403 naming the call and the reason).
    #[serde(default)]
    pub on_denied: Option<OnDeniedName>,
}

/// What a gateway does with a denied call.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDeniedName {
    /// Leave the call out and say so in the answer.
    Remove,
    /// Fail the request.
    Error,
}

/// One MCP server (`[[mcp]]`): a command to spawn (stdio) or a Streamable HTTP `url`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpServerEntry {
    /// The server's name; its tools are offered as `<name>.<tool>`.
    pub name: String,
    /// Stdio: the program and its arguments. A program with a `/` is relative to the agent
    /// folder. `{workspace}` in an argument is replaced by the workspace folder.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Stdio: extra environment variables; a value may be `secret:NAME`.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Streamable HTTP: the endpoint, for example `http://127.0.0.1:3001/mcp`.
    #[serde(default)]
    pub url: Option<String>,
    /// Streamable HTTP: headers sent with every request; a value may be `secret:NAME`.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// How long one tool call may run, in milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// How long starting the server and listing its tools may take, in milliseconds
    /// (default 20000).
    #[serde(default)]
    pub startup_timeout_ms: Option<u64>,
    /// The most bytes of a tool's result passed on; longer results are cut with a marker
    /// (default 65536).
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// The operator's manifest for each tool, by the server's tool name. A tool without an
    /// entry gets the most restrictive defaults: output `untrusted`, not idempotent, a sink,
    /// risk `high`. Nothing the server says about its tools changes these.
    #[serde(default)]
    pub tools: Option<BTreeMap<String, McpToolEntry>>,
}

/// The operator's manifest for one MCP tool (`[mcp.tools.<tool>]`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpToolEntry {
    /// Replaces the server's description of the tool for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// What the tool's output is (default `untrusted`).
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Whether the tool sends data outside (default true).
    #[serde(default)]
    pub sink: Option<bool>,
    /// `low`, `medium` or `high` (default `high`).
    #[serde(default)]
    pub risk: Option<RiskName>,
    /// Tool groups, for policies.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Whether repeating a call is harmless (default false).
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// What a call that times out (or whose process is killed) is, when the tool is not
    /// idempotent: `in_doubt` (default: its effect may have happened, so the run stops
    /// `needs_reconciliation` naming the call) or `failed` (its owner knows a timed-out call has
    /// no effect; the model is told it failed).
    #[serde(default)]
    pub on_timeout: Option<OnTimeoutName>,
    /// Labels of parts of the tool's output, by JSON pointer (`*` for any one segment):
    /// `{ "/transactions/*/memo" = ["untrusted"] }`. The values there carry them (for
    /// provenance and marking), the rest of the output does not.
    #[serde(default)]
    pub field_labels: Option<BTreeMap<String, Vec<String>>>,
    /// The policy data set this tool's output feeds (`context.data.<name>`): for a tool the
    /// operator trusts to say what is allowed, such as a list of saved payees. Not for a tool
    /// whose output is labelled `untrusted`.
    #[serde(default)]
    pub data: Option<String>,
    /// Argument fields the audit trail stores only as keyed hashes.
    #[serde(default)]
    pub sensitive: Option<Vec<String>>,
    /// Whether the tool is offered at all (default true). `false` hides it from the model and
    /// refuses every call, whatever the policies say.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The `[grants]` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantsSection {
    /// A model (an `id` from `[[models]]`, or `primary`) that fixes the run's grants from the
    /// instructions and the task alone, before any tool runs, when the caller gives none.
    #[serde(default)]
    pub planner: Option<String>,
}

/// How links in the run's answer are stripped before it is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StripLinksName {
    /// Keep every link and image (the policies still judge them).
    None,
    /// Remove links and images whose URL carries data the run read.
    CarryingData,
    /// Also remove those whose host is not in `allow_hosts`.
    OutsideAllowlist,
    /// Remove every link and image.
    All,
}

/// The `[answer]` section: the run's answer is judged as the `respond` action.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerSection {
    /// Which links and images are removed before the answer is judged (default
    /// `carrying_data`); each removal is recorded.
    #[serde(default)]
    pub strip_links: Option<StripLinksName>,
    /// Hosts links may point to, for `outside_allowlist` (`host` or `*.domain`).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
}

/// What rein does when the kernel cannot sandbox command tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxFallbackName {
    /// Refuse to start the run (default).
    Refuse,
    /// Run command tools without a sandbox, saying so at start.
    Continue,
}

/// The `[sandbox]` section. Command tools run with no network unless they list hosts, and with
/// the file system limited to the workspace, their declared paths and the system's read-only
/// folders (Landlock and seccomp on Linux).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// When the kernel cannot sandbox: `refuse` (default) or `continue`.
    #[serde(default)]
    pub if_unavailable: Option<SandboxFallbackName>,
}

/// The `[routing]` section: model ids (from `[[models]]`) per kind of step.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Steps that only read tool results (the last message is a tool result).
    #[serde(default)]
    pub tool_results: Option<String>,
    /// The wrap-up turn when a budget runs out.
    #[serde(default)]
    pub wrap_up: Option<String>,
}

/// The `[budget]` section: hard limits on one run.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// Tokens (prompt + completion).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Money, in US dollars.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Tool calls.
    #[serde(default)]
    pub tool_calls: Option<u32>,
    /// A warning is recorded when this share of a limit is spent (default 80).
    #[serde(default)]
    pub warn_at_percent: Option<u8>,
}

/// A `[[budgets]]` entry: a limit shared by runs over a period.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedBudgetSection {
    /// `agent`, `user` or `tenant`.
    pub scope: BudgetScopeName,
    /// `day` or `month` (UTC).
    pub period: BudgetPeriodName,
    /// Tokens.
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Money, in US dollars.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// A warning is recorded when this share is spent (default 80).
    #[serde(default)]
    pub warn_at_percent: Option<u8>,
}

/// Who a shared budget is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScopeName {
    /// Every run of this agent.
    Agent,
    /// Every run for one user.
    User,
    /// Every run for one tenant.
    Tenant,
    /// Every run (or gateway request) made with one API token.
    Token,
}

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriodName {
    /// A UTC day.
    Day,
    /// A UTC month.
    Month,
}

/// Prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    /// Prompt tokens.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
}

/// The `[context]` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextSection {
    /// The most tokens of conversation sent to the model; older tool outputs are elided to stay
    /// under it (default: no limit).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The most recent messages, never elided (default 4).
    #[serde(default)]
    pub keep_recent: Option<usize>,
    /// The operator's constraints: always in the context, whatever is compacted.
    #[serde(default)]
    pub pinned: Option<Vec<String>>,
}

/// The `[latency]` section, in milliseconds.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencySection {
    /// One model call.
    #[serde(default)]
    pub model_call_ms: Option<u64>,
    /// One tool call.
    #[serde(default)]
    pub tool_call_ms: Option<u64>,
}

/// The `[approvals]` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsSection {
    /// Seconds after which an undecided approval request counts as denied (default 86400).
    #[serde(default)]
    pub expire_after_secs: Option<u64>,
}

/// A durability setting.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityName {
    /// Committed events survive a crash of the process.
    Normal,
    /// Committed events are flushed to disk at each commit.
    Fsync,
}

/// A model provider kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderName {
    /// Replies read from a script file in the agent folder.
    Scripted,
    /// The OpenAI Chat Completions API, or any server compatible with it.
    Openai,
    /// The Anthropic Messages API.
    Anthropic,
}

/// The `[model]` section, and each `[[models]]` entry.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// For `[[models]]`: the id `fallbacks` and `[routing]` use.
    #[serde(default)]
    pub id: Option<String>,
    /// For `[model]`: ids of `[[models]]` tried in order when it fails (after its retries) or
    /// its circuit breaker is open.
    #[serde(default)]
    pub fallbacks: Option<Vec<String>>,
    /// `scripted`, `openai` or `anthropic`.
    pub provider: ProviderName,
    /// The model name, as the provider knows it.
    pub name: String,
    /// For `scripted`: the script file.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub script: Option<Spanned<String>>,
    /// The API root (for example `http://localhost:11434/v1` for Ollama).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable that holds the API key. Never put the key itself here.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub api_key_env: Option<Spanned<String>>,
    /// Or: the API key as a secret reference, `secret:NAME`, resolved from the variable
    /// `REIN_SECRET_NAME` or the secrets file. Never the key itself.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub api_key: Option<Spanned<String>>,
    /// How long one model call may take, in milliseconds (default 120000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The most tokens the model may produce per call.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// How many times a failing call is tried in all, for errors that may pass (default 3).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The longest wait between tries, in milliseconds, whatever Retry-After asks (default 30000).
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
}

/// One tool: a built-in (`builtin = "fs.read"`) or a command (`name`, `command`, ...).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolEntry {
    /// A sub-agent: the folder of another agent (relative to this one) that this tool delegates a
    /// task to. The child runs with its own context and at most this agent's authority.
    #[serde(default)]
    pub delegate: Option<String>,
    /// A built-in tool: `fs.read`, `fs.write`, `http.get`, `memory.read` or `memory.write`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// A tool the clients of this agent's gateway run themselves (`rein serve`'s OpenAI- and
    /// Anthropic-compatible endpoints): rein never runs it, it judges each call the model makes
    /// of it and hands the allowed ones to the client. Needs a `name`; `description` and
    /// `args_schema` are optional (the model sees the client's own declaration).
    #[serde(default)]
    pub client: Option<bool>,
    /// A command tool's name: letters, digits, `.`, `_` and `-`.
    #[serde(default)]
    pub name: Option<String>,
    /// What the tool does, for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// A command tool's program and its arguments. A program with a `/` is relative to the agent
    /// folder; otherwise it is looked up on PATH. The tool runs in the workspace, so arguments
    /// that name a file in the agent folder (such as `tools/refund.py`) are passed as absolute
    /// paths.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// JSON Schema of the arguments (an object schema).
    #[serde(default)]
    pub args_schema: Option<Value>,
    /// A file holding the JSON Schema of the arguments.
    #[serde(default)]
    pub args_schema_file: Option<String>,
    /// Whether calling the tool twice with the same arguments is harmless. Only idempotent tools
    /// are repeated after a crash leaves their outcome unknown. Default false.
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// How long one call may run, in milliseconds (default 30000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// What a call that times out (or whose process is killed) is, when the tool is not
    /// idempotent: `in_doubt` (default: its effect may have happened, so the run stops
    /// `needs_reconciliation` naming the call) or `failed` (its owner knows a timed-out call has
    /// no effect; the model is told it failed).
    #[serde(default)]
    pub on_timeout: Option<OnTimeoutName>,
    /// Tries in all when the tool fails or times out (default 1). More than 1 only for
    /// idempotent tools.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The first wait between tries, in milliseconds; it doubles, with jitter (default 200).
    #[serde(default)]
    pub retry_backoff_ms: Option<u64>,
    /// Failures in a row that open the tool's circuit breaker (default 5).
    #[serde(default)]
    pub breaker_failures: Option<u32>,
    /// How long an open breaker refuses calls before one probe is let through, in milliseconds
    /// (default 30000).
    #[serde(default)]
    pub breaker_cooldown_ms: Option<u64>,
    /// For command tools: the most bytes the program may print (default 1048576).
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
    /// For command tools: extra environment variables.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// For `http.get`: the hosts it may fetch from (`host`, `host:port` or `*.domain`). For a
    /// command tool: the hosts its program may connect to, through rein's proxy (default none:
    /// no network at all).
    #[serde(default)]
    pub allow_hosts: Option<Vec<String>>,
    /// For command tools: folders or files (relative to the agent folder, or absolute) the
    /// program may read besides the workspace, its own files and the system's.
    #[serde(default)]
    pub read_paths: Option<Vec<String>>,
    /// For command tools: folders or files the program may write besides the workspace.
    #[serde(default)]
    pub write_paths: Option<Vec<String>>,
    /// For `http.get`: the most body bytes returned (default 65536).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// What the tool's output is, for policies and for marking: for example `untrusted` (an
    /// attacker may control it; it is marked as data before the model reads it), `confidential`,
    /// `pii`. Default none; `http.get` defaults to `untrusted`.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Whether the tool sends data outside (email, webhooks, uploads). Default false; `http.get`
    /// defaults to true, since a URL can carry data out.
    #[serde(default)]
    pub sink: Option<bool>,
    /// `low`, `medium` or `high`, for policies (default `medium`).
    #[serde(default)]
    pub risk: Option<RiskName>,
    /// Tool groups the tool belongs to, for policies (`resource in ToolGroup::"payments"`).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Labels of parts of the tool's output, by JSON pointer (`*` for any one segment):
    /// `{ "/transactions/*/memo" = ["untrusted"] }`. The values there carry them (for
    /// provenance and marking), the rest of the output does not.
    #[serde(default)]
    pub field_labels: Option<BTreeMap<String, Vec<String>>>,
    /// The policy data set this tool's output feeds (`context.data.<name>`): for a tool the
    /// operator trusts to say what is allowed, such as a list of saved payees. Not for a tool
    /// whose output is labelled `untrusted`.
    #[serde(default)]
    pub data: Option<String>,
    /// Argument fields that are sensitive (card numbers, personal data): the audit trail stores
    /// them as keyed hashes, never in clear.
    #[serde(default)]
    pub sensitive: Option<Vec<String>>,
}

/// What a timed-out call of a tool that is not idempotent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeoutName {
    /// Its effect may have happened: the run stops `needs_reconciliation`.
    InDoubt,
    /// It had no effect: the model is told it failed.
    Failed,
}

/// A tool's risk level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskName {
    /// Reads, lookups.
    Low,
    /// Changes that can be undone.
    Medium,
    /// Money, deletion, anything hard to undo.
    High,
}

/// The `[limits]` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// The most model calls in a run (default 20).
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// The most seconds a run may be active (default 600).
    #[serde(default)]
    pub wall_clock_secs: Option<u64>,
    /// Tool calls considered in one model reply (default 32); later ones are refused and the
    /// model is told why.
    #[serde(default)]
    pub max_calls_per_step: Option<u32>,
    /// The most bytes of one tool call's arguments, as JSON (default 262144); larger calls are
    /// refused and the model is told why.
    #[serde(default)]
    pub max_call_args_bytes: Option<u64>,
}

/// The `[workspace]` section.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSection {
    /// The workspace folder (default `workspace`).
    #[serde(default)]
    pub path: Option<String>,
    /// When true, each run works on its own copy of the folder, made under the state directory
    /// when the run starts; the folder itself is never changed. Default false.
    #[serde(default)]
    pub isolate: Option<bool>,
}
