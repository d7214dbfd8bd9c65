//! The audit trail's writer: records are queued as their events commit (by the store's commit
//! hooks) and written by the store's own writer thread once per batch of appends, after the
//! batch's hooks and before any appender of the batch is answered. A run's end (or suspension)
//! queues its last records with a request for a checkpoint after them; the runs that end in one
//! batch share one signature. No thread of its own: a record is on disk (or failed) by the time
//! its event's commit is acknowledged, and a run's ending waits for one hand-off, the store's.
//! A failed write is reported to the next run step that records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rein_audit::{AuditLog, Entry};
use rein_store::Store;

/// Answers a run waiting for a checkpoint.
pub(crate) type CheckpointDone = tokio::sync::oneshot::Sender<Result<(), String>>;

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
    /// Its engine is gone: the store stops calling once it has written what was queued.
    closed: AtomicBool,
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
        let mut result = if q.entries.is_empty() {
            Ok(())
        } else {
            self.log
                .append_with(&q.entries, q.fsync)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        if !q.waiting.is_empty() {
            result = result.and_then(|()| {
                self.log
                    .checkpoint_with(q.at_ms, q.sync_checkpoint)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
        }
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

impl AuditSender {
    /// Queues records (`fsync`: the run's durability asks for a flush to disk).
    pub(crate) fn send(&self, entries: Vec<Entry>, fsync: bool) {
        let mut queue = lock(&self.0.queue);
        queue.entries.extend(entries);
        queue.fsync |= fsync;
    }

    /// Queues a run's last records and asks for a checkpoint at `at_ms` after them; `done` is
    /// answered once both are written.
    pub(crate) fn send_closing(
        &self,
        entries: Vec<Entry>,
        fsync: bool,
        at_ms: u64,
        done: CheckpointDone,
    ) {
        let mut queue = lock(&self.0.queue);
        queue.entries.extend(entries);
        queue.fsync |= fsync;
        queue.at_ms = queue.at_ms.max(at_ms);
        queue.sync_checkpoint |= fsync;
        queue.waiting.push(done);
    }
}

/// The audit trail of an engine, written after each batch of its store's appends.
pub(crate) struct AuditWriter {
    shared: Arc<Shared>,
}

impl AuditWriter {
    /// Writes what the commit hooks of `store`'s appends queue, on the store's writer thread
    /// after each batch (until the batch after this writer is dropped).
    pub(crate) fn start(log: Arc<AuditLog>, store: &dyn Store) -> AuditWriter {
        let shared = Arc::new(Shared {
            log,
            queue: Mutex::new(Queue::default()),
            failed: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let writer = shared.clone();
        store.after_batch(Box::new(move || {
            // Read first: a hook that queued before its engine went is written this once.
            let closed = writer.closed.load(Ordering::Acquire);
            writer.write_queued();
            !closed
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

impl Drop for AuditWriter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}
