//! The runs a gateway conversation holds for a person's approval, as its requests meet them:
//! told to wait while undecided, answered by resuming the run once decided, and (the same request
//! sent again, by a client that lost the answer) answered again from the run it resumed.

use rein_core::{EndState, RunState};
use rein_engine::{GatewayReply, Observer};
use rein_store::HoldAt;
use sha2::{Digest, Sha256};

use super::kept::now;
use super::{ConversationKey, GatewayRequest};
use crate::runs::LoadedAgent;
use crate::{Error, Rein};

/// How long after a request released a held run to resume it a run not yet driven counts as
/// still resuming (its lease is taken a moment after the release): as long as a lease lasts.
const RESUMING_MS: u64 = rein_engine::LEASE_TTL_MS;

/// Whether a held run whose resume failed with `e` may resume for a later request: when another
/// request or process has it, rein is stopping, or the store or the audit trail failed for the
/// moment. Not when its log cannot be read or followed (inconsistent, damaged, of a newer
/// format, gone) or its agent cannot run it: every later request of the conversation would fail
/// the same way, for good.
pub(super) fn resumable_later(e: &rein_engine::EngineError) -> bool {
    use rein_engine::EngineError as E;
    use rein_store::StoreError as S;
    match e {
        E::Stopped { .. } | E::Interrupted { .. } | E::Audit(_) => true,
        E::Store(s) => matches!(
            s,
            S::Database { .. } | S::CommitFailed { .. } | S::Conflict { .. } | S::Leased { .. }
        ),
        _ => false,
    }
}

/// Whether a held run's approval has expired (the resume then records it as denied).
fn expired(state: &RunState) -> bool {
    let now = now();
    let lapsed = |a: Option<&rein_core::state::ApprovalSlot>| {
        a.and_then(|a| a.expires_at_ms).is_some_and(|at| at <= now)
    };
    state.calls().iter().any(|c| lapsed(c.approval.as_ref()))
        || state.answer().is_some_and(|a| lapsed(a.approval.as_ref()))
}

/// A digest of what a request sends (its system prompt, messages and tools): the same request
/// sent again has the same one.
pub(super) fn request_digest(request: &GatewayRequest) -> String {
    let mut h = Sha256::new();
    for part in [
        serde_json::to_vec(&request.system),
        serde_json::to_vec(&request.messages),
        serde_json::to_vec(&request.tools),
    ] {
        let part = part.unwrap_or_default();
        h.update((part.len() as u64).to_le_bytes());
        h.update(&part);
    }
    hex::encode(&h.finalize()[..16])
}

impl Rein {
    /// The answer the conversation's held runs (`held`, oldest first) give, if one does: the
    /// same note while its approvals are undecided; once decided, what the resumed run hands
    /// over. A run that cannot answer (ended, another caller's, gone or unreadable, or released
    /// by another request that is resuming it) is passed over for the next. A run resumed for
    /// `request` (its digest) answers the same request sent again (see `answered_again`).
    pub(super) async fn held_answer(
        &self,
        loaded: &LoadedAgent,
        key: &ConversationKey,
        held: &[String],
        request: Option<&str>,
        observer: &dyn Observer,
    ) -> Result<Option<GatewayReply>, Error> {
        use rein_engine::EngineError as E;
        use rein_store::StoreError as S;
        if held.is_empty() {
            return Ok(None);
        }
        let engine = self.engine()?;
        for run_id in held {
            let state = match engine.load(run_id) {
                Ok(state) => state,
                // Written by a newer rein sharing the state directory: left for it.
                Err(E::Store(S::NewerEvent { .. })) => continue,
                // Gone, or unreadable or inconsistent for good: no request of the conversation
                // could resume it.
                Err(e @ (E::Store(S::NotFound(_) | S::Corrupt { .. }) | E::State { .. })) => {
                    tracing::error!(run = %run_id, error = %e, "a held gateway run cannot be read; its conversation goes on without it");
                    self.give_up(key, run_id);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Only the run's own tenant, user and gateway get what it holds.
            let owned = state.started().is_some_and(|s| {
                s.tenant == key.tenant && s.user == key.user && s.agent == key.agent
            });
            if !owned || state.ended().is_some() {
                // Resumed and answered since this request read the conversation, for the same
                // request sent again: answered from the run too.
                if owned && self.resumed_for(key, run_id, request)?.is_some() {
                    return Ok(Some(GatewayReply::again(run_id, &state)));
                }
                self.release_held(key, run_id, None)?;
                continue;
            }
            if !state.pending_approvals().is_empty() && !expired(&state) {
                return Ok(Some(GatewayReply::waiting(run_id, &state)));
            }
            // Released before it is resumed, by one request of one process: another that finds
            // it released goes on to the conversation's next held run, or to the model. A
            // resume that fails for a while (a shutdown, the run driven elsewhere) puts it back
            // for the next request; one that no later request could change is answered once,
            // and the conversation goes on without the run.
            if !self.release_held(key, run_id, request)? {
                // Released a moment ago for the same request sent again (a client that retried
                // before its first try was answered): answered from the run too, or, held
                // again since by a resume that failed, refused to be sent again.
                if let Some((resumed, held_again)) = self.resumed_for(key, run_id, request)? {
                    match self.answered_again(key, &resumed, held_again)? {
                        Again::Answer(reply) => return Ok(Some(*reply)),
                        Again::Held => return Err(resuming(run_id)),
                        Again::MovedOn => {}
                    }
                }
                continue;
            }
            let reply = match engine
                .gateway_resume(run_id, loaded.agent(), observer)
                .await
            {
                Ok(reply) => reply,
                // Ended by the request that was resuming it when this one read it.
                Err(E::AlreadyEnded { .. }) => continue,
                Err(e) => {
                    if resumable_later(&e) {
                        self.hold(key, run_id, HoldAt::First);
                    } else {
                        self.give_up(key, run_id);
                    }
                    return Err(e.into());
                }
            };
            if reply.status == EndState::AwaitingApproval {
                self.hold(key, &reply.run_id, HoldAt::Last);
            }
            return Ok(Some(reply));
        }
        Ok(None)
    }

    /// What the conversation notes of run `run_id`, if its last request resumed it and
    /// `request` (a digest) is that request, and whether the run is held again (read again:
    /// another request may have just resumed it, or put it back).
    fn resumed_for(
        &self,
        key: &ConversationKey,
        run_id: &str,
        request: Option<&str>,
    ) -> Result<Option<(rein_store::Resumed, bool)>, Error> {
        let Some(request) = request else {
            return Ok(None);
        };
        let kept = self.conversations()?.get(key.as_ref())?;
        let held = kept.held.iter().any(|r| r == run_id);
        Ok(kept
            .resumed
            .filter(|r| r.run == run_id && r.request == request)
            .map(|r| (r, held)))
    }

    /// The answer for a request the conversation's last request was, sent again (its client
    /// lost the answer, or gave up waiting for it), from the held run that request resumed:
    /// once the run ended, or was held again for a person, what it answered, with the same
    /// calls and ids, nothing judged or spent again. While the run is being resumed (for the
    /// first request, here or in another process) the request is refused as a conflict, to be
    /// sent again. `Held` when the conversation holds the run again (`held`: its resume failed;
    /// or it stopped with a crash, before or during its resume, and is put back here) for the
    /// request to resume as any held run; `MovedOn` when the conversation is done with the run
    /// (it was given up, or its log is gone, unreadable or inconsistent).
    pub(super) fn answered_again(
        &self,
        key: &ConversationKey,
        resumed: &rein_store::Resumed,
        held: bool,
    ) -> Result<Again, Error> {
        use rein_engine::EngineError as E;
        use rein_store::StoreError as S;
        let run = resumed.run.as_str();
        let state = match self.engine()?.load(run) {
            Ok(state) => state,
            Err(
                e @ (E::Store(S::NotFound(_) | S::Corrupt { .. } | S::NewerEvent { .. })
                | E::State { .. }),
            ) => {
                tracing::error!(run = %run, error = %e, "a resumed gateway run cannot be read; its conversation goes on without it");
                self.moved_on(key, run);
                return Ok(Again::MovedOn);
            }
            Err(e) => return Err(e.into()),
        };
        if state.ended().is_some() {
            return Ok(Again::Answer(Box::new(GatewayReply::again(run, &state))));
        }
        // Held again by its resume, for approvals not yet decided: what the first request was
        // answered too (the calls the resume handed over, and what it holds).
        if state.is_suspended() && !state.pending_approvals().is_empty() && !expired(&state) {
            return Ok(Again::Answer(Box::new(GatewayReply::again(run, &state))));
        }
        // Driven by a live process (here or elsewhere): for its resume to finish.
        if self.engine()?.driven_now(run)? {
            return Err(resuming(run));
        }
        if held {
            return Ok(Again::Held);
        }
        // Released, and its resume not begun (nothing was recorded since the release): about
        // to take the lease, unless it stopped (a crash) before; only once a lease's time has
        // passed is it taken to have. A release is the last request's: a request sent again
        // that put back a run whose resume died, and released it again to resume it, is
        // waited for here by the same request sent once more, not raced by a second resume.
        // A resume that began and stopped (its process died, or let its lease lapse) is over.
        // Either way the run is put back for this request to resume: the calls its turn handed
        // over reached nobody (a client gets them once the run ended or was held again), so
        // that resume answers with them. Unless it was given up meanwhile: then the
        // conversation is done with it.
        if state.last_at_ms() < resumed.at_ms && now().saturating_sub(resumed.at_ms) < RESUMING_MS {
            return Err(resuming(run));
        }
        if self.hold(key, run, HoldAt::First) {
            return Ok(Again::Held);
        }
        self.moved_on(key, run);
        Ok(Again::MovedOn)
    }
}

/// What a request sent again learns of the held run its first try resumed.
pub(super) enum Again {
    /// Its answer.
    Answer(Box<GatewayReply>),
    /// The conversation holds the run again: the request resumes it, as any held run.
    Held,
    /// The conversation is done with the run: the request is answered as any other.
    MovedOn,
}

/// The conflict a request sent again meets while the run its first try resumed is resuming.
fn resuming(run: &str) -> Error {
    Error::Conflict(format!(
        "this request is being answered already (run {run} is resuming for it): send it again once that is done"
    ))
}
