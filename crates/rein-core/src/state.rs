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
use crate::event::{Event, RunStarted, StoredEvent};
use crate::gate::Verdict;
use crate::grants::Grant;
use crate::labels::{LabelSet, UNTRUSTED, mark_untrusted};
use crate::message::{Message, ToolCall, Usage};
use crate::provenance::{self, Sources};

mod answer;
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
    messages: Vec<Message>,
    steps: u32,
    requested_step: Option<u32>,
    calls: Vec<CallSlot>,
    last_text: Option<String>,
    last_reply_had_calls: bool,
    ended: Option<Ended>,
    suspended: bool,
    labels: LabelSet,
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

    /// Applies one event, checking that it can follow the ones before it.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<(), StateError> {
        let kind = stored.event.kind();
        let fail = |problem: String| StateError {
            seq: stored.seq,
            kind,
            problem,
        };
        if stored.seq != self.last_seq + 1 {
            return Err(fail(format!(
                "expected event {}, the log has a gap or a repeat",
                self.last_seq + 1
            )));
        }
        let reconciling = matches!(&stored.event, Event::CallReconciled { call_id, .. }
            if self.ended.as_ref().is_some_and(|e| e.status == EndState::NeedsReconciliation && e.call_id.as_ref() == Some(call_id)));
        if self.ended.is_some() && !reconciling {
            return Err(fail("the run had already ended".into()));
        }
        if self.started.is_none() && !matches!(stored.event, Event::RunStarted(_)) {
            return Err(fail("a run's log must begin with run_started".into()));
        }
        match &stored.event {
            Event::RunStarted(started) => {
                if self.started.is_some() {
                    return Err(fail("the run has already started".into()));
                }
                self.messages.push(Message::User {
                    text: started.task.clone(),
                });
                self.sources.add_text(&started.task, &[provenance::TASK]);
                self.sources
                    .add_text(&started.instructions, &[provenance::OPERATOR]);
                self.grants = started.grants.clone();
                self.started = Some((**started).clone());
                self.attempt = 1;
                self.first_at_ms = stored.at_ms;
                self.attempt_started_ms = stored.at_ms;
            }
            Event::RunResumed { attempt, .. } => {
                if *attempt != self.attempt + 1 {
                    return Err(fail(format!("expected attempt {}", self.attempt + 1)));
                }
                self.active_closed_ms += self.last_at_ms.saturating_sub(self.attempt_started_ms);
                self.attempt_started_ms = stored.at_ms;
                self.attempt = *attempt;
                self.suspended = false;
            }
            Event::ModelRequested { step, .. } => {
                if *step != self.steps + 1 {
                    return Err(fail(format!("expected step {}", self.steps + 1)));
                }
                if self
                    .calls
                    .iter()
                    .any(|c| !matches!(c.status, CallStatus::Done | CallStatus::Rejected))
                {
                    return Err(fail(
                        "tool calls of the previous step are unfinished".into(),
                    ));
                }
                self.requested_step = Some(*step);
            }
            Event::ModelFailed { step, .. } => {
                if self.requested_step != Some(*step) {
                    return Err(fail(format!("step {step} was not requested")));
                }
            }
            Event::ModelReplied {
                step,
                text,
                tool_calls,
                usage,
                cost_micros,
                ..
            } => {
                self.cost_micros = self.cost_micros.saturating_add(*cost_micros);
                if self.requested_step != Some(*step) {
                    return Err(fail(format!("step {step} was not requested")));
                }
                self.requested_step = None;
                self.steps = *step;
                self.usage = self.usage.plus(*usage);
                if text.is_some() {
                    self.last_text = text.clone();
                }
                self.last_reply_had_calls = !tool_calls.is_empty();
                self.answer = tool_calls
                    .is_empty()
                    .then(|| AnswerSlot::new(*step, text.clone()));
                self.calls = tool_calls
                    .iter()
                    .map(|c| CallSlot {
                        call: c.clone(),
                        status: CallStatus::Proposed,
                        labels: vec![],
                        approval: None,
                        doubt: None,
                        field_labels: BTreeMap::new(),
                        data: None,
                        handed_off: false,
                    })
                    .collect();
                self.messages.push(Message::Assistant {
                    text: text.clone(),
                    tool_calls: tool_calls.clone(),
                });
            }
            Event::ToolRejected {
                call_id, reason, ..
            } => {
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                if slot.status != CallStatus::Proposed {
                    return Err(fail(format!("call {call_id} was already handled")));
                }
                slot.status = CallStatus::Rejected;
                let name = slot.call.name.clone();
                self.history.push((name.clone(), CallResult::Rejected));
                self.messages.push(Message::Tool {
                    call_id: call_id.clone(),
                    name,
                    content: format!("error: {reason}"),
                    is_error: true,
                });
            }
            Event::ToolJudged {
                call_id,
                verdict,
                policies,
                reasons,
                ..
            } => {
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                if !matches!(slot.status, CallStatus::Proposed | CallStatus::Approved) {
                    return Err(fail(format!("call {call_id} was already handled")));
                }
                if *verdict == Verdict::Deny {
                    slot.status = CallStatus::Rejected;
                    let name = slot.call.name.clone();
                    self.history.push((name.clone(), CallResult::Denied));
                    let by = if policies.is_empty() {
                        String::new()
                    } else {
                        format!(" (policy {})", policies.join(", "))
                    };
                    self.messages.push(Message::Tool {
                        call_id: call_id.clone(),
                        name,
                        content: format!(
                            "error: denied by rein's policies{by}: {}",
                            reasons.join("; ")
                        ),
                        is_error: true,
                    });
                }
            }
            Event::ApprovalRequested {
                approval_id,
                call_id,
                expires_at_ms,
                ..
            } => {
                let approval = ApprovalSlot {
                    id: approval_id.clone(),
                    expires_at_ms: *expires_at_ms,
                    approved_by: None,
                };
                if self
                    .answer
                    .as_ref()
                    .is_some_and(|a| a.call_id() == *call_id)
                {
                    self.hold_answer(approval).map_err(fail)?;
                } else {
                    let slot = self
                        .slot_mut(call_id)
                        .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                    if slot.status != CallStatus::Proposed {
                        return Err(fail(format!("call {call_id} was already handled")));
                    }
                    slot.status = CallStatus::AwaitingApproval;
                    slot.approval = Some(approval);
                }
            }
            Event::ApprovalDecided {
                approval_id,
                approved,
                by,
                note,
                expired,
            } if self
                .answer
                .as_ref()
                .is_some_and(|a| a.approval_id() == Some(approval_id)) =>
            {
                self.decide_answer(*approved, by, note.as_deref(), *expired)
                    .map_err(fail)?;
            }
            Event::ApprovalDecided {
                approval_id,
                approved,
                by,
                note,
                expired,
            } => {
                let slot = self
                    .calls
                    .iter_mut()
                    .find(|s| s.approval.as_ref().is_some_and(|a| &a.id == approval_id))
                    .ok_or_else(|| fail(format!("no approval {approval_id} in this step")))?;
                if slot.status != CallStatus::AwaitingApproval {
                    return Err(fail(format!("approval {approval_id} was already decided")));
                }
                if *approved {
                    slot.status = CallStatus::Approved;
                    if let Some(a) = slot.approval.as_mut() {
                        a.approved_by = Some(by.clone());
                    }
                } else {
                    slot.status = CallStatus::Rejected;
                    let content = if *expired {
                        "error: nobody approved this call before its approval request expired, so it did not run".to_owned()
                    } else {
                        let note = note.as_ref().map(|n| format!(": {n}")).unwrap_or_default();
                        format!("error: {by} did not approve this call, so it did not run{note}")
                    };
                    let (call_id, name) = (slot.call.id.clone(), slot.call.name.clone());
                    self.messages.push(Message::Tool {
                        call_id,
                        name,
                        content,
                        is_error: true,
                    });
                }
            }
            Event::RunSuspended { approvals } => {
                if approvals.is_empty() || self.pending_approvals().is_empty() {
                    return Err(fail(
                        "a run suspends only while calls await approval".into(),
                    ));
                }
                self.suspended = true;
            }
            Event::ModelJudged { .. } | Event::Notice { .. } => {}
            Event::GrantsFixed {
                grants,
                usage,
                cost_micros,
                ..
            } => {
                if self.grants.is_some() {
                    return Err(fail("the run's grants were fixed already".into()));
                }
                if self.tool_executions > 0 {
                    return Err(fail(
                        "grants are fixed before the first tool runs, not after".into(),
                    ));
                }
                self.grants = Some(grants.clone());
                self.usage = self.usage.plus(*usage);
                self.cost_micros = self.cost_micros.saturating_add(*cost_micros);
            }
            Event::AnswerJudged {
                step,
                verdict,
                reasons,
                text,
                approved_by,
                ..
            } => {
                // A judgement of text the run ends with, outside the answer path (a partial
                // output, or an answer held when the run was cancelled), leaves the slot alone.
                if let Some(answer) = self.answer.as_mut().filter(|a| {
                    a.step == *step
                        && matches!(a.status, AnswerStatus::Proposed | AnswerStatus::Approved)
                }) {
                    answer
                        .judged(*verdict, text.clone(), reasons, approved_by.as_deref())
                        .map_err(fail)?;
                }
            }
            Event::CallReconciled {
                call_id,
                happened,
                output,
                by,
                ..
            } => {
                if !reconciling {
                    return Err(fail(format!(
                        "call {call_id} is not the call this run stopped on"
                    )));
                }
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                if !matches!(slot.status, CallStatus::InFlight { .. }) {
                    return Err(fail(format!("call {call_id} is not in doubt")));
                }
                slot.doubt = None;
                if *happened {
                    slot.status = CallStatus::Done;
                    let rendered = format!(
                        "{} (as confirmed by {by} after a crash)",
                        render_output(true, output)
                    );
                    self.take_output(call_id, rendered, false, output, &BTreeMap::new());
                } else {
                    // It did not happen: the call is judged and run again, as if just proposed.
                    slot.status = CallStatus::Proposed;
                }
                self.ended = None;
            }
            Event::ToolIntent {
                call_id,
                tool,
                args,
                attempt,
                idempotent,
                labels,
                field_labels,
                data,
                ..
            } => {
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                let expected = match slot.status {
                    CallStatus::Proposed | CallStatus::Approved => 1,
                    CallStatus::InFlight { attempt, .. } => attempt + 1,
                    CallStatus::Rejected | CallStatus::Done | CallStatus::AwaitingApproval => {
                        return Err(fail(format!(
                            "call {call_id} was already handled or awaits approval"
                        )));
                    }
                };
                if *attempt != expected {
                    return Err(fail(format!(
                        "expected attempt {expected} of call {call_id}"
                    )));
                }
                slot.status = CallStatus::InFlight {
                    attempt: *attempt,
                    idempotent: *idempotent,
                };
                slot.labels = labels.clone();
                slot.field_labels = field_labels.clone();
                slot.data = data.clone();
                self.tool_executions += 1;
                if *attempt == 1 {
                    let counter = self.counters.entry(tool.clone()).or_default();
                    counter.add(args);
                }
            }
            Event::ToolOutcome {
                call_id,
                ok,
                output,
                labels: returned,
                ..
            } => {
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                if !matches!(slot.status, CallStatus::InFlight { .. }) {
                    return Err(fail(format!(
                        "call {call_id} has no intent without an outcome"
                    )));
                }
                slot.status = CallStatus::Done;
                let result = if *ok {
                    CallResult::Done
                } else {
                    CallResult::Failed
                };
                let name = slot.call.name.clone();
                self.history.push((name, result));
                // Whatever came back, even an error message, is data the tool returned.
                self.take_output(call_id, render_output(*ok, output), !ok, output, returned);
            }
            Event::ToolInDoubt {
                call_id, reason, ..
            } => {
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                match slot.status {
                    CallStatus::InFlight {
                        idempotent: false, ..
                    } => slot.doubt = Some(reason.clone()),
                    CallStatus::InFlight { .. } => {
                        return Err(fail(format!(
                            "call {call_id} is idempotent: it is run again, never left in doubt"
                        )));
                    }
                    _ => {
                        return Err(fail(format!(
                            "call {call_id} has no intent without an outcome"
                        )));
                    }
                }
            }
            Event::ClientResults { results, carried } => {
                if self.requested_step.is_some() {
                    return Err(fail("a model call is in progress".into()));
                }
                self.labels.absorb(carried.iter());
                for r in results {
                    self.labels.absorb(r.labels.iter());
                    self.sources.add_json(&r.output, &|_| {
                        provenance::output_origins(&r.tool, &r.labels, &BTreeMap::new(), "")
                    });
                }
            }
            Event::ToolHandedOff { call_id } => {
                let slot = self
                    .slot_mut(call_id)
                    .ok_or_else(|| fail(format!("no call {call_id} in this step")))?;
                if !matches!(slot.status, CallStatus::InFlight { .. }) {
                    return Err(fail(format!(
                        "call {call_id} has no intent without an outcome"
                    )));
                }
                slot.status = CallStatus::Done;
                slot.handed_off = true;
                let name = slot.call.name.clone();
                self.history.push((name, CallResult::HandedOff));
            }
            Event::RunEnded {
                status,
                output,
                reason,
                call_id,
            } => {
                self.ended = Some(Ended {
                    status: *status,
                    output: output.clone(),
                    reason: reason.clone(),
                    call_id: call_id.clone(),
                });
            }
        }
        self.last_seq = stored.seq;
        // Decisions written by other processes while the run is suspended are not activity.
        if !(self.suspended && matches!(stored.event, Event::ApprovalDecided { .. })) {
            self.last_at_ms = stored.at_ms;
        }
        Ok(())
    }

    /// Puts a call's output into the conversation the one way it may enter: marked as data when
    /// any part of it is untrusted, its labels (the manifest's, its field rules', and those the
    /// tool returned) joining the run's, and its values joining the sources provenance is traced
    /// to, each with its own labels.
    fn take_output(
        &mut self,
        call_id: &str,
        rendered: String,
        is_error: bool,
        output: &Value,
        returned: &BTreeMap<String, Vec<String>>,
    ) {
        let Some(slot) = self.calls.iter().find(|s| s.call.id == call_id) else {
            return;
        };
        let name = slot.call.name.clone();
        let labels = slot.labels.clone();
        let mut fields = slot.field_labels.clone();
        for (pointer, extra) in returned {
            fields
                .entry(pointer.clone())
                .or_default()
                .extend(extra.iter().cloned());
        }
        let all: Vec<String> = labels
            .iter()
            .chain(fields.values().flatten())
            .cloned()
            .collect();
        let content = if all.iter().any(|l| l == UNTRUSTED) {
            mark_untrusted(&name, call_id, &rendered)
        } else {
            rendered
        };
        self.labels.absorb(all.iter());
        self.sources.add_json(output, &|pointer| {
            provenance::output_origins(&name, &labels, &fields, pointer)
        });
        if let Some(set) = slot.data.clone() {
            provenance::data_values(output, self.data.entry(set).or_default());
        }
        self.messages.push(Message::Tool {
            call_id: call_id.to_owned(),
            name,
            content,
            is_error,
        });
    }

    fn slot_mut(&mut self, call_id: &str) -> Option<&mut CallSlot> {
        self.calls.iter_mut().find(|s| s.call.id == call_id)
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
