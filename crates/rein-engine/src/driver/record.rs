//! Recording: every event of a run passes [`Driver::record`], which redacts secrets (failing
//! closed) and applies the event to the run's state. The events of a step go to the store
//! together, as one append under the run's lease, when the driver waits for them (an intent, an
//! ending, a suspension) or is about to wait on the outside world (a model call); their audit
//! records are queued for the audit writer once that append has committed.

use rein_core::{Event, StoredEvent};

use crate::EngineError;
use crate::driver::Driver;

impl Driver<'_> {
    /// Applies an event to the run's state and queues it for commit. Every event passes here, so
    /// the state the engine decides from is always exactly the log. A run's ending that carries
    /// text the answer path did not judge is judged first (`respond`), whatever ended it.
    pub(super) async fn record(&mut self, event: Event) -> Result<(), EngineError> {
        let (judged, event) = match event {
            ending @ Event::RunEnded {
                output: Some(_), ..
            } => self.judge_ending(ending),
            other => (None, other),
        };
        if let Some(judged) = judged {
            self.record_one(judged).await?;
        }
        self.record_one(event).await
    }

    async fn record_one(&mut self, event: Event) -> Result<(), EngineError> {
        // Secret values never reach the log, the context or the live view, whoever produced them.
        let event = crate::secrets::redact_event(&self.agent.redactor, event)?;
        let stored = StoredEvent {
            seq: self.state.last_seq() + 1,
            at_ms: self.engine.clock.now_ms(),
            event,
        };
        self.state
            .apply(&stored)
            .map_err(|source| EngineError::State {
                run_id: self.run_id.clone(),
                source,
            })?;
        // Its audit record goes with it (see `submit`).
        let entry = crate::audit::entry_for(&self.run_id, &stored, &self.state, &|bytes| {
            self.engine.audit.log().keyed_hash(bytes)
        });
        self.unsent_records.push(entry);
        self.observer.on_event(&self.run_id, &stored);
        if self.observer.wants_committed() {
            self.uncommitted.push(stored.clone());
        }
        let closing = matches!(
            stored.event,
            Event::RunEnded { .. } | Event::RunSuspended { .. }
        );
        // An intent is waited for before its effect; a gateway's client runs its tools only
        // once it has the answer, which is sent after the run's ending is durable (and the
        // intent with it), so a hand-off's intent need not be waited for on its own. An
        // outcome is not waited for alone: it goes with the next step's events, handed over
        // before the model call and committed in order before any later intent, ending or
        // suspension, which are waited for. A crash before it commits leaves the call in doubt,
        // as a crash between the effect and the outcome always could.
        let waited = match &stored.event {
            Event::ToolIntent { tool, .. } => !self.runs_at_client(tool),
            Event::ToolInDoubt { .. } => true,
            _ => closing,
        };
        self.unsent.push(stored);
        self.closing |= closing;

        // Intents and endings are waited for; other events ride along with them.
        if waited {
            self.flush().await?;
        }
        if self.engine.fault_after_event(self.state.last_seq()) {
            self.stop_for_fault().await?;
        }
        Ok(())
    }

    /// Hands the events recorded since the last hand-over to the store, as one append under the
    /// run's lease, without waiting for the commit; their audit records go to the audit writer
    /// once it commits (not before: a record of an event that never committed would be false;
    /// not later: a kill after the commit would lose them until the next resume filled them in).
    pub(super) fn submit(&mut self) {
        let writes = std::mem::take(&mut self.riding);
        self.submit_with(writes);
    }

    /// [`Driver::submit`], with ledger writes that share the append's commit (with nothing to
    /// append, they are queued on their own). Settlements waiting to ride (`riding`) go with
    /// [`Driver::submit`]'s appends, not with these.
    pub(super) fn submit_with(&mut self, writes: Vec<rein_store::LedgerWrite>) {
        if self.unsent.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.unsent);
        let records = std::mem::take(&mut self.unsent_records);
        self.submitted_seq = events.last().map_or(self.submitted_seq, |e| e.seq);
        let sender = self.engine.audit.sender();
        let fsync = self.agent.durability == rein_core::Durability::Fsync;
        // The append that ends or suspends the run also asks for the checkpoint the run waits
        // for, from its commit hook, so the run waits for one hand-off, not for the commit and
        // then for a checkpoint it asks for itself.
        let closing = std::mem::take(&mut self.closing);
        let hook = if closing && self.is_gateway() && self.state.ended().is_some() {
            // A gateway request's end: its records are written before its answer goes out,
            // and the checkpoint covering them is signed with those of the requests ending
            // within the next moment (`DEFERRED_CHECKPOINT_MS`), not waited for by each.
            sender.ending_hook(records, fsync, self.engine.clock.now_ms())
        } else if closing {
            let (hook, signed) = sender.closing_hook(records, fsync, self.engine.clock.now_ms());
            self.signed = Some(signed);
            hook
        } else {
            sender.hook(records, fsync)
        };
        self.pending.push(self.engine.store.append_with(
            &self.lease,
            &events,
            self.agent.durability,
            Some(hook),
            writes,
        ));
    }

    /// Waits until everything recorded so far is committed, and the budget settlements queued
    /// since the last wait; once the run has ended or suspended, also until its audit records
    /// are written and a checkpoint is signed (a gateway request's end waits for its records
    /// only: its checkpoint is signed with the next moment's, see `submit_with`). A failed audit
    /// write stops the run here.
    pub(super) async fn flush(&mut self) -> Result<(), EngineError> {
        self.submit();
        self.committed().await?;
        self.booked().await?;
        // The append that closed the run asked for a checkpoint after its records (`submit`).
        if let Some(signed) = self.signed.take() {
            signed.wait().await?;
        }
        Ok(())
    }

    /// Waits until the appends handed to the store so far are committed (events not yet handed
    /// over stay where they are). A failed audit write stops the run here.
    pub(super) async fn committed(&mut self) -> Result<(), EngineError> {
        for commit in self.pending.drain(..) {
            commit.await?;
        }
        let through = self.submitted_seq;
        let durable = self.uncommitted.partition_point(|e| e.seq <= through);
        for event in self.uncommitted.drain(..durable) {
            self.observer.on_committed(&self.run_id, event);
        }
        if let Some(failure) = self.engine.audit.failure() {
            return Err(EngineError::Audit(failure));
        }
        Ok(())
    }

    /// A fault point was reached (tests only): make everything durable, stop as a dead process
    /// would, and if the stop returns, abandon the run.
    pub(super) async fn stop_for_fault(&mut self) -> Result<(), EngineError> {
        self.flush().await?;
        self.engine.fault_stop();
        Err(EngineError::Interrupted {
            run_id: self.run_id.clone(),
            seq: self.state.last_seq(),
        })
    }

    /// Notes something that does not change the run's state.
    pub(super) async fn notice(
        &mut self,
        kind: &str,
        subject: &str,
        detail: String,
        call_id: Option<String>,
    ) -> Result<(), EngineError> {
        self.record(Event::Notice {
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            detail,
            call_id,
        })
        .await
    }
}
