//! The command line's shape: every command, flag and argument, parsed by clap. Nothing here
//! does anything; `main.rs` and the `commands` modules act on it.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The production harness for AI agents.
#[derive(Debug, Parser)]
#[command(name = "rein", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Where runs are recorded.
    #[arg(long, global = true, env = "REIN_STATE_DIR", default_value = ".rein")]
    pub(crate) state_dir: PathBuf,
    /// A TOML file of `name = "value"` secrets (mode 600); default: secrets.toml in the state
    /// directory, when it exists. `REIN_SECRET_<NAME>` variables take precedence.
    #[arg(long, global = true, env = "REIN_SECRETS_FILE")]
    pub(crate) secrets_file: Option<PathBuf>,
    /// Also write each signed audit checkpoint to this directory (for example one that is
    /// copied off the machine).
    #[arg(long, global = true, env = "REIN_AUDIT_CHECKPOINT_DIR")]
    pub(crate) checkpoint_dir: Option<PathBuf>,
    /// The audit signing key's file, when it lives outside the state directory (mode 600).
    #[arg(long, global = true, env = "REIN_AUDIT_KEY_FILE")]
    pub(crate) audit_key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run an agent folder on a task.
    Run {
        /// The agent folder (holding agent.toml).
        agent_dir: PathBuf,
        /// The task; defaults to the agent's `default_task`.
        #[arg(long)]
        task: Option<String>,
        /// Print one JSON object at the end instead of the live view.
        #[arg(long)]
        json: bool,
        /// Override the agent's durability.
        #[arg(long, value_enum)]
        durability: Option<DurabilityArg>,
        /// Who the run acts for (`context.user` in policies).
        #[arg(long, env = "REIN_USER", default_value = "anonymous")]
        user: String,
        /// The tenant the run belongs to (`context.tenant`).
        #[arg(long, env = "REIN_TENANT", default_value = "default")]
        tenant: String,
        /// A grant, as JSON: what the run may do once untrusted data is in it (repeat for
        /// several; `[]` fixes none). Without grants, the agent's planner fixes them, if it
        /// has one. Example: `{"tool": "bank.transfer", "args": {"to": "DE89...", "amount":
        /// {"max": 100}}, "max_calls": 1}`.
        #[arg(long = "grant")]
        grants: Vec<String>,
    },
    /// List, show, approve and deny approval requests.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// The audit trail: its key, verification, proofs, and reading it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check policies and explain decisions.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// List, show and resume runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// The tools an agent has: built-in, command, sub-agent and MCP.
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// Spending against budgets: tokens and money per agent, user, tenant and run, per period.
    Usage {
        /// Only this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only periods from this one on (`2026-11-01`, `2026-11`).
        #[arg(long)]
        since: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a file rein reads.
    Schema {
        #[command(subcommand)]
        what: SchemaCommand,
    },
    /// Run the attack catalogue: each scenario's compromised model against its policies, with
    /// rein playing a careful person; prints harmful attempts, those the gate denied, harmful
    /// effects, benign tasks completed and approvals. Exits 1 when a harmful effect happened.
    Attacks {
        /// The catalogue (a folder of scenario folders), such as examples/attacks.
        catalogue: PathBuf,
        /// Use each scenario's policies from this subfolder instead of `policies/` (`before`:
        /// what an operator would have written without provenance, grants, data or counters).
        #[arg(long)]
        policies: Option<String>,
        /// Give no grants, as rein could not before grants existed.
        #[arg(long)]
        no_grants: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Attack an agent with a fully compromised model built from its manifests: every sink and
    /// high-risk tool with out-of-task values, untrusted values and the run's data, amounts
    /// split over calls, paths that escape, evasions, the answer as a channel. Tools run on a
    /// throw-away copy (command tools sandboxed; MCP tools, http.get and sub-agents stubbed).
    /// Exits 1 when an attack would have executed.
    Redteam {
        /// The agent folder.
        agent_dir: PathBuf,
        /// The task to attack with (default: the agent's `default_task`).
        #[arg(long)]
        task: Option<String>,
        /// Also write the report as JUnit XML to this file.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Also write the report as SARIF 2.1.0 to this file.
        #[arg(long)]
        sarif: Option<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the engine API over HTTP: start runs, stream their events, decide approvals,
    /// read the audit trail, from other machines, with tenants and tokens; metrics at /metrics.
    Serve {
        /// The address to listen on (port 0: any free port, printed at start).
        #[arg(long, default_value = "127.0.0.1:8420")]
        listen: String,
        /// A folder of agent folders, or an agent folder, to serve (repeat for several).
        #[arg(long = "agents", required = true)]
        agents: Vec<PathBuf>,
        /// The largest request body, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_body_bytes: usize,
        /// The largest request body of the gateway's model endpoints and /mcp, in bytes (a
        /// long conversation is sent whole with every request).
        #[arg(long, default_value_t = 32 << 20)]
        max_gateway_body_bytes: usize,
        /// The longest a request may take, in seconds (streams aside).
        #[arg(long, default_value_t = 30)]
        request_timeout_secs: u64,
        /// Requests a second each token may make.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// How many requests a token may make at once above that rate.
        #[arg(long, default_value_t = 100.0)]
        burst: f64,
        /// How long a shutdown waits for runs to reach a durable point, in seconds.
        #[arg(long, default_value_t = 60)]
        drain_secs: u64,
        /// Event streams one token may hold open at once.
        #[arg(long, default_value_t = 16)]
        max_streams_per_token: usize,
        /// Threads serving requests and driving runs. Default: one fewer than the machine's
        /// cores (at least one), leaving a core to rein's writer thread (the event log's, which
        /// also writes the budget ledger and the audit trail), which every request waits for.
        #[arg(long, env = "REIN_WORKERS")]
        workers: Option<usize>,
    },
    /// The gateway's conversations: the labels each has seen and the runs held for it.
    Conversations {
        #[command(subcommand)]
        command: crate::commands::conversations::ConversationsCommand,
    },
    /// API tokens for `rein serve`.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Measure rein's own costs on this machine.
    Bench {
        #[command(subcommand)]
        what: crate::commands::bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ToolsCommand {
    /// Every tool with its source, arguments, labels and the verdict the policies give it by
    /// default. Connects to the agent's MCP servers to list theirs.
    List {
        /// The agent folder.
        agent_dir: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Accept the current definitions of MCP tools that changed since they were pinned.
        #[arg(long)]
        accept_changes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
    /// The most recent runs.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only this agent's runs.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs for this user.
        #[arg(long)]
        user: Option<String>,
        /// Only this tenant's runs.
        #[arg(long)]
        tenant: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run: at once if nobody drives it, else at its driver's next step.
    Cancel {
        /// The run id (or a unique prefix).
        id: String,
        /// Who cancels (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// A run's timeline: steps, tool calls with arguments and outcomes, durations, tokens.
    Show {
        /// The run id (or a unique prefix).
        id: String,
        /// As JSON: the summary and every event.
        #[arg(long)]
        json: bool,
    },
    /// Settle the call a `needs_reconciliation` run stopped on, then resume it.
    Reconcile {
        /// The run id (or a unique prefix).
        id: String,
        /// The call in doubt (the run's report names it).
        #[arg(long)]
        call: String,
        /// Its effect happened.
        #[arg(
            long,
            conflicts_with = "did_not_happen",
            required_unless_present = "did_not_happen"
        )]
        happened: bool,
        /// Its effect did not happen: judge and run it again.
        #[arg(long)]
        did_not_happen: bool,
        /// What the tool returned, as JSON, when it happened.
        #[arg(long, default_value = "{}")]
        output: String,
        /// Why, or how you checked.
        #[arg(long)]
        note: Option<String>,
        /// Who settles it (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
    },
    /// Continue a run from its log after a crash or a stop.
    Resume {
        /// The run id (or a unique prefix).
        id: String,
        /// Print one JSON object at the end instead of the live view.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchemaCommand {
    /// agent.toml (JSON Schema).
    Agent,
    /// The HTTP API of `rein serve` (OpenAPI 3.1; a copy is kept in docs/openapi.json).
    Openapi,
    /// The Cedar schema policies are validated against; with an agent folder, including its
    /// tools' actions and argument types.
    Policy {
        /// The agent folder.
        agent_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Pending approval requests (all of them with --all).
    List {
        /// Decided ones too.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The approval card: the tool, its exact arguments, and the policies that asked.
    Show {
        /// The approval id (or a unique prefix).
        id: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let the call run.
    Approve {
        /// The approval id (or a unique prefix).
        id: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
        /// Who decides (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the call; the model is told.
    Deny {
        /// The approval id (or a unique prefix).
        id: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
        /// Who decides (default: the login name).
        #[arg(long = "as")]
        as_name: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// The public key that signs checkpoints (created on first use).
    Key,
    /// Replace the signing key; the rotation is recorded and signed with the old key.
    RotateKey,
    /// Recompute the whole log, check every checkpoint and the trail against the event log;
    /// exit 3 on a failure.
    Verify {
        /// The trusted public key (`rein audit key` output); default this machine's own key.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Checkpoints held outside the log (a file, or a directory such as the
        /// --checkpoint-dir copies): the log must hold them all.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// An inclusion proof of one record and its signed checkpoint, as JSON.
    Proof {
        /// The record's number.
        seq: u64,
        /// The trusted public key; default this machine's own key.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Check a proof offline, with nothing but the proof and the public key.
    VerifyProof {
        /// The proof file.
        file: PathBuf,
        /// The public key to trust.
        #[arg(long)]
        public_key: PathBuf,
    },
    /// A run's audit records, readable.
    Show {
        /// The run id (or a prefix).
        #[arg(long)]
        run: String,
    },
    /// Audit records as JSON lines.
    Export {
        /// Only records from this time on: milliseconds since the epoch, or YYYY-MM-DD.
        #[arg(long)]
        since: Option<String>,
        /// Only this run's records (an id or a prefix).
        #[arg(long)]
        run: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate an agent's policies and the examples they carry.
    Check {
        /// The agent folder.
        agent_dir: PathBuf,
    },
    /// The verdict for a request, and the policies that decided it.
    Explain {
        /// The agent folder.
        agent_dir: PathBuf,
        #[command(flatten)]
        request: Box<ExplainArgs>,
    },
}

/// What `rein policy explain` is asked: the request and the run's facts as given.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    /// The tool called.
    #[arg(long, conflicts_with_all = ["model", "answer"])]
    pub(crate) tool: Option<String>,
    /// Or: the model called.
    #[arg(long, conflicts_with = "answer")]
    pub(crate) model: Option<String>,
    /// Or: the run's answer, with this text (the `respond` action).
    #[arg(long)]
    pub(crate) answer: Option<String>,
    /// The arguments, as JSON.
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,
    /// A label in play (repeat for several).
    #[arg(long = "label")]
    pub(crate) labels: Vec<String>,
    /// `context.task` (default `explain`).
    #[arg(long)]
    pub(crate) task: Option<String>,
    /// A grant of the run, as JSON (repeat for several; an empty list `[]` fixes none).
    #[arg(long = "grant")]
    pub(crate) grants: Vec<String>,
    /// Where an argument's values came from: `ARG=ORIGIN|ORIGIN` (repeat for several; origins
    /// are `task`, `operator`, `tool:NAME`, labels such as `untrusted`, or `model`).
    #[arg(long = "from")]
    pub(crate) from: Vec<String>,
    /// A policy data set: `NAME=VALUE|VALUE` (repeat for several).
    #[arg(long = "data")]
    pub(crate) data: Vec<String>,
    /// Calls the tool has made in the run so far.
    #[arg(long, default_value_t = 0)]
    pub(crate) calls: u32,
    /// `context.user`.
    #[arg(long, default_value = "anonymous")]
    pub(crate) user: String,
    /// `context.tenant`.
    #[arg(long, default_value = "default")]
    pub(crate) tenant: String,
    /// Judge as if approved by this person.
    #[arg(long)]
    pub(crate) approved_by: Option<String>,
    /// As JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create a token; it is printed once and never stored (only its hash is).
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// The user it acts as (default: the tenant's name).
        #[arg(long)]
        user: Option<String>,
        /// What it may do, comma-separated: runs:write, approvals:decide, audit:read,
        /// metrics:read, admin. Any token reads its tenant's runs and approvals.
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<String>,
        /// Days until it expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The tokens (never the tokens themselves).
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (the part after `rein_`, before the next `_`).
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DurabilityArg {
    /// Survives a killed process.
    Normal,
    /// Also survives power loss.
    Fsync,
}

impl DurabilityArg {
    /// Whether every commit is flushed to disk.
    pub(crate) fn fsync(self) -> bool {
        matches!(self, DurabilityArg::Fsync)
    }
}
