//! The events that make up a run's append-only log.
//!
//! Events are a storage boundary: they are serialised as JSON and read back by later versions of
//! rein, so fields are only ever added with defaults, never renamed or removed, and
//! [`EVENT_FORMAT_VERSION`] changes if that rule ever has to be broken.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::end::EndState;
use crate::gate::Verdict;
use crate::grants::Grant;
use crate::message::{ToolCall, Usage};
use crate::state::Limits;

/// The version of the event encoding written by this build. The store writes it beside every
/// event and refuses to read a log holding an event of a newer version.
/// Version 2 added the gateway's events (`client_results`, `tool_handed_off`); an event of
/// another kind is still written as version 1, so older builds read every log that holds none.
pub const EVENT_FORMAT_VERSION: u32 = 2;

/// An event as stored: its position in the run's log and when it was appended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the run's log, starting at 1, without gaps.
    pub seq: u64,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
}

/// The facts a run starts from. Everything needed to rebuild the model's context is here or in
/// later events, so a run can be shown and resumed from its log alone. (`Default` is for tests
/// and fixtures that name only the fields they care about.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The id of the API token the run was started with (its budgets' `token` lines), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The agent's name.
    pub agent: String,
    /// The agent folder the run was started from, if it came from one.
    #[serde(default)]
    pub agent_dir: Option<String>,
    /// A digest of the agent's configuration, to notice a change between start and resume.
    pub agent_digest: String,
    /// The directory tools work in.
    pub workspace: String,
    /// The task, as the person gave it.
    pub task: String,
    /// The operator's instructions (the system prompt).
    pub instructions: String,
    /// The provider kind (`scripted`, `openai`, `anthropic`).
    pub provider: String,
    /// The model name.
    pub model: String,
    /// The limits the run is held to.
    pub limits: Limits,
    /// The tools the agent has.
    pub tools: Vec<String>,
    /// Who the run acts for.
    #[serde(default = "default_user")]
    pub user: String,
    /// The tenant the run belongs to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// For a sub-agent's run: the run and call that delegated to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Each tool's argument fields that the audit trail keeps only as keyed hashes, fixed when
    /// the run starts so that its audit records can be rebuilt from the log alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive: BTreeMap<String, Vec<String>>,
    /// Grants given by whoever started the run, fixed with it: once untrusted data is in the
    /// run, a call none of them covers is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
    /// The SHA-256 of each policy data file the run started with, by data set name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// The run and call a sub-agent's run was delegated from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent run.
    pub run_id: String,
    /// The delegating call.
    pub call_id: String,
}

fn default_user() -> String {
    "anonymous".into()
}

fn default_tenant() -> String {
    "default".into()
}

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run began. Always the first event.
    RunStarted(Box<RunStarted>),
    /// A process picked the run up again from its log.
    RunResumed {
        /// 2 for the first resume, 3 for the next, and so on.
        attempt: u32,
        /// Whether the agent's configuration changed since the run started.
        #[serde(default)]
        agent_changed: bool,
    },
    /// A model call is about to be made.
    ModelRequested {
        /// The step (model call) number, from 1.
        step: u32,
        /// Which try of this step's call this is, from 1.
        attempt: u32,
        /// The model name.
        model: String,
        /// How many messages the context holds (after the system instructions).
        messages: u32,
        /// How many tools were offered.
        tools: u32,
    },
    /// The model answered.
    ModelReplied {
        /// The step number.
        step: u32,
        /// What it said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The tool calls it asked for.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
        /// Tokens used.
        usage: Usage,
        /// How long the call took.
        latency_us: u64,
        /// The provider's stop reason, if it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_reason: Option<String>,
        /// The stop text it stopped at, where the provider said which.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_sequence: Option<String>,
        /// The model that answered (a fallback or a routed model may answer instead of the
        /// agent's primary model).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        model: String,
        /// What the call cost, in millionths of a US dollar.
        #[serde(default)]
        cost_micros: u64,
    },
    /// A model call failed.
    ModelFailed {
        /// The step number.
        step: u32,
        /// Which try failed.
        attempt: u32,
        /// What went wrong.
        error: String,
        /// Whether rein will try again.
        will_retry: bool,
        /// How long rein waits before it does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
    },
    /// A tool call was refused before anything ran: an unknown tool, arguments that are not JSON
    /// or do not match the tool's schema. The reason goes back to the model as the call's result.
    ToolRejected {
        /// The step number.
        step: u32,
        /// The call's id.
        call_id: String,
        /// The tool the model named.
        tool: String,
        /// Why it was refused.
        reason: String,
    },
    /// A tool is about to run. Durable before the tool starts.
    ToolIntent {
        /// The step number.
        step: u32,
        /// The call's id.
        call_id: String,
        /// The tool.
        tool: String,
        /// The validated arguments.
        args: Value,
        /// Whether the tool's manifest says repeating it is safe.
        idempotent: bool,
        /// 1 for the first execution; higher when an idempotent call in doubt is repeated.
        attempt: u32,
        /// What the tool's output is (its manifest's labels); they join the run's labels.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        /// Labels of parts of the output, by JSON pointer pattern (`/items/*/memo`), from the
        /// manifest: the values there carry them, the rest does not.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        field_labels: BTreeMap<String, Vec<String>>,
        /// The policy data set the output feeds (`context.data.<name>`), for a tool the
        /// operator trusts to say what is allowed (saved payees, the org's domains).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    /// The gate judged a proposed tool call. Recorded before anything else happens to the call.
    ToolJudged {
        /// The step number.
        step: u32,
        /// The call's id.
        call_id: String,
        /// The tool.
        tool: String,
        /// Allow, deny or ask.
        verdict: Verdict,
        /// The policies that decided it.
        policies: Vec<String>,
        /// Why.
        reasons: Vec<String>,
        /// The run's labels the decision saw.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        /// Who approved the call, when this judgement follows an approval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approved_by: Option<String>,
        /// Where each argument's values came from (`task`, `operator`, `tool:<name>`, labels,
        /// `model`), as the policies saw it.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        provenance: BTreeMap<String, Vec<String>>,
    },
    /// A call needs a person's approval; the run will suspend once the step's other calls are done.
    ApprovalRequested {
        /// The approval's id.
        approval_id: String,
        /// The call's id.
        call_id: String,
        /// The tool.
        tool: String,
        /// The arguments the call will run with, exactly.
        args: Value,
        /// The policies that asked.
        policies: Vec<String>,
        /// Their reasons.
        reasons: Vec<String>,
        /// The run's labels at the time.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        labels: Vec<String>,
        /// When an undecided request counts as denied (ms since the epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
        /// Where each argument's values came from.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        provenance: BTreeMap<String, Vec<String>>,
    },
    /// A person decided an approval, or it expired.
    ApprovalDecided {
        /// The approval's id.
        approval_id: String,
        /// Whether the call may go ahead.
        approved: bool,
        /// Who decided (`rein` for an expiry).
        by: String,
        /// Their note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// Whether this is an expiry rather than a person's decision.
        #[serde(default)]
        expired: bool,
    },
    /// The run stopped to wait for approvals; the process may exit.
    RunSuspended {
        /// The approvals it waits for.
        approvals: Vec<String>,
    },
    /// The gate judged a model call.
    ModelJudged {
        /// The step number.
        step: u32,
        /// The model.
        model: String,
        /// Allow or deny (ask is treated as deny for models).
        verdict: Verdict,
        /// The policies that decided it.
        policies: Vec<String>,
        /// Why.
        reasons: Vec<String>,
    },
    /// A tool finished (or failed, or timed out).
    ToolOutcome {
        /// The call's id.
        call_id: String,
        /// Whether it succeeded.
        ok: bool,
        /// Its result, or `{"error": "..."}`.
        output: Value,
        /// How long it ran.
        duration_us: u64,
        /// Labels the tool gave parts of its own output, by JSON pointer pattern (they can
        /// only add to what the manifest says).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, Vec<String>>,
    },
    /// A tool call that is not idempotent stopped without a known outcome (it timed out, its
    /// process was killed, its server went away mid-call): its effect may have happened. The
    /// call stays in doubt and the run ends `needs_reconciliation`, naming it.
    ToolInDoubt {
        /// The call.
        call_id: String,
        /// Why its outcome is unknown.
        reason: String,
        /// How long it ran.
        duration_us: u64,
    },
    /// A person settled a call that was in doubt after a crash (`needs_reconciliation`): its
    /// effect happened (with this output) or did not (so it is judged and run again). Reopens
    /// the run, which `rein runs resume` then continues.
    CallReconciled {
        /// The call.
        call_id: String,
        /// Whether its effect happened.
        happened: bool,
        /// What the tool would have returned, when it happened.
        #[serde(default)]
        output: Value,
        /// Who settled it.
        by: String,
        /// Their note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// What the run may do, fixed before it reads untrusted data: by whoever started it, or by a
    /// planning model call that saw only the instructions and the task. Once untrusted data is
    /// in the run, a call no grant covers is denied.
    GrantsFixed {
        /// The grants.
        grants: Vec<Grant>,
        /// `caller` or `planner`.
        by: String,
        /// The planning model, when a planner fixed them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// What the planning call used.
        #[serde(default)]
        usage: Usage,
        /// What it cost, in millionths of a US dollar.
        #[serde(default)]
        cost_micros: u64,
    },
    /// The gate judged text the run returns to the user (its answer, or the output of a run that
    /// ends otherwise), as the `respond` action: allow, deny (withheld) or ask (held for a
    /// person). Links and images stripped before judging are named.
    AnswerJudged {
        /// The step whose text it is.
        step: u32,
        /// The verdict.
        verdict: Verdict,
        /// The deciding policies.
        policies: Vec<String>,
        /// Why.
        reasons: Vec<String>,
        /// The text as it would be returned (links stripped), when it is not withheld.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        /// The links and images stripped from it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stripped: Vec<String>,
        /// Who approved it, when this judgement follows an approval.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approved_by: Option<String>,
    },
    /// Something worth knowing that does not change the run's state: an MCP server exited or
    /// restarted, a tool's definition changed, a circuit breaker opened, a latency target was
    /// missed, a soft budget limit was passed.
    Notice {
        /// What happened, in snake_case (`mcp_server_restarted`, `breaker_opened`, ...).
        kind: String,
        /// What it is about: a tool, a server, a model.
        subject: String,
        /// For people.
        detail: String,
        /// The call it happened during, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    },
    /// A gateway's client sent back the results of tool calls it ran (calls this or an earlier
    /// run of the conversation handed to it): their values join the run's sources, each with
    /// the labels of its tool's manifest, so later judgements see where data came from.
    ClientResults {
        /// The results, in the order the client sent them.
        results: Vec<ClientResult>,
        /// Labels earlier requests of the conversation saw, carried into this one whether or
        /// not the client still sends what brought them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carried: Vec<String>,
    },
    /// A call the gateway's client runs itself was handed to it (its intent recorded first).
    /// Its result arrives, if at all, with a later request of the conversation.
    ToolHandedOff {
        /// The call.
        call_id: String,
    },
    /// The run ended. Always the last event.
    RunEnded {
        /// How.
        status: EndState,
        /// The final (or partial) output.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// Why, when it did not complete.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The tool call in doubt, for `needs_reconciliation`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
    },
}

impl Event {
    /// The snake_case name of the event's type, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunStarted(_) => "run_started",
            Event::RunResumed { .. } => "run_resumed",
            Event::ModelRequested { .. } => "model_requested",
            Event::ModelReplied { .. } => "model_replied",
            Event::ModelFailed { .. } => "model_failed",
            Event::ToolRejected { .. } => "tool_rejected",
            Event::ToolIntent { .. } => "tool_intent",
            Event::ToolOutcome { .. } => "tool_outcome",
            Event::ToolInDoubt { .. } => "tool_in_doubt",
            Event::ToolJudged { .. } => "tool_judged",
            Event::ApprovalRequested { .. } => "approval_requested",
            Event::ApprovalDecided { .. } => "approval_decided",
            Event::RunSuspended { .. } => "run_suspended",
            Event::ModelJudged { .. } => "model_judged",
            Event::CallReconciled { .. } => "call_reconciled",
            Event::Notice { .. } => "notice",
            Event::GrantsFixed { .. } => "grants_fixed",
            Event::AnswerJudged { .. } => "answer_judged",
            Event::RunEnded { .. } => "run_ended",
            Event::ClientResults { .. } => "client_results",
            Event::ToolHandedOff { .. } => "tool_handed_off",
        }
    }

    /// The encoding version this event needs a reader to understand: 2 for the kinds version 2
    /// added, 1 for the rest (see [`EVENT_FORMAT_VERSION`]).
    pub fn format_version(&self) -> u32 {
        match self {
            Event::ClientResults { .. } | Event::ToolHandedOff { .. } => 2,
            _ => 1,
        }
    }
}

/// One tool result a gateway's client sent back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientResult {
    /// The call it answers, as the client named it.
    pub call_id: String,
    /// The tool, as the conversation named it.
    pub tool: String,
    /// Its manifest's labels (the most restrictive defaults for a tool the operator does not
    /// know).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What the client said the tool returned.
    pub output: Value,
}
