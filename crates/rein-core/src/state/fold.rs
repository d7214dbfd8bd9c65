//! The fold: how each event changes a run's state, checked against what came before it (an
//! event that cannot follow is refused with its position, not applied), and the one way a call's
//! output enters the conversation.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    AnswerSlot, AnswerStatus, ApprovalSlot, CallResult, CallSlot, CallStatus, Ended, RunState,
    StateError, render_output,
};
use crate::end::EndState;
use crate::event::{Event, StoredEvent};
use crate::gate::Verdict;
use crate::labels::{UNTRUSTED, mark_untrusted};
use crate::message::Message;
use crate::provenance;

impl RunState {
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
                self.turn = 1;
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
                if self.suspended {
                    self.turn += 1;
                }
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
                stop_reason,
                stop_sequence,
                ..
            } => {
                self.cost_micros = self.cost_micros.saturating_add(*cost_micros);
                self.last_reply_cut =
                    matches!(stop_reason.as_deref(), Some("length" | "max_tokens"));
                self.last_stop_sequence = stop_sequence.clone();
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
                        handed_in: None,
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
                    self.messages.push(Message::Tool {
                        call_id: call_id.clone(),
                        name,
                        content: format!("error: {}", crate::gate::denial(policies, reasons)),
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
                let slot = self.in_flight_mut(call_id).map_err(fail)?;
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
                self.brought.absorb(carried.iter());
                for r in results {
                    self.labels.absorb(r.labels.iter());
                    self.brought.absorb(r.labels.iter());
                    self.sources.add_json(&r.output, &|_| {
                        provenance::output_origins(&r.tool, &r.labels, &BTreeMap::new(), "")
                    });
                }
            }
            Event::ToolHandedOff { call_id } => {
                let turn = self.turn;
                let slot = self.in_flight_mut(call_id).map_err(fail)?;
                slot.status = CallStatus::Done;
                slot.handed_off = true;
                slot.handed_in = Some(turn);
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

    /// The call `call_id` of this step, which an outcome or a hand-off settles: it must have an
    /// intent without an outcome.
    fn in_flight_mut(&mut self, call_id: &str) -> Result<&mut CallSlot, String> {
        let slot = self
            .slot_mut(call_id)
            .ok_or_else(|| format!("no call {call_id} in this step"))?;
        if !matches!(slot.status, CallStatus::InFlight { .. }) {
            return Err(format!("call {call_id} has no intent without an outcome"));
        }
        Ok(slot)
    }
}
