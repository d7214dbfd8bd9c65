//! The model's final answer as a sink: it is judged (the `respond` action) before the run
//! returns it, and the verdict decides whether it is returned, withheld, or held for a person,
//! who releases or withholds it as they would approve or deny a call.

use super::{Action, ApprovalSlot, Ended, RunState};
use crate::end::EndState;
use crate::gate::Verdict;

/// Where judging an answer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerStatus {
    /// Proposed by the model; not judged yet.
    Proposed,
    /// The policies asked for a person; no approval requested yet.
    Held,
    /// Waiting for a person.
    AwaitingApproval,
    /// A person approved it; it is judged again knowing who.
    Approved,
    /// It may be returned, as this text.
    Released(Option<String>),
    /// It is withheld, for this reason.
    Withheld(String),
}

/// The model's final answer in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerSlot {
    /// The step it answered in.
    pub step: u32,
    /// Its text.
    pub text: Option<String>,
    /// Where judging it stands.
    pub status: AnswerStatus,
    /// Its approval, when held for a person.
    pub approval: Option<ApprovalSlot>,
}

/// What the answer needs next.
pub(super) enum Next {
    /// This action.
    Action(Action),
    /// Waiting for the approval with this id.
    Wait(String),
}

impl AnswerSlot {
    pub(super) fn new(step: u32, text: Option<String>) -> AnswerSlot {
        AnswerSlot {
            step,
            text,
            status: AnswerStatus::Proposed,
            approval: None,
        }
    }

    /// The call id an approval of this answer is requested under.
    pub fn call_id(&self) -> String {
        format!("answer_{}", self.step)
    }

    pub(super) fn approval_id(&self) -> Option<&String> {
        self.approval.as_ref().map(|a| &a.id)
    }

    pub(super) fn pending_approval(&self) -> Option<String> {
        (self.status == AnswerStatus::AwaitingApproval)
            .then(|| self.approval_id().cloned())
            .flatten()
    }

    /// A judgement of the answer was recorded.
    pub(super) fn judged(
        &mut self,
        verdict: Verdict,
        text: Option<String>,
        reasons: &[String],
        approved_by: Option<&str>,
    ) -> Result<(), String> {
        if !matches!(self.status, AnswerStatus::Proposed | AnswerStatus::Approved) {
            return Err(format!(
                "the answer of step {} was judged already",
                self.step
            ));
        }
        self.status = match (verdict, approved_by) {
            (Verdict::Allow, _) | (Verdict::Ask, Some(_)) => AnswerStatus::Released(text),
            (Verdict::Ask, None) => AnswerStatus::Held,
            (Verdict::Deny, _) => AnswerStatus::Withheld(format!(
                "the policies withheld the answer: {}",
                reasons.join("; ")
            )),
        };
        Ok(())
    }

    pub(super) fn next_action(&self, now_ms: u64) -> Next {
        let end = |status, output: Option<String>, reason: Option<String>| {
            Next::Action(Action::End(Ended {
                status,
                output,
                reason,
                call_id: None,
            }))
        };
        match &self.status {
            AnswerStatus::Proposed => Next::Action(Action::JudgeAnswer {
                step: self.step,
                text: self.text.clone(),
            }),
            AnswerStatus::Held => Next::Action(Action::HoldAnswer {
                step: self.step,
                text: self.text.clone(),
            }),
            AnswerStatus::AwaitingApproval => match &self.approval {
                Some(a) if a.expires_at_ms.is_some_and(|at| now_ms >= at) => {
                    Next::Action(Action::Expire {
                        approval_id: a.id.clone(),
                    })
                }
                Some(a) => Next::Wait(a.id.clone()),
                None => end(
                    EndState::Denied,
                    None,
                    Some("the answer's approval was lost".into()),
                ),
            },
            AnswerStatus::Approved => Next::Action(Action::ReleaseAnswer {
                step: self.step,
                text: self.text.clone(),
                approved_by: self
                    .approval
                    .as_ref()
                    .and_then(|a| a.approved_by.clone())
                    .unwrap_or_default(),
            }),
            AnswerStatus::Released(text) => end(EndState::Completed, text.clone(), None),
            AnswerStatus::Withheld(reason) => end(EndState::Denied, None, Some(reason.clone())),
        }
    }
}

impl RunState {
    /// The answer's approval was requested.
    pub(super) fn hold_answer(&mut self, approval: ApprovalSlot) -> Result<(), String> {
        let answer = self.answer.as_mut().ok_or("there is no answer to hold")?;
        if answer.status != AnswerStatus::Held {
            return Err(format!(
                "the answer of step {} is not held for a person",
                answer.step
            ));
        }
        answer.status = AnswerStatus::AwaitingApproval;
        answer.approval = Some(approval);
        Ok(())
    }

    /// A person decided the answer's approval (or it expired).
    pub(super) fn decide_answer(
        &mut self,
        approved: bool,
        by: &str,
        note: Option<&str>,
        expired: bool,
    ) -> Result<(), String> {
        let answer = self.answer.as_mut().ok_or("there is no answer to decide")?;
        if answer.status != AnswerStatus::AwaitingApproval {
            return Err("the answer's approval was already decided".into());
        }
        answer.status = if approved {
            if let Some(a) = answer.approval.as_mut() {
                a.approved_by = Some(by.to_owned());
            }
            AnswerStatus::Approved
        } else if expired {
            AnswerStatus::Withheld(
                "nobody approved the answer before its approval request expired".into(),
            )
        } else {
            AnswerStatus::Withheld(format!(
                "{by} did not approve the answer{}",
                note.map(|n| format!(": {n}")).unwrap_or_default()
            ))
        };
        Ok(())
    }
}
