//! Runs and their events on the wire (version 1): end states, verdicts, tool calls and every
//! event of a run's log, with explicit conversions from the core's types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndState {
    /// The model gave its final answer.
    Completed,
    /// The run could not go on, and nothing it did completed.
    Failed,
    /// A budget or limit was reached.
    BudgetExhausted,
    /// A call that is not idempotent may or may not have had its effect: a person settles it.
    NeedsReconciliation,
    /// Suspended until its approval requests are decided (not an end).
    AwaitingApproval,
    /// The policies refused what the run needs to go on.
    Denied,
    /// The run could not go on, but some of its calls completed.
    Partial,
    /// Cancelled by a person or a program.
    Cancelled,
}

impl EndState {
    /// The process exit code `rein run` and `rein runs resume` use for this state.
    pub fn exit_code(self) -> u8 {
        match self {
            EndState::Completed => 0,
            EndState::Failed => 10,
            EndState::BudgetExhausted => 11,
            EndState::NeedsReconciliation => 12,
            EndState::AwaitingApproval => 13,
            EndState::Denied => 14,
            EndState::Partial => 15,
            EndState::Cancelled => 16,
        }
    }

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndState::Completed => "completed",
            EndState::Failed => "failed",
            EndState::BudgetExhausted => "budget_exhausted",
            EndState::NeedsReconciliation => "needs_reconciliation",
            EndState::AwaitingApproval => "awaiting_approval",
            EndState::Denied => "denied",
            EndState::Partial => "partial",
            EndState::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for EndState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a run stands: an end state, or not ended yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// A live process is driving it now.
    Running,
    /// Nobody drives it and it has not ended: its process stopped (resume it).
    Interrupted,
    /// Ended, or suspended for approval.
    #[serde(untagged)]
    Ended(EndState),
}

impl RunStatus {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Ended(s) => s.as_str(),
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Allow, deny or ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It may happen.
    Allow,
    /// It must not happen.
    Deny,
    /// A person must approve it first.
    Ask,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ask => "ask",
        })
    }
}

/// Tokens used.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// Hard limits a run is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Limits {
    /// The most model calls.
    pub max_steps: u32,
    /// The most active time, in milliseconds.
    pub wall_clock_ms: u64,
}

/// A tool call a model proposed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolCall {
    /// rein's id for the call.
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments (or the text the model sent, when it was not JSON).
    pub arguments: Value,
    /// Why the arguments were refused before judging, when they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_arguments: Option<String>,
}

/// The facts a run starts from. Everything needed to rebuild the model's context is here or in
/// later events, so a run can be shown and resumed from its log alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunStarted {
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
    pub user: String,
    /// The tenant the run belongs to.
    pub tenant: String,
    /// For a sub-agent's run: the run and call that delegated to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Each tool's argument fields that the audit trail keeps only as keyed hashes, fixed when
    /// the run starts so that its audit records can be rebuilt from the log alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensitive: BTreeMap<String, Vec<String>>,
    /// Grants given by whoever started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
    /// The SHA-256 of each policy data file the run started with, by data set name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// What a run may do once untrusted data is in it: a tool, constraints on some of its
/// arguments (a value, or a rule: `{"one_of": [..]}`, `{"max": n}`, `{"min": n}`,
/// `{"prefix": ".."}`, `{"any": true}`), and at most how many calls it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Grant {
    /// The tool.
    pub tool: String,
    /// Constraints on arguments, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Value>,
    /// How many calls it covers at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
}

/// The run and call a sub-agent's run was delegated from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ParentRef {
    /// The parent run.
    pub run_id: String,
    /// The delegating call.
    pub call_id: String,
}

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run began. Always the first event.
    RunStarted(RunStarted),
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
        /// Labels of parts of the output, by JSON pointer pattern.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        field_labels: BTreeMap<String, Vec<String>>,
        /// The policy data set the output feeds.
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
        /// Labels the tool gave parts of its own output, by JSON pointer pattern.
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
    /// What the run may do, fixed before it reads untrusted data by a planning model call
    /// that saw only the instructions and the task.
    GrantsFixed {
        /// The grants.
        grants: Vec<Grant>,
        /// `caller` or `planner`.
        by: String,
        /// The planning model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// What the planning call used.
        #[serde(default)]
        usage: Usage,
        /// What it cost, in millionths of a US dollar.
        #[serde(default)]
        cost_micros: u64,
    },
    /// The gate judged text the run returns (its answer, or the output of a run that ends
    /// otherwise), as the `respond` action.
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
    /// A gateway's client sent back the results of tool calls it ran; each joins the run's
    /// sources with its tool's labels.
    ClientResults {
        /// The results, in the order the client sent them.
        results: Vec<ClientResult>,
        /// Labels earlier requests of the conversation saw, carried into this one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        carried: Vec<String>,
    },
    /// A call a gateway's client runs itself was handed to it (its intent recorded first).
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

/// An event with its place in the run's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventRecord {
    /// Its position, from 1.
    pub seq: u64,
    /// When it was recorded (ms since the epoch).
    pub at_ms: u64,
    /// What happened.
    pub event: Event,
}

mod from_core;

/// One tool result a gateway's client sent back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClientResult {
    /// The call it answers, as the client named it.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// Its manifest's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// What the client said the tool returned.
    pub output: Value,
}
