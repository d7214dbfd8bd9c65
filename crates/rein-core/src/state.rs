//! The run state machine: a run's state is a fold over its events, and the next thing to do is a
//! pure function of that state.
//!
//! The engine never keeps run state of its own. After every event it appends, it applies the same
//! event here; after a crash it folds the stored log and asks [`RunState::next_action`] what to do,
//! which is how a resumed run continues exactly where the dead process stopped.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::collections::{BTreeMap, BTreeSet};

use crate::end::EndState;
use crate::event::{RunStarted, StoredEvent};

use crate::grants::Grant;
use crate::labels::LabelSet;
use crate::message::{Message, ToolCall, Usage};
use crate::provenance::Sources;

mod answer;
mod fold;
pub use answer::{AnswerSlot, AnswerStatus};

/// Hard limits a run is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The most model calls (steps) a run may make.
    pub max_steps: u32,
    /// The most time a run may be active, summed over the processes that drove it.
    pub wall_clock_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 20,
            wall_clock_ms: 600_000,
        }
    }
}

/// How a tool call went, for the run's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallResult {
    /// It ran and succeeded.
    Done,
    /// It ran and failed.
    Failed,
    /// The policies denied it.
    Denied,
    /// It was refused before judging (unknown tool, bad arguments, breaker open, budget).
    Rejected,
    /// It was handed to a gateway's client, which runs it.
    HandedOff,
}

/// Where one tool call of the current step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// Proposed by the model; nothing recorded about it yet.
    Proposed,
    /// Refused before anything ran (by the registry, the gate or a person).
    Rejected,
    /// Waiting for a person to approve it.
    AwaitingApproval,
    /// Approved by a person; not yet run.
    Approved,
    /// Its intent is recorded but not its outcome: running now, or in doubt after a crash.
    InFlight {
        /// Which execution of the call the intent is for.
        attempt: u32,
        /// Whether repeating it is safe.
        idempotent: bool,
    },
    /// Its outcome is recorded.
    Done,
}

/// One tool call of the current step and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSlot {
    /// The call as the model proposed it.
    pub call: ToolCall,
    /// Where it stands.
    pub status: CallStatus,
    /// The output labels its intent recorded.
    pub labels: Vec<String>,
    /// Its approval request, if the gate asked.
    pub approval: Option<ApprovalSlot>,
    /// Why its outcome is unknown, when it stopped without one (`tool_in_doubt`).
    pub doubt: Option<String>,
    /// Labels of parts of its output, by pointer pattern, as its intent recorded.
    pub field_labels: BTreeMap<String, Vec<String>>,
    /// The policy data set its output feeds, as its intent recorded.
    pub data: Option<String>,
    /// Whether it was handed to a gateway's client to run (its status is then `Done`).
    pub handed_off: bool,
    /// The turn (1 until the run is first resumed from a suspension, 2 after) that handed it
    /// over, if one did: what tells the calls a resume handed from those handed before it.
    pub handed_in: Option<u32>,
}

/// What a tool has done in a run so far, for policies that limit it (`context.counters`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counter {
    /// Calls started (and calls waiting for or holding an approval).
    pub calls: u32,
    /// The sums of its numeric arguments over those calls, by argument.
    pub sums: BTreeMap<String, f64>,
}

/// A call's approval request and its decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSlot {
    /// The approval's id.
    pub id: String,
    /// When it expires.
    pub expires_at_ms: Option<u64>,
    /// Who approved it, once approved.
    pub approved_by: Option<String>,
}

/// How a run ended, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    /// The end state.
    pub status: EndState,
    /// The final or partial output.
    pub output: Option<String>,
    /// Why, when it did not complete.
    pub reason: Option<String>,
    /// The call in doubt, for `needs_reconciliation`.
    pub call_id: Option<String>,
}

/// What the engine should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Judge the text the model answered with (the `respond` action).
    JudgeAnswer {
        /// The step.
        step: u32,
        /// The text.
        text: Option<String>,
    },
    /// The policies asked for a person to look at the answer: request the approval.
    HoldAnswer {
        /// The step.
        step: u32,
        /// The text as judged.
        text: Option<String>,
    },
    /// A person approved the held answer: judge it again knowing who, then return it.
    ReleaseAnswer {
        /// The step.
        step: u32,
        /// The text.
        text: Option<String>,
        /// Who approved it.
        approved_by: String,
    },
    /// Ask the model for the given step.
    CallModel {
        /// The step number, from 1.
        step: u32,
    },
    /// Validate this proposed call and, if it passes, record its intent and run it.
    Dispatch {
        /// The call.
        call: ToolCall,
    },
    /// A person approved this call: judge it again with the approval and, if still allowed, run it.
    ExecuteApproved {
        /// The call.
        call: ToolCall,
        /// Who approved it.
        approved_by: String,
    },
    /// An approval request has expired: record it as denied.
    Expire {
        /// The approval's id.
        approval_id: String,
    },
    /// Calls wait for approval: suspend the run.
    Suspend {
        /// The approvals waited for.
        approvals: Vec<String>,
    },
    /// The run is suspended; nothing to do until approvals are decided and it is resumed.
    Suspended,
    /// An idempotent call was in flight when a process stopped: run it again.
    Reexecute {
        /// The call.
        call: ToolCall,
        /// The attempt number for the new intent.
        attempt: u32,
    },
    /// End the run in this state.
    End(Ended),
    /// The run has already ended.
    Finished(EndState),
}

/// A log that cannot be a run's: events out of order, missing or contradicting each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {seq} ({kind}): {problem}")]
pub struct StateError {
    /// The offending event's position.
    pub seq: u64,
    /// Its type.
    pub kind: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// The state of one run, folded from its events.
#[derive(Debug, Clone, Default)]
pub struct RunState {
    started: Option<RunStarted>,
    attempt: u32,
    /// 1 from the start, one more at each resume from a suspension (a crash's pick-up is not a
    /// new turn): what a person's decisions let the run do next.
    turn: u32,
    messages: Vec<Message>,
    steps: u32,
    requested_step: Option<u32>,
    calls: Vec<CallSlot>,
    last_text: Option<String>,
    last_reply_had_calls: bool,
    /// The model's last reply stopped at its cap on the answer (`length`, `max_tokens`).
    last_reply_cut: bool,
    /// The stop text the model's last reply stopped at, where its provider said which.
    last_stop_sequence: Option<String>,
    ended: Option<Ended>,
    suspended: bool,
    labels: LabelSet,
    /// The labels a gateway request brought in (carried from its conversation, and its client's
    /// tool results'), as against those the run gained itself.
    brought: LabelSet,
    usage: Usage,
    cost_micros: u64,
    /// Every tool call that got an answer, in order: (tool, how it went).
    history: Vec<(String, CallResult)>,
    /// Every value the run has seen, with where it came from.
    sources: Sources,
    /// What each tool has done so far.
    counters: BTreeMap<String, Counter>,
    /// The grants fixed for the run, if any were.
    grants: Option<Vec<Grant>>,
    /// Policy data sets fed by trusted tools' outputs, by name.
    data: BTreeMap<String, BTreeSet<String>>,
    /// The model's final answer and where its judging stands.
    answer: Option<AnswerSlot>,
    tool_executions: u32,
    last_seq: u64,
    first_at_ms: u64,
    attempt_started_ms: u64,
    last_at_ms: u64,
    active_closed_ms: u64,
}

impl RunState {
    /// Folds a whole log.
    pub fn from_events<'a>(
        events: impl IntoIterator<Item = &'a StoredEvent>,
    ) -> Result<RunState, StateError> {
        let mut state = RunState::default();
        for ev in events {
            state.apply(ev)?;
        }
        Ok(state)
    }

    /// What to do next, given the time now (for the wall-clock limit).
    pub fn next_action(&self, now_ms: u64) -> Action {
        if let Some(ended) = &self.ended {
            return Action::Finished(ended.status);
        }
        if self.suspended {
            return Action::Suspended;
        }
        let limits = self.limits();
        let mut waiting = Vec::new();
        for slot in &self.calls {
            match slot.status {
                CallStatus::Proposed => {
                    return Action::Dispatch {
                        call: slot.call.clone(),
                    };
                }
                CallStatus::Approved => {
                    let approved_by = slot
                        .approval
                        .as_ref()
                        .and_then(|a| a.approved_by.clone())
                        .unwrap_or_default();
                    return Action::ExecuteApproved {
                        call: slot.call.clone(),
                        approved_by,
                    };
                }
                CallStatus::AwaitingApproval => {
                    if let Some(approval) = &slot.approval {
                        if approval.expires_at_ms.is_some_and(|at| now_ms >= at) {
                            return Action::Expire {
                                approval_id: approval.id.clone(),
                            };
                        }
                        waiting.push(approval.id.clone());
                    }
                }
                CallStatus::InFlight {
                    attempt,
                    idempotent: true,
                } => {
                    return Action::Reexecute {
                        call: slot.call.clone(),
                        attempt: attempt + 1,
                    };
                }
                CallStatus::InFlight { .. } => {
                    let what = match &slot.doubt {
                        Some(doubt) => format!("stopped without a known outcome ({doubt})"),
                        None => "started but its outcome was not recorded before the process \
                                 stopped"
                            .to_owned(),
                    };
                    return Action::End(Ended {
                        status: EndState::NeedsReconciliation,
                        output: self.last_text.clone(),
                        reason: Some(format!(
                            "tool call {} ({}) {what}; the tool is not idempotent, so rein will \
                             not run it again. Check whether its effect happened.",
                            slot.call.id, slot.call.name
                        )),
                        call_id: Some(slot.call.id.clone()),
                    });
                }
                CallStatus::Rejected | CallStatus::Done => {}
            }
        }
        if let Some(answer) = self
            .answer
            .as_ref()
            .filter(|_| self.requested_step.is_none())
        {
            match answer.next_action(now_ms) {
                answer::Next::Action(action) => return action,
                answer::Next::Wait(id) => waiting.push(id),
            }
        }
        if !waiting.is_empty() {
            return Action::Suspend { approvals: waiting };
        }
        if self.steps > 0 && !self.last_reply_had_calls && self.requested_step.is_none() {
            // A reply without calls and without an answer slot (a log from before answers
            // were judged): it completes as it did then.
            return Action::End(Ended {
                status: EndState::Completed,
                output: self.last_text.clone(),
                reason: None,
                call_id: None,
            });
        }
        if self.steps >= limits.max_steps {
            return Action::End(Ended {
                status: EndState::BudgetExhausted,
                output: self.last_text.clone(),
                reason: Some(format!(
                    "reached max_steps ({}) before the model gave a final answer",
                    limits.max_steps
                )),
                call_id: None,
            });
        }
        if self.active_ms(now_ms) >= limits.wall_clock_ms {
            return Action::End(Ended {
                status: EndState::BudgetExhausted,
                output: self.last_text.clone(),
                reason: Some(format!(
                    "reached the wall-clock limit ({} ms) before the model gave a final answer",
                    limits.wall_clock_ms
                )),
                call_id: None,
            });
        }
        Action::CallModel {
            step: self.steps + 1,
        }
    }

    /// Milliseconds the run has been active, summed over the processes that drove it; the current
    /// process counts up to `now_ms`.
    pub fn active_ms(&self, now_ms: u64) -> u64 {
        let current = if self.ended.is_some() {
            self.last_at_ms.saturating_sub(self.attempt_started_ms)
        } else {
            now_ms.saturating_sub(self.attempt_started_ms)
        };
        self.active_closed_ms + current
    }

    /// The run's start facts, once it has started.
    pub fn started(&self) -> Option<&RunStarted> {
        self.started.as_ref()
    }
    /// The limits in force (defaults before the run starts).
    pub fn limits(&self) -> Limits {
        self.started.as_ref().map(|s| s.limits).unwrap_or_default()
    }
    /// The conversation after the system instructions, as the model will see it.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }
    /// Model replies received.
    pub fn steps(&self) -> u32 {
        self.steps
    }
    /// Tool executions started (intents recorded).
    pub fn tool_executions(&self) -> u32 {
        self.tool_executions
    }
    /// Every tool call that got an answer so far, in order, and how it went.
    pub fn history(&self) -> &[(String, CallResult)] {
        &self.history
    }

    /// Money spent on model calls so far, in millionths of a US dollar.
    pub fn cost_micros(&self) -> u64 {
        self.cost_micros
    }

    /// Tokens used so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }
    /// How the run ended, if it has.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }
    /// The process attempt (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The turn: 1 from the start, one more at each resume from a suspension. A process that
    /// picks up a run a crash interrupted starts a new attempt, not a new turn.
    pub fn turn(&self) -> u32 {
        self.turn
    }
    /// The calls of the current step this turn handed to a gateway's client: a resume's
    /// (whichever attempt carried it out, after a crash), not those an earlier turn of the run
    /// handed to the request it answered then.
    pub fn handed_this_turn(&self) -> impl Iterator<Item = &CallSlot> {
        self.calls.iter().filter(|c| c.handed_in == Some(self.turn))
    }
    /// The position of the last event applied.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }
    /// When the run started, in ms since the epoch.
    pub fn started_at_ms(&self) -> u64 {
        self.first_at_ms
    }
    /// When the last event was appended.
    pub fn last_at_ms(&self) -> u64 {
        self.last_at_ms
    }
    /// The current step's tool calls.
    pub fn calls(&self) -> &[CallSlot] {
        &self.calls
    }
    /// The labels in play: the union of the output labels of every call whose output the model saw.
    pub fn labels(&self) -> &LabelSet {
        &self.labels
    }
    /// The labels a gateway request brought in with it: those its conversation carried, and
    /// those of the tool results its client sent. The rest of [`RunState::labels`] the run
    /// gained itself.
    pub fn brought_labels(&self) -> &LabelSet {
        &self.brought
    }
    /// Whether the run is suspended waiting for approvals.
    pub fn is_suspended(&self) -> bool {
        self.suspended
    }
    /// The approvals of the current step (or of its answer) that are still undecided.
    pub fn pending_approvals(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.status == CallStatus::AwaitingApproval)
            .filter_map(|c| c.approval.as_ref().map(|a| a.id.clone()))
            .chain(self.answer.as_ref().and_then(AnswerSlot::pending_approval))
            .collect()
    }

    /// Every value the run has seen, with where it came from (for provenance).
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// What `tool` has done so far: calls started, and calls waiting for or holding an
    /// approval (except `except`, the call being judged), with the sums of their numeric
    /// arguments.
    pub fn counter(&self, tool: &str, except: &str) -> Counter {
        let mut counter = self.counters.get(tool).cloned().unwrap_or_default();
        for slot in &self.calls {
            if slot.call.name == tool
                && slot.call.id != except
                && matches!(
                    slot.status,
                    CallStatus::AwaitingApproval | CallStatus::Approved
                )
            {
                counter.add(&slot.call.arguments);
            }
        }
        counter
    }

    /// Calls started in the run, all tools together.
    pub fn calls_started(&self) -> u32 {
        self.counters.values().map(|c| c.calls).sum()
    }

    /// The grants fixed for the run, if any were.
    pub fn grants(&self) -> Option<&[Grant]> {
        self.grants.as_deref()
    }

    /// Policy data sets fed by trusted tools' outputs so far.
    pub fn data(&self) -> &BTreeMap<String, BTreeSet<String>> {
        &self.data
    }

    /// The model's final answer and where its judging stands.
    pub fn answer(&self) -> Option<&AnswerSlot> {
        self.answer.as_ref()
    }
    /// The most recent text the model produced.
    pub fn last_text(&self) -> Option<&str> {
        self.last_text.as_deref()
    }

    /// Whether the model's last reply stopped at its cap on the answer, as its provider said
    /// (`length` from Chat Completions, `max_tokens` from the Messages API): its text is cut.
    pub fn last_reply_cut(&self) -> bool {
        self.last_reply_cut
    }

    /// The stop text (one the request gave) the model's last reply stopped at, where its provider
    /// said which (Anthropic's `stop_sequence`).
    pub fn last_stop_sequence(&self) -> Option<&str> {
        self.last_stop_sequence.as_deref()
    }
}

impl Counter {
    /// Counts one more call with these arguments.
    pub fn add(&mut self, args: &Value) {
        self.calls += 1;
        if let Value::Object(map) = args {
            for (name, value) in map {
                if let Some(n) = value.as_f64() {
                    *self.sums.entry(name.clone()).or_default() += n;
                }
            }
        }
    }
}

/// How a tool's outcome reads in the model's context.
pub fn render_output(ok: bool, output: &Value) -> String {
    if let (false, Some(msg)) = (ok, output.get("error").and_then(Value::as_str)) {
        return format!("error: {msg}");
    }
    match output {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
