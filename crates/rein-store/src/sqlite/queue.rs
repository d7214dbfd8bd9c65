//! The way to the store's writer: appends and ledger writes are queued in order, and whoever
//! holds the write connection commits what is queued, together. That is usually the writer
//! thread; but an append of the one run driven in the process ([`crate::Store::driving`]) that
//! asks for no flush to disk, finds the connection idle and nothing queued that asks for one, is
//! committed by its own caller's thread, at once, with whatever was queued before it. A batch
//! that would wait there (another process's write lock, the checkpointer, a new log's header
//! flushed to disk) is handed back to the writer thread. What a caller's thread may still wait
//! for: the audit trail's file lock, which another process holds only while it appends (or
//! rotates the key), as the writer thread did.
//!
//! Waking the writer thread and being woken by it cost more than the commit itself at one request
//! at a time: on a virtual machine each wake of a thread on another CPU is an interrupt sent
//! through the hypervisor. `rein bench gateway --concurrency 1` on two cores spent 13 % of the
//! server's CPU in the kernel waking the writer (`perf`: `futex_wake` from the channel's send),
//! and the writer slept and woke about three times per request. With runs at once, appends queue
//! and share the writer thread's commits as before.
//!
//! A commit hook that panics on a caller's thread unwinds that caller (the batch's other
//! appenders learn `Closed`, as they did when the writer thread died); the store goes on. On the
//! writer thread it ends the thread, and with it the store's writing. The engine's hooks only
//! queue audit records, and its after-batch writer catches panics.
//!
//! Order is kept: queued work is only taken by whoever holds the connection, and all of it, so a
//! run's appends (an unwaited one, then the next) commit in the order they were made.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};

use rein_core::Durability;

use super::writer::{Committed, Work, Writer};

/// At most this many appends and ledger writes share one transaction.
const MAX_BATCH: usize = 1024;

/// Where work for the writer goes: the store's queue, or (for ledger writes prepared to go with
/// an append, see [`crate::BudgetLedger::later`]) a list the preparer takes them from.
#[derive(Clone)]
pub(crate) enum WorkQueue {
    /// The store's writer.
    Store(Arc<Shared>),
    /// Kept for the caller.
    Kept(Arc<Mutex<Vec<Work>>>),
}

/// What the store and its writer thread share.
pub(crate) struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when work is queued (or the store closes) while the writer thread waits.
    ready: Condvar,
    /// The write connection. Taken by the writer thread for each batch, or by a caller that
    /// finds it idle; queued work is only taken by whoever holds it. Gone once the writer
    /// thread ended (closing the connection, and letting the checkpointer end).
    writer: Mutex<Option<Writer>>,
    /// Runs being driven in this process ([`crate::Store::driving`]): a caller commits its own
    /// append only when its run is the one, so runs at once still share the writer's commits.
    pub(super) drivers: Arc<AtomicUsize>,
    /// The database, for errors.
    path: PathBuf,
}

#[derive(Default)]
struct Pending {
    work: VecDeque<Work>,
    /// The store is closing: nothing more is taken; what was queued is committed, then the
    /// writer thread ends.
    closed: bool,
    /// The writer thread has ended: nothing queued would ever be taken.
    ended: bool,
    /// The writer thread waits for `ready` (only then is it signalled: a signal is a system call).
    idle: bool,
    /// A caller's commit found the log past its cap: the writer thread empties it (a wait for
    /// readers is not for a caller's thread).
    cap: bool,
    /// Tests only: the writer thread takes nothing while set.
    #[cfg(test)]
    paused: bool,
}

impl Pending {
    /// Whether the writer thread has nothing to do now.
    fn nothing_to_do(&self) -> bool {
        #[cfg(test)]
        if self.paused && !self.closed {
            return true;
        }
        self.work.is_empty() && !self.closed && !self.cap
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(super) fn new(writer: Writer, path: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            writer: Mutex::new(Some(writer)),
            drivers: Arc::new(AtomicUsize::new(0)),
            path,
        })
    }

    /// Queues `work` at the end and wakes the writer thread if it waits.
    fn push(&self, pending: &mut Pending, work: Work) {
        pending.work.push_back(work);
        if pending.idle {
            self.ready.notify_one();
        }
    }

    /// Puts a batch a caller could not commit back at the front, in order, for the writer thread
    /// (or, if it has ended meanwhile, answers it that the store is closed).
    fn hand_back(&self, works: Vec<Work>) {
        let mut pending = lock(&self.pending);
        if pending.ended {
            drop(pending);
            works.into_iter().for_each(|work| self.refuse(work));
            return;
        }
        for work in works.into_iter().rev() {
            pending.work.push_front(work);
        }
        if pending.idle {
            self.ready.notify_one();
        }
    }

    /// The store is closing: the writer thread commits what is queued, then ends.
    pub(super) fn close(&self) {
        let mut pending = lock(&self.pending);
        pending.closed = true;
        self.ready.notify_one();
    }

    /// The writer thread: waits for work, then commits what is queued (up to a batch) at once.
    pub(super) fn run_writer(&self) {
        let _ending = Ending(self);
        loop {
            let mut pending = lock(&self.pending);
            let mut woken = false;
            while pending.nothing_to_do() {
                pending.idle = true;
                pending = self.ready.wait(pending).unwrap_or_else(|p| p.into_inner());
                pending.idle = false;
                woken = true;
            }
            // Woken for work while runs are driven at once: the threads waiting for this CPU
            // (on a busy one, the thread that woke this one among them) go first, so the appends
            // they are about to make join this batch instead of each waking the writer for a
            // commit of its own. When nothing else waits for this CPU, the yield returns at once;
            // when many threads do, the batch waits its turn behind them, as it would for the
            // CPU anyway. (`rein bench gateway` at 16 at once, all on one CPU: the store's bytes
            // written per request went from 34 to 20 KiB, and the server's CPU per request from
            // 230 to 187 µs.)
            if woken && self.drivers.load(Ordering::Relaxed) > 1 {
                drop(pending);
                std::thread::yield_now();
                pending = lock(&self.pending);
                // Taken meanwhile by an appender committing on its own thread: wait again.
                if pending.nothing_to_do() {
                    continue;
                }
            }
            if pending.work.is_empty() && pending.closed {
                return;
            }
            drop(pending);
            // The connection first, then the queue (a caller that holds it may take the work
            // meanwhile: then there is none left here, and the loop waits again).
            let mut writer = lock(&self.writer);
            let Some(writer) = writer.as_mut() else {
                return;
            };
            let works = {
                let mut pending = lock(&self.pending);
                pending.cap = false;
                let n = pending.work.len().min(MAX_BATCH);
                pending.work.drain(..n).collect::<Vec<_>>()
            };
            // (Not on a caller's thread: the writer thread waits for what it must.)
            let _ = writer.commit(works, false);
            // Once the batch is answered, so its appenders do not wait for it.
            writer.cap_if_due();
        }
    }

    /// Commits `work` on this thread if it is an append of the one run driven in this process,
    /// the connection is idle and nothing queued asks for a flush to disk (a caller's thread may
    /// be a request's, which must not wait on the disk); otherwise queues it for the writer
    /// thread. Work sent once the store is closed is answered that it is.
    pub(super) fn commit_or_queue(&self, work: Work) {
        let here = match &work {
            Work::Append(a) => {
                a.durability != Durability::Fsync && self.drivers.load(Ordering::Relaxed) <= 1
            }
            Work::Ledger(_) => false,
        };
        let mut held = match here.then(|| self.writer.try_lock()) {
            Some(Ok(writer)) => Some(writer),
            Some(Err(TryLockError::Poisoned(p))) => Some(p.into_inner()),
            _ => None,
        };
        let mut writer = held.as_mut().and_then(|w| w.as_mut());
        let mut pending = lock(&self.pending);
        if pending.closed {
            drop(pending);
            self.refuse(work);
            return;
        }
        let Some(writer) = writer.as_mut().filter(|_| {
            pending.work.len() < MAX_BATCH
                && !pending
                    .work
                    .iter()
                    .any(|w| matches!(w, Work::Append(a) if a.durability == Durability::Fsync))
        }) else {
            self.push(&mut pending, work);
            return;
        };
        let mut works: Vec<Work> = pending.work.drain(..).collect();
        drop(pending);
        works.push(work);
        match writer.commit(works, true) {
            Committed::Done => {
                if writer.cap_due() {
                    let mut pending = lock(&self.pending);
                    pending.cap = true;
                    if pending.idle {
                        self.ready.notify_one();
                    }
                }
            }
            Committed::Busy(works) => self.hand_back(works),
        }
    }

    /// Answers work sent to a closed store: its appender learns the store is closed (its answer
    /// is dropped), and its ledger writes that the writer has stopped.
    fn refuse(&self, work: Work) {
        let jobs = match work {
            Work::Append(append) => append.ledger,
            Work::Ledger(job) => vec![job],
        };
        for job in jobs {
            job.finish(Some("the store's writer has stopped"), &self.path);
        }
    }
}

/// The writer thread's end, as asked or by a panic: nothing more is taken (what is still queued
/// is answered that the store is closed), and the connection goes, and with it the line to the
/// checkpointer, which then ends too.
struct Ending<'a>(&'a Shared);

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let left = {
            let mut pending = lock(&self.0.pending);
            pending.closed = true;
            pending.ended = true;
            std::mem::take(&mut pending.work)
        };
        left.into_iter().for_each(|work| self.0.refuse(work));
        drop(lock(&self.0.writer).take());
    }
}

impl WorkQueue {
    /// Sends `work` to the writer (committing it here when that is quicker, see the module's
    /// doc); sent to a closed store, it is answered that it is.
    pub(crate) fn send(&self, work: Work) {
        match self {
            WorkQueue::Store(shared) => shared.commit_or_queue(work),
            WorkQueue::Kept(kept) => lock(kept).push(work),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::mpsc;

    use rein_core::{Durability, Event, RunStarted, StoredEvent};

    use super::lock;
    use crate::{Lease, OnCommit, SqliteStore, Store};

    /// A store in a new directory, past its first commit (which the writer thread makes: it
    /// writes the new log's header), and the lease of run `r` in it.
    fn opened() -> (tempfile::TempDir, SqliteStore, Lease) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let first = Lease::new_run("first", "w", u64::MAX / 4);
        store
            .append(&first, &[event(1)], Durability::Normal, None)
            .wait()
            .unwrap();
        let_go(&store);
        (dir, store, Lease::new_run("r", "w", u64::MAX / 4))
    }

    /// Returns once the writer thread has let go of the connection (it answers its appenders
    /// first: until it lets go, a caller finds the connection taken and queues).
    fn let_go(store: &SqliteStore) {
        drop(lock(&store.queue.writer));
    }

    fn event(seq: u64) -> StoredEvent {
        let event = if seq == 1 {
            Event::RunStarted(Box::new(RunStarted {
                agent: "a".into(),
                ..RunStarted::default()
            }))
        } else {
            Event::Notice {
                kind: "k".into(),
                subject: "s".into(),
                detail: format!("event {seq}"),
                call_id: None,
            }
        };
        StoredEvent {
            seq,
            at_ms: seq,
            event,
        }
    }

    /// A commit hook that tells `threads` which thread committed.
    fn tell(threads: &mpsc::Sender<String>) -> OnCommit {
        let threads = threads.clone();
        Box::new(move |ok| {
            assert!(ok, "the append failed");
            let me = std::thread::current();
            let _ = threads.send(me.name().unwrap_or("unnamed").to_owned());
        })
    }

    /// Appends event `seq` of run `r`, telling `threads` which thread committed it.
    fn put(
        store: &SqliteStore,
        lease: &Lease,
        seq: u64,
        durability: Durability,
        threads: &mpsc::Sender<String>,
    ) -> crate::Commit {
        store.append(lease, &[event(seq)], durability, Some(tell(threads)))
    }

    fn here() -> String {
        std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned()
    }

    #[test]
    fn a_lone_runs_appends_commit_on_its_thread_and_runs_at_once_share_the_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let lease = Lease::new_run("r", "w", u64::MAX / 4);
        let (threads, committed_on) = mpsc::channel();
        let one = store.driving();
        // A new store's first commit writes the log's header, which SQLite flushes to disk even
        // at `synchronous = NORMAL`: the writer thread makes it.
        let commit = put(&store, &lease, 1, Durability::Normal, &threads);
        commit.wait().unwrap();
        assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
        let_go(&store);
        let commit = put(&store, &lease, 2, Durability::Normal, &threads);
        // Committed before the call returned, on this thread.
        assert_eq!(committed_on.try_recv().unwrap(), here());
        commit.wait().unwrap();
        // A flush to disk is not waited for on a caller's thread (a request's, in a server).
        let commit = put(&store, &lease, 3, Durability::Fsync, &threads);
        commit.wait().unwrap();
        assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
        // Two runs driven at once: their appends go to the writer thread, to share its commits.
        let two = store.driving();
        let commit = put(&store, &lease, 4, Durability::Normal, &threads);
        commit.wait().unwrap();
        assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
        drop(two);
        drop(one);
        let seqs: Vec<u64> = store.events("r").unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
    }

    #[test]
    fn a_lone_run_commits_what_was_queued_before_its_append_first_in_order() {
        let (_dir, store, lease) = opened();
        let (threads, committed_on) = mpsc::channel();
        lock(&store.queue.pending).paused = true;
        // Queued (two runs driven), and left there by the writer thread.
        let (one, two) = (store.driving(), store.driving());
        let first = put(&store, &lease, 1, Durability::Normal, &threads);
        assert!(committed_on.try_recv().is_err(), "committed while queued");
        drop(two);
        // The run is alone now: its next append takes the queued one with it, first. (Taken in
        // the other order, the second would be refused: its log would not begin at 1.)
        let second = put(&store, &lease, 2, Durability::Normal, &threads);
        assert_eq!(committed_on.try_recv().unwrap(), here());
        assert_eq!(committed_on.try_recv().unwrap(), here());
        first.wait().unwrap();
        second.wait().unwrap();
        drop(one);
        lock(&store.queue.pending).paused = false;
        let seqs: Vec<u64> = store.events("r").unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn a_lone_runs_append_goes_to_the_writer_while_another_process_holds_the_database() {
        let (dir, store, lease) = opened();
        let (threads, committed_on) = mpsc::channel();
        let _one = store.driving();
        // Another process's write transaction.
        let other = rusqlite::Connection::open(dir.path().join("rein.db")).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        // The call returns at once: the caller's thread does not wait for the lock.
        let commit = put(&store, &lease, 1, Durability::Normal, &threads);
        assert!(
            committed_on.try_recv().is_err(),
            "committed past another's lock"
        );
        other.execute_batch("COMMIT").unwrap();
        commit.wait().unwrap();
        assert_eq!(committed_on.recv().unwrap(), "rein-store-writer");
        assert_eq!(store.events("r").unwrap().len(), 1);
    }

    /// Four runs appending at once from threads of their own, unwaited: the first half of each
    /// log while all four are driven (the writer thread commits, yielding before each batch),
    /// the rest once only one is (appends may then commit on their callers' threads, taking
    /// what is queued, while the writer may be yielding). Every append commits, and each log is
    /// in order: an append taken out of order would be refused, its sequence not following its
    /// log's last.
    #[test]
    fn runs_appending_at_once_commit_everything_in_order_across_the_writers_yields() {
        let (_dir, store, _) = opened();
        let store = std::sync::Arc::new(store);
        const EVENTS: u64 = 300;
        let runs = ["a", "b", "c", "d"];
        let mut drivers: Vec<_> = runs.iter().map(|_| store.driving()).collect();
        let halfway = std::sync::Arc::new(std::sync::Barrier::new(runs.len() + 1));
        let threads: Vec<_> = runs
            .iter()
            .map(|run| {
                let (store, halfway) = (store.clone(), halfway.clone());
                let lease = Lease::new_run(run, "w", u64::MAX / 4);
                std::thread::spawn(move || {
                    let append =
                        |seq| store.append(&lease, &[event(seq)], Durability::Normal, None);
                    let mut commits: Vec<_> = (1..=EVENTS / 2).map(append).collect();
                    halfway.wait();
                    halfway.wait();
                    commits.extend((EVENTS / 2 + 1..=EVENTS).map(append));
                    commits.into_iter().map(|c| c.wait()).collect::<Vec<_>>()
                })
            })
            .collect();
        halfway.wait();
        drivers.truncate(1);
        halfway.wait();
        for (run, thread) in runs.iter().zip(threads) {
            let results = thread.join().unwrap();
            assert!(
                results.iter().all(Result::is_ok),
                "an append of {run} failed"
            );
            let seqs: Vec<u64> = store.events(run).unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=EVENTS).collect::<Vec<_>>(), "the log of {run}");
        }
    }

    #[test]
    fn a_writer_thread_that_panicked_answers_later_appends_and_lets_the_store_close() {
        let (_dir, store, lease) = opened();
        let (one, two) = (store.driving(), store.driving());
        let boom: OnCommit = Box::new(|_| panic!("a hook panicked"));
        let commit = store.append(&lease, &[event(1)], Durability::Normal, Some(boom));
        // Its appender learns the store is gone rather than waiting for good...
        assert!(matches!(commit.wait(), Err(crate::StoreError::Closed)));
        // ... and so does every later one, on either path.
        let later = store.append(&lease, &[event(2)], Durability::Normal, None);
        assert!(matches!(later.wait(), Err(crate::StoreError::Closed)));
        drop(two);
        let later = store.append(&lease, &[event(2)], Durability::Normal, None);
        assert!(matches!(later.wait(), Err(crate::StoreError::Closed)));
        drop(one);
        // Dropping the store returns (its writer and checkpointer threads have ended).
        drop(store);
    }
}
