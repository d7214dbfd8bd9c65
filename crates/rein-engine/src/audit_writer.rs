//! The audit trail's writer: records are queued as their events commit (by the store's commit
//! hooks) and written by whoever committed them (the store's writer thread, a run driven alone,
//! or a task committing for runs at once, see `rein_store::Store::driving`) once per batch of appends, after the batch's hooks
//! and before any appender of the batch is answered. A run's end (or suspension) queues its last
//! records with a request for a checkpoint after them; the runs that end in one
//! batch share one signature. The records need no thread of their own: a record is written (or
//! its failure noted) by the time its event's commit is acknowledged, and a run's ending waits
//! for one hand-off, the store's.
//! A gateway request's end does not wait for a checkpoint of its own: its records are written
//! before its answer goes out, and the signer (a thread started at the first such end) signs one
//! checkpoint for all the requests that ended within [`DEFERRED_CHECKPOINT_MS`] of the first, so
//! a gateway serving a thousand requests a second signs about one checkpoint a second, not a
//! thousand (nor writes a thousand copies to a checkpoint directory). What it was asked for and
//! did not sign yet is signed when the engine is dropped.
//! A failed write (or a deferred checkpoint's failure) is reported to the next run step that
//! records.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// Gateway requests ended: a checkpoint after their records is asked of the signer (the
    /// latest time asked for, and whether it is flushed to disk).
    deferred: Option<(u64, bool)>,
}

/// How long after a gateway request ended the checkpoint covering its records may be signed:
/// the requests ending meanwhile share it.
pub(crate) const DEFERRED_CHECKPOINT_MS: u64 = 1000;

/// A checkpoint asked for (`asked`: the latest time, and whether it is flushed to disk) with one
/// more ask joined in.
fn joined(asked: Option<(u64, bool)>, at_ms: u64, sync: bool) -> Option<(u64, bool)> {
    let (at, synced) = asked.unwrap_or((0, false));
    Some((at.max(at_ms), synced || sync))
}

struct Shared {
    log: Arc<AuditLog>,
    /// Held while the queue is written, so records reach the log in the order they were queued
    /// whoever writes them.
    queue: Mutex<Queue>,
    failed: Arc<Mutex<Option<String>>>,
    signer: Arc<Signer>,
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
        if queue.entries.is_empty() && queue.waiting.is_empty() && queue.deferred.is_none() {
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
        // Asked once the records are in the log, so the checkpoint covers them. (Signed here
        // already when a run in the batch waited for one.)
        if let (Some((at_ms, sync)), None, Ok(())) = (q.deferred, checkpoint, &result) {
            self.signer.want(at_ms, sync);
        }
    }
}

/// What the signer has been asked for.
#[derive(Default)]
struct Pending {
    /// A checkpoint after the records written so far: the latest time asked for, and whether it
    /// is flushed to disk.
    wanted: Option<(u64, bool)>,
    /// The signer's thread was started.
    started: bool,
    /// The engine is gone: what is asked for is signed at once, and the thread ends.
    stopped: bool,
    /// Checkpoints the thread has signed (or failed to), for whoever waits on `Signer::signed`.
    signings: u64,
}

/// Signs the checkpoints gateway requests' ends ask for, one for all those of a moment.
struct Signer {
    log: Arc<AuditLog>,
    failed: Arc<Mutex<Option<String>>>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Notified each time the thread has signed.
    signed: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// How long the requests of a moment may join a checkpoint ([`DEFERRED_CHECKPOINT_MS`]).
    delay: Duration,
}

impl Signer {
    /// Asks for a checkpoint after the records written so far, at `at_ms` or later.
    fn want(self: &Arc<Self>, at_ms: u64, sync: bool) {
        let mut pending = lock(&self.pending);
        if pending.stopped {
            drop(pending);
            self.sign(at_ms, sync);
            return;
        }
        // Only a signer waiting to be asked is woken: one already asked signs this ask with
        // the others at its deadline (a wake per request would cost each a context switch).
        let idle = pending.wanted.is_none();
        pending.wanted = joined(pending.wanted, at_ms, sync);
        if !pending.started {
            pending.started = true;
            let signer = self.clone();
            let spawned = std::thread::Builder::new()
                .name("rein-audit-signer".into())
                .stack_size(256 * 1024)
                .spawn(move || signer.run());
            match spawned {
                Ok(handle) => *lock(&self.thread) = Some(handle),
                // No thread to be had: signed here, as the checkpoint of a hosted run's end is.
                Err(e) => {
                    tracing::warn!(error = %e, "no thread for the audit signer; checkpoints are signed as requests end");
                    pending.started = false;
                    pending.stopped = true;
                    let (at_ms, sync) = pending.wanted.take().unwrap_or((at_ms, sync));
                    drop(pending);
                    self.sign(at_ms, sync);
                    return;
                }
            }
        }
        if idle {
            self.wake.notify_one();
        }
    }

    /// The signer's thread: waits to be asked, lets the moment's other requests join in, signs.
    fn run(&self) {
        let mut pending = lock(&self.pending);
        loop {
            while pending.wanted.is_none() && !pending.stopped {
                pending = self.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
            }
            let Some(_) = pending.wanted else {
                return;
            };
            let deadline = Instant::now() + self.delay;
            while !pending.stopped {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                pending = self
                    .wake
                    .wait_timeout(pending, left)
                    .map(|(p, _)| p)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let Some((at_ms, sync)) = pending.wanted.take() else {
                continue;
            };
            drop(pending);
            self.sign(at_ms, sync);
            pending = lock(&self.pending);
            pending.signings += 1;
            self.signed.notify_all();
        }
    }

    /// Waits (at most `timeout`) until the thread has signed `n` checkpoints; how many it has.
    #[cfg(test)]
    fn signings(&self, n: u64, timeout: Duration) -> u64 {
        let pending = lock(&self.pending);
        let (pending, _) = self
            .signed
            .wait_timeout_while(pending, timeout, |p| p.signings < n)
            .unwrap_or_else(|p| p.into_inner());
        pending.signings
    }

    /// Signs a checkpoint over the records in the log (none if they are covered already). A
    /// failure is the next run step's audit error, as a failed write is.
    fn sign(&self, at_ms: u64, sync: bool) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.log
                .checkpoint_with(at_ms, sync)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("signing an audit checkpoint panicked".into()));
        if let Err(e) = result {
            tracing::error!(error = %e, "the audit trail's checkpoint could not be signed");
            lock(&self.failed).get_or_insert(e);
        }
    }

    /// Signs what is asked for now and ends the thread; later asks are signed at once.
    fn stop(&self) {
        lock(&self.pending).stopped = true;
        self.wake.notify_one();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
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

    /// The commit hook of the append that ends a gateway request's run: it queues the records,
    /// and once they are written, asks the signer for a checkpoint after them at `at_ms`, which
    /// nobody waits for (see [`DEFERRED_CHECKPOINT_MS`]).
    pub(crate) fn ending_hook(&self, entries: Vec<Entry>, fsync: bool, at_ms: u64) -> OnCommit {
        let sender = self.clone();
        Box::new(move |ok| {
            if ok {
                let mut queue = sender.queue(entries, fsync);
                queue.deferred = joined(queue.deferred, at_ms, fsync);
            }
        })
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
        Self::start_signing_after(log, store, Duration::from_millis(DEFERRED_CHECKPOINT_MS))
    }

    /// [`AuditWriter::start`], with the checkpoints gateway requests' ends ask for signed
    /// `delay` after the first of them.
    fn start_signing_after(log: Arc<AuditLog>, store: &dyn Store, delay: Duration) -> AuditWriter {
        let failed = Arc::new(Mutex::new(None));
        let shared = Arc::new(Shared {
            log: log.clone(),
            queue: Mutex::new(Queue::default()),
            failed: failed.clone(),
            signer: Arc::new(Signer {
                log,
                failed,
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                signed: Condvar::new(),
                thread: Mutex::new(None),
                delay,
            }),
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

impl Drop for AuditWriter {
    /// Signs the checkpoint gateway requests asked for and the signer had not signed yet.
    fn drop(&mut self) {
        self.shared.signer.stop();
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
            data: serde_json::json!({}).into(),
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

    /// A store and an audit log in `dir`, and their writer, which signs the checkpoints gateway
    /// requests' ends ask for `delay` after the first.
    fn signing_after(
        dir: &std::path::Path,
        delay: std::time::Duration,
    ) -> (Arc<dyn Store>, Arc<AuditLog>, AuditWriter) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir, Durability::Normal).unwrap());
        let log = Arc::new(AuditLog::open(&dir.join("audit"), AuditOptions::default()).unwrap());
        let writer = AuditWriter::start_signing_after(log.clone(), store.as_ref(), delay);
        (store, log, writer)
    }

    /// Records gateway request `run`'s start as its end: its record queued by the commit hook,
    /// a checkpoint asked of the signer.
    async fn gateway_request_ended(store: &dyn Store, writer: &AuditWriter, run: &str) {
        let lease = Lease::new_run(run, "w", u64::MAX / 4);
        let hook = writer.sender().ending_hook(vec![record(run)], false, 5);
        store
            .append(&lease, &[started()], Durability::Normal, Some(hook))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn gateway_requests_ending_together_share_one_checkpoint_signed_at_the_latest_when_the_engine_goes()
     {
        let dir = tempfile::tempdir().unwrap();
        // Signed an hour after the first request ended: so never, unless the engine goes.
        let (store, log, writer) = signing_after(dir.path(), std::time::Duration::from_secs(3600));
        for run in ["r1", "r2", "r3"] {
            gateway_request_ended(store.as_ref(), &writer, run).await;
            // Its record is in the log once its append is answered, unsigned as yet.
            assert_eq!(log.cursor(run).unwrap(), Some(1), "{run}'s record");
        }
        let keys = [log.public_key()];
        let report = rein_audit::verify(&dir.path().join("audit"), &keys).unwrap();
        assert_eq!((report.checkpoints, report.uncovered), (0, 3));
        drop(writer);
        let report = rein_audit::verify(&dir.path().join("audit"), &keys).unwrap();
        assert_eq!(
            (report.records, report.checkpoints, report.uncovered),
            (3, 1, 0)
        );
        assert!(
            log.checkpoint_with(6, false).unwrap().is_none(),
            "records were left for another checkpoint to cover"
        );
    }

    /// A gateway that goes idle has its last requests signed by the signer's timer, the engine
    /// still running; and a request after that (the signer asleep, waiting to be asked) wakes
    /// it for a checkpoint of its own.
    #[tokio::test]
    async fn an_idle_gateways_last_requests_are_signed_on_the_signers_time_while_the_engine_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log, writer) = signing_after(dir.path(), std::time::Duration::from_millis(20));
        let keys = [log.public_key()];
        for (n, run) in [(1, "r1"), (2, "r2")] {
            gateway_request_ended(store.as_ref(), &writer, run).await;
            let signed = writer
                .shared
                .signer
                .signings(n, std::time::Duration::from_secs(60));
            assert_eq!(signed, n, "{run}'s checkpoint was not signed");
            let report = rein_audit::verify(&dir.path().join("audit"), &keys).unwrap();
            assert_eq!(
                (report.records, report.checkpoints, report.uncovered),
                (n, n, 0),
                "after {run}"
            );
            assert_eq!(writer.failure(), None);
        }
    }
}
