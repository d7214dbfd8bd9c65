//! The audit trail's writer: records are queued as their events commit (by the store's commit
//! hooks) and written by whoever committed them (the store's writer thread, or a run driven
//! alone, see `rein_store::Store::driving`) once per batch of appends, after the batch's hooks
//! and before any appender of the batch is answered. A run's end (or suspension) queues its last
//! records with a request for a checkpoint after them; the runs that end in one
//! batch share one signature. No thread of its own: a record is written (or its failure noted)
//! by the time its event's commit is acknowledged, and a run's ending waits for one hand-off, the
//! store's.
//! A failed write is reported to the next run step that records.

use std::sync::{Arc, Mutex, MutexGuard};

use rein_audit::{AuditLog, Entry};
use rein_store::{OnCommit, Store};

use crate::EngineError;

/// Answers a run waiting for a checkpoint.
type CheckpointDone = tokio::sync::oneshot::Sender<Result<(), String>>;

/// What the hooks of the batch being committed have queued.
#[derive(Default)]
struct Queue {
    entries: Vec<Entry>,
    /// Some run's durability asks for the records to be flushed to disk.
    fsync: bool,
    /// Runs waiting for a checkpoint after their records, and the latest time they asked for.
    waiting: Vec<CheckpointDone>,
    at_ms: u64,
    sync_checkpoint: bool,
}

struct Shared {
    log: Arc<AuditLog>,
    /// Held while the queue is written, so records reach the log in the order they were queued
    /// whoever writes them.
    queue: Mutex<Queue>,
    failed: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Writes what is queued, then signs one checkpoint if a run asked for one: it covers all
    /// their records (a waiter only needs a signed checkpoint after its own records, and this one
    /// is).
    fn write_queued(&self) {
        let mut queue = lock(&self.queue);
        if queue.entries.is_empty() && queue.waiting.is_empty() {
            return;
        }
        let q = std::mem::take(&mut *queue);
        let checkpoint = (!q.waiting.is_empty()).then_some((q.at_ms, q.sync_checkpoint));
        // On the thread that committed: a panic in the audit code must not stop the store,
        // so it becomes this write's failure, which stops the runs it concerns.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.log
                .append_and_checkpoint(&q.entries, q.fsync, checkpoint)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("writing the audit trail panicked".into()));
        drop(queue);
        if let Err(e) = &result {
            lock(&self.failed).get_or_insert(e.clone());
        }
        for done in q.waiting {
            let _ = done.send(result.clone());
        }
    }
}

/// Queues records from commit hooks; cheap to clone into them.
#[derive(Clone)]
pub(crate) struct AuditSender(Arc<Shared>);

/// A run's wait for the checkpoint its closing append asked for.
pub(crate) struct Signed(tokio::sync::oneshot::Receiver<Result<(), String>>);

impl Signed {
    /// Waits until the records before it are written and the checkpoint signed; a failed write
    /// (or an append that never committed) is the run's audit error.
    pub(crate) async fn wait(self) -> Result<(), EngineError> {
        self.0
            .await
            .map_err(|_| EngineError::Audit("the audit trail was not written".into()))?
            .map_err(EngineError::Audit)
    }
}

impl AuditSender {
    /// The commit hook of an append whose audit records are `entries` (`fsync`: the run's
    /// durability asks for a flush to disk): it queues them once the append commits.
    pub(crate) fn hook(&self, entries: Vec<Entry>, fsync: bool) -> OnCommit {
        let sender = self.clone();
        Box::new(move |ok| {
            if ok {
                drop(sender.queue(entries, fsync));
            }
        })
    }

    /// The same for an append that ends or suspends a run: it also asks for a checkpoint at
    /// `at_ms` after the records, which the returned [`Signed`] waits for. The store's writer
    /// writes both before answering the append, so the run waits for one hand-off.
    pub(crate) fn closing_hook(
        &self,
        entries: Vec<Entry>,
        fsync: bool,
        at_ms: u64,
    ) -> (OnCommit, Signed) {
        let (done, signed) = tokio::sync::oneshot::channel();
        let sender = self.clone();
        let hook: OnCommit = Box::new(move |ok| {
            // A failed append drops `done`: its waiter learns it (and the commit says why).
            if ok {
                let mut queue = sender.queue(entries, fsync);
                queue.at_ms = queue.at_ms.max(at_ms);
                queue.sync_checkpoint |= fsync;
                queue.waiting.push(done);
            }
        });
        (hook, Signed(signed))
    }

    /// Queues committed records; the queue stays locked for the caller.
    fn queue(&self, entries: Vec<Entry>, fsync: bool) -> MutexGuard<'_, Queue> {
        let mut queue = lock(&self.0.queue);
        queue.entries.extend(entries);
        queue.fsync |= fsync;
        queue
    }
}

/// The audit trail of an engine, written after each batch of its store's appends.
pub(crate) struct AuditWriter {
    shared: Arc<Shared>,
}

impl AuditWriter {
    /// Writes what the commit hooks of `store`'s appends queue, on the thread that committed
    /// them, after each batch (until this writer and every hook holding its sender are gone).
    pub(crate) fn start(log: Arc<AuditLog>, store: &dyn Store) -> AuditWriter {
        let shared = Arc::new(Shared {
            log,
            queue: Mutex::new(Queue::default()),
            failed: Mutex::new(None),
        });
        let writer = shared.clone();
        store.after_batch(Box::new(move || {
            // Held only here: the engine is gone and no hook of its appends is left to run
            // (senders come only from the engine), so this is the last call it needs.
            let last = Arc::strong_count(&writer) == 1;
            writer.write_queued();
            !last
        }));
        AuditWriter { shared }
    }

    pub(crate) fn log(&self) -> &Arc<AuditLog> {
        &self.shared.log
    }

    /// A write that failed, if one did.
    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.shared.failed).clone()
    }

    /// A sender for commit hooks.
    pub(crate) fn sender(&self) -> AuditSender {
        AuditSender(self.shared.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use rein_audit::{AuditLog, AuditOptions, Entry};
    use rein_core::{Durability, Event, RunStarted, StoredEvent};
    use rein_store::{Lease, SqliteStore, Store};

    use super::AuditWriter;

    fn started() -> StoredEvent {
        StoredEvent {
            seq: 1,
            at_ms: 1,
            event: Event::RunStarted(Box::new(RunStarted {
                agent: "a".into(),
                ..RunStarted::default()
            })),
        }
    }

    fn record(run: &str) -> Entry {
        Entry {
            at_ms: 1,
            kind: "run_started".into(),
            run_id: Some(run.into()),
            event: Some(1),
            data: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn records_of_appends_committed_after_their_engine_went_are_still_written() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), Durability::Normal).unwrap());
        let log =
            Arc::new(AuditLog::open(&dir.path().join("audit"), AuditOptions::default()).unwrap());
        let writer = AuditWriter::start(log.clone(), store.as_ref());
        // A hook made while the engine lived, whose append commits after it is gone, with
        // another batch in between.
        let sender = writer.sender();
        drop(writer);
        let other = Lease::new_run("other", "w", u64::MAX / 4);
        store
            .append(&other, &[started()], Durability::Normal, None)
            .await
            .unwrap();
        let late = Lease::new_run("late", "w", u64::MAX / 4);
        store
            .append(
                &late,
                &[started()],
                Durability::Normal,
                Some(sender.hook(vec![record("late")], false)),
            )
            .await
            .unwrap();
        assert_eq!(
            log.cursor("late").unwrap(),
            Some(1),
            "the late record was lost"
        );
    }
}
