//! Version 1 of rein's wire types: what the engine API returns to its faces (the CLI's JSON, the
//! HTTP API) and what they send it. They are apart from the core's types on purpose: the core may
//! change how it stores a run, while these only gain optional fields within a version. Every
//! conversion from the core is explicit.

mod events;
mod security;

pub use events::*;
pub use security::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of these types.
pub const VERSION: &str = "v1";

/// How a run went, once it ended or suspended: what `rein run --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunReport {
    /// The run's id.
    pub run_id: String,
    /// The agent's name.
    pub agent: String,
    /// How the run ended (or `awaiting_approval`).
    pub status: EndState,
    /// Model calls made.
    pub steps: u32,
    /// Tool executions started.
    pub tool_calls: u32,
    /// The final or partial output.
    pub output: Option<String>,
    /// Why the run did not complete.
    pub reason: Option<String>,
    /// What the model calls cost, in US dollars.
    pub cost_usd: f64,
    /// The tool calls that completed, in order.
    pub completed: Vec<String>,
    /// The tool calls that did not (failed, denied, rejected), with how.
    pub not_completed: Vec<String>,
    /// The tool call in doubt, for `needs_reconciliation`.
    pub call_id: Option<String>,
    /// Tokens used.
    pub usage: Usage,
    /// Time the run was active, summed over the processes that drove it.
    pub active_ms: u64,
    /// The run's workspace.
    pub workspace: String,
    /// For `awaiting_approval`: the approvals the run waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
}

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunSummary {
    /// The run's id.
    pub id: String,
    /// The agent's name.
    pub agent: String,
    /// The task.
    pub task: String,
    /// Where it stands.
    pub status: RunStatus,
    /// Who it acts for.
    pub user: String,
    /// Its tenant.
    pub tenant: String,
    /// For a sub-agent's run, the run that delegated to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// When it started (ms since the epoch).
    pub created_ms: u64,
    /// When its last event was recorded.
    pub updated_ms: u64,
    /// Events in its log.
    pub events: u64,
    /// Model steps taken.
    pub steps: u32,
    /// What its model calls cost, in US dollars.
    #[serde(default)]
    pub cost_usd: f64,
}

/// Totals folded from a run's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunTotals {
    /// Model steps.
    pub steps: u32,
    /// Tool executions.
    pub tool_calls: u32,
    /// Tokens.
    pub usage: Usage,
    /// Money, in US dollars.
    pub cost_usd: f64,
    /// Active time.
    pub active_ms: u64,
}

/// A run with its whole log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunDetail {
    /// The run.
    pub run: RunSummary,
    /// Its totals, when its log could be folded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<RunTotals>,
    /// Every event, in order.
    pub events: Vec<EventRecord>,
}

/// What a cancellation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CancelOutcome {
    /// Nobody drove the run: it has ended `cancelled`.
    Cancelled {
        /// The run's report.
        report: Box<RunReport>,
    },
    /// A live process drives the run: it was asked to stop, and ends it `cancelled` at its next
    /// step boundary.
    Requested {
        /// The run.
        run_id: String,
    },
}

/// An approval request as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalSummary {
    /// Its id.
    pub id: String,
    /// Its run.
    pub run_id: String,
    /// The call it holds.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    /// When it was requested.
    pub created_ms: u64,
    /// When it expires.
    pub expires_ms: Option<u64>,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// Its run's tenant.
    pub tenant: String,
    /// The exact arguments the call runs with (for the answer, `{"text": ...}`).
    #[serde(default)]
    pub arguments: Value,
}

/// The approval card: rendered from the recorded request, never from text a model wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApprovalCard {
    /// The request.
    pub approval: ApprovalSummary,
    /// The exact arguments the call runs with.
    pub arguments: Value,
    /// The policies that asked.
    pub policies: Vec<String>,
    /// Their reasons.
    pub reasons: Vec<String>,
    /// The labels in play.
    pub labels: Vec<String>,
    /// Where each argument's values came from (`task`, `operator`, `tool:<name>`, labels,
    /// `model`).
    #[serde(default)]
    pub provenance: BTreeMap<String, Vec<String>>,
    /// Each argument's provenance in words: `to_iban: from mail.inbox (untrusted)`.
    #[serde(default)]
    pub provenance_text: Vec<String>,
    /// For a file write: what it changes, as a unified diff against the file as it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The run's agent.
    pub agent: Option<String>,
    /// The run's task.
    pub task: Option<String>,
    /// Who the run acts for.
    pub user: Option<String>,
    /// The run's tenant.
    pub tenant: Option<String>,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The policies that decided it (empty for default deny).
    pub policies: Vec<String>,
    /// Why, in words.
    pub reasons: Vec<String>,
}

/// What `policy check` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PolicyCheck {
    /// Policies loaded and valid.
    pub policies: usize,
    /// `// example:` lines that hold.
    pub examples: usize,
}

/// A request to explain: what the gate says about one call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExplainRequest {
    /// The tool called (or `model`).
    pub tool: Option<String>,
    /// The model called.
    pub model: Option<String>,
    /// The arguments.
    #[serde(default)]
    pub args: Value,
    /// Labels in play.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `context.user` (over HTTP, the token's user, whatever is given).
    #[serde(default)]
    pub user: String,
    /// `context.tenant` (over HTTP, the token's tenant, whatever is given).
    #[serde(default)]
    pub tenant: String,
    /// Judge as if approved by this person.
    pub approved_by: Option<String>,
    /// `context.task` (default `explain`).
    #[serde(default)]
    pub task: Option<String>,
    /// The run's grants, as `--grant` gives them: `context.grants.covered` says whether one
    /// covers the call.
    #[serde(default)]
    pub grants: Option<Vec<Grant>>,
    /// Where each argument's values came from (`context.from`).
    #[serde(default)]
    pub from: BTreeMap<String, Vec<String>>,
    /// Policy data sets (`context.data`).
    #[serde(default)]
    pub data: BTreeMap<String, Vec<String>>,
    /// Calls of the tool so far (`context.counters.calls`).
    #[serde(default)]
    pub calls: u32,
    /// Explain the run's answer being returned (the `respond` action) with this text.
    #[serde(default)]
    pub answer: Option<String>,
}

/// One of an agent's tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolRow {
    /// Its name (its Cedar action).
    pub name: String,
    /// built-in, command, sub-agent `<dir>`, or `mcp <server> (stdio|http)`.
    pub source: String,
    /// What the policies say when its arguments do not matter: allow, ask, deny or conditional.
    pub verdict: String,
    /// What its output is.
    pub labels: Vec<String>,
    /// Whether it sends data out.
    pub sink: Option<bool>,
    /// low, medium or high.
    pub risk: Option<String>,
    /// Whether repeating it is safe.
    pub idempotent: bool,
    /// Its arguments, summarised (`path: string, limit?: integer`).
    pub arguments: String,
    /// Its description.
    pub description: String,
    /// Whether the operator declared it (MCP tools without an entry get restrictive defaults).
    pub operator_manifest: bool,
    /// Whether its MCP definition changed since it was pinned (calls are refused).
    pub changed: bool,
}

/// An agent's tools, and what connecting to its MCP servers noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolsList {
    /// The tools.
    pub tools: Vec<ToolRow>,
    /// Notes from the MCP servers (a tool changed, a declared tool missing), for people.
    pub notes: Vec<String>,
    /// MCP tools whose definitions were pinned now (`--accept-changes`).
    pub pinned: usize,
}

/// What model calls cost on one day (UTC) for one model, agent and user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SpendRow {
    /// The day, `YYYY-MM-DD` (UTC).
    pub day: String,
    /// The model.
    pub model: String,
    /// The agent.
    pub agent: String,
    /// Who the runs acted for.
    pub user: String,
    /// What the calls cost, in US dollars.
    pub cost_usd: f64,
    /// Tokens in and out.
    pub tokens: u64,
    /// Model calls.
    pub calls: u64,
}

/// One budget line's spending in one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UsageRow {
    /// `run:<id>`, `agent:<name>`, `user:<name>` or `tenant:<name>`.
    pub key: String,
    /// `run`, `2026-11-23` or `2026-11`.
    pub period: String,
    /// Tokens spent.
    pub tokens: u64,
    /// Millionths of a dollar spent.
    pub cost_micros: u64,
    /// Model calls booked.
    pub calls: u64,
    /// Its token limit.
    pub max_tokens: Option<u64>,
    /// Its money limit.
    pub max_cost_micros: Option<u64>,
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditVerify {
    /// Whether everything holds.
    pub ok: bool,
    /// Records in the log.
    pub records: u64,
    /// Checkpoints, all valid.
    pub checkpoints: u64,
    /// Records after the last checkpoint.
    pub uncovered: u64,
    /// Keys that signed.
    pub keys: Vec<String>,
    /// Checkpoints held outside the log that were checked against it.
    pub held_checkpoints: usize,
    /// The first failure of the log itself, if any.
    pub failure: Option<String>,
    /// The trail against the event log.
    pub trail: TrailReport,
}

/// The audit trail against the event log.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TrailReport {
    /// Runs checked.
    pub runs: u64,
    /// Events checked.
    pub events: u64,
    /// Records filled in now that a crash had left out.
    pub filled: u64,
    /// Runs in progress (their last events may not be recorded yet).
    pub in_progress: Vec<String>,
    /// Runs recorded before records named their events (not checked event by event).
    pub legacy: Vec<String>,
    /// Events without a record, records without an event, and other mismatches.
    pub problems: Vec<String>,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    /// Its position, from 1.
    pub seq: u64,
    /// When it happened.
    pub at_ms: u64,
    /// Its kind.
    pub kind: String,
    /// Its run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The run's event it records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<u64>,
    /// Its facts.
    pub data: Value,
}

/// A signed checkpoint of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Checkpoint {
    /// Its position among checkpoints.
    pub seq: u64,
    /// Records it covers.
    pub tree_size: u64,
    /// Their Merkle root (hex).
    pub root: String,
    /// When it was signed.
    pub at_ms: u64,
    /// The signing key's id.
    pub key_id: String,
    /// SHA-256 of the previous checkpoint's line.
    pub prev: String,
    /// The Ed25519 signature (hex).
    pub signature: String,
}

/// An inclusion proof of one record, checkable offline (the file `audit proof` writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InclusionProof {
    /// The record's line, exactly as logged.
    pub record: String,
    /// The record's number.
    pub seq: u64,
    /// The audit path, leaf to root (hex).
    pub path: Vec<String>,
    /// The checkpoint it leads to.
    pub checkpoint: Checkpoint,
}

/// The audit log's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditKey {
    /// `ed25519:<hex>`.
    pub public_key: String,
    /// Its id.
    pub key_id: String,
    /// Where the signing key is.
    pub key_file: String,
}

mod audit_conversions {
    //! Between the audit crate's file formats and the wire.
    use super::*;

    impl From<rein_audit::Checkpoint> for Checkpoint {
        fn from(c: rein_audit::Checkpoint) -> Checkpoint {
            Checkpoint {
                seq: c.seq,
                tree_size: c.tree_size,
                root: c.root,
                at_ms: c.at_ms,
                key_id: c.key_id,
                prev: c.prev,
                signature: c.signature,
            }
        }
    }

    impl From<Checkpoint> for rein_audit::Checkpoint {
        fn from(c: Checkpoint) -> rein_audit::Checkpoint {
            rein_audit::Checkpoint {
                seq: c.seq,
                tree_size: c.tree_size,
                root: c.root,
                at_ms: c.at_ms,
                key_id: c.key_id,
                prev: c.prev,
                signature: c.signature,
            }
        }
    }

    impl From<rein_audit::InclusionProof> for InclusionProof {
        fn from(p: rein_audit::InclusionProof) -> InclusionProof {
            InclusionProof {
                record: p.record,
                seq: p.seq,
                path: p.path,
                checkpoint: p.checkpoint.into(),
            }
        }
    }

    impl From<InclusionProof> for rein_audit::InclusionProof {
        fn from(p: InclusionProof) -> rein_audit::InclusionProof {
            rein_audit::InclusionProof {
                record: p.record,
                seq: p.seq,
                path: p.path,
                checkpoint: p.checkpoint.into(),
            }
        }
    }

    impl From<rein_audit::Record> for AuditRecord {
        fn from(r: rein_audit::Record) -> AuditRecord {
            AuditRecord {
                seq: r.seq,
                at_ms: r.at_ms,
                kind: r.kind,
                run_id: r.run_id,
                event: r.event,
                data: r.data,
            }
        }
    }
}

/// Whose a gateway conversation is, at which gateway, and its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConversationKey {
    /// The tenant of its caller.
    pub tenant: String,
    /// The user its caller acts as.
    pub user: String,
    /// The gateway agent.
    pub agent: String,
    /// Its name: the client's (`x-rein-conversation`), or derived from its history.
    pub conversation: String,
}

/// A request to forget one of the caller's tenant's gateway conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetConversation {
    /// The user it belongs to.
    pub user: String,
    /// The gateway agent.
    pub agent: String,
    /// Its name.
    pub conversation: String,
}

/// A request to prune the caller's tenant's gateway conversations that no request has used for
/// a while and that hold no call for a person's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneConversations {
    /// Days no request has used or changed them (1 to 36500).
    #[schemars(range(min = 1, max = 36500))]
    pub unused_for_days: u32,
    /// Only this gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// What a prune forgot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pruned {
    /// How many conversations it forgot.
    pub pruned: u64,
}

/// A gateway conversation, as kept across its requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Conversation {
    /// Whose it is, where, and its name.
    #[serde(flatten)]
    pub key: ConversationKey,
    /// The labels its requests have seen, in the order first kept: every later request is
    /// judged with them.
    pub labels: Vec<String>,
    /// The runs held for a person's approval whose calls its next request receives, oldest
    /// first.
    pub held: Vec<String>,
    /// Held runs that could not be resumed, never held again.
    pub given_up: Vec<String>,
    /// When it last changed (ms since the epoch).
    pub updated_ms: u64,
    /// When a request last used it (ms since the epoch, to the hour): a prune forgets only
    /// those unused for its days.
    pub used_ms: u64,
}

/// An API token, as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Token {
    /// Its id.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// The user it acts as.
    pub user: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}
