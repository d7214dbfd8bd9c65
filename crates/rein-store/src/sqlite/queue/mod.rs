//! The way to the store's writer: appends and ledger writes are queued in order, and whoever
//! holds the write connection commits what is queued, together. Three kinds of thread do:
//!
//! - **A lone run's caller.** An append of the one run driven in the process
//!   ([`crate::Store::driving`]) that asks for no flush to disk, finds the connection idle and
//!   nothing queued that asks for one, is committed by its own caller's thread, at once, with
//!   whatever was queued before it.
//! - **A task of the caller's async runtime, for runs at once.** Such an append made from a task
//!   while other runs are driven is queued, and the first of them spawns a [`Flush`] on the
//!   runtime: it lets the runtime's other ready tasks run (and append) first, then commits the
//!   queue (up to a batch) on its worker's thread, on the same terms, with the ledger writes
//!   riding on the appends.
//! - **The writer thread**, for everything else: ledger writes on their own, appends that ask for
//!   a flush to disk, appends made outside a task while runs are driven at once or from a thread
//!   other than the one whose [`Flush`] is on its way (which may be kept busy by a long task),
//!   a queue a [`Flush`] found the connection taken for, and any batch that would wait on a
//!   caller's thread (another process's write lock, the checkpointer, a new log's header flushed
//!   to disk), which is handed back to it.
//!
//! What a caller's thread may still wait for: the audit trail's file lock, which another process
//! holds only while it appends (or rotates the key), as the writer thread did.
//!
//! Waking the writer thread and being woken by it cost more than the commit itself at one request
//! at a time: on a virtual machine each wake of a thread on another CPU is an interrupt sent
//! through the hypervisor. `rein bench gateway --concurrency 1` on two cores spent 13 % of the
//! server's CPU in the kernel waking the writer (`perf`: `futex_wake` from the channel's send),
//! and the writer slept and woke about three times per request. At 16 requests at once the wakes
//! remained, one or more per batch; and on two free CPUs the writer thread, woken at once on the
//! other, committed batches of one or two appends (see [`Flush`] for what a task's commits
//! saved).
//!
//! A commit hook that panics on a caller's thread unwinds that caller (the batch's other
//! appenders learn `Closed`, as they did when the writer thread died); the store goes on. On the
//! writer thread it ends the thread, and with it the store's writing. The engine's hooks only
//! queue audit records, and its after-batch writer catches panics.
//!
//! Order is kept: queued work is only taken by whoever holds the connection, and all of it (up
//! to a batch, from the front), so a run's appends (an unwaited one, then the next) commit in
//! the order they were made.

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
    /// The write connection. Taken by the writer thread for each batch, or by a caller (or a
    /// [`Flush`]) that finds it idle; queued work is only taken by whoever holds it. Gone once the writer
    /// thread ended (closing the connection, and letting the checkpointer end).
    writer: Mutex<Option<Writer>>,
    /// Runs being driven in this process ([`crate::Store::driving`]): a caller commits its own
    /// append only when its run is the one, so runs at once still share commits.
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
    /// The thread that spawned the [`Flush`] on its way, if one is: appends queued meanwhile by
    /// tasks on that thread are left to it, not to the writer thread; one from another (another
    /// worker, which that one may keep waiting while it runs a long task) wakes the writer thread
    /// as before.
    flusher: Option<std::thread::ThreadId>,
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

    /// Whether an append queued asks for a flush to disk (which only the writer thread makes).
    fn asks_fsync(&self) -> bool {
        self.work
            .iter()
            .any(|w| matches!(w, Work::Append(a) if a.durability == Durability::Fsync))
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
    pub(super) fn commit_or_queue(self: &Arc<Self>, work: Work) {
        let (here, soon) = match &work {
            Work::Append(a) if a.durability != Durability::Fsync => {
                let alone = self.drivers.load(Ordering::Relaxed) <= 1;
                (alone, !alone)
            }
            _ => (false, false),
        };
        // Runs at once, appending from tasks of an async runtime: committed by a task of that
        // runtime, together with what its other tasks append meanwhile.
        // (Only from a task: a runtime entered but not running one might never run the Flush.)
        if soon
            && tokio::task::try_id().is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let me = std::thread::current().id();
            let mut pending = lock(&self.pending);
            if pending.closed {
                drop(pending);
                self.refuse(work);
                return;
            }
            if pending.flusher.is_none() {
                pending.flusher = Some(me);
                pending.work.push_back(work);
                drop(pending);
                runtime.spawn(Flush(Some(self.clone())).run());
            } else if pending.flusher == Some(me) {
                pending.work.push_back(work);
            } else {
                self.push(&mut pending, work);
            }
            return;
        }
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
        let Some(writer) = writer
            .as_mut()
            .filter(|_| pending.work.len() < MAX_BATCH && !pending.asks_fsync())
        else {
            self.push(&mut pending, work);
            return;
        };
        let mut works: Vec<Work> = pending.work.drain(..).collect();
        drop(pending);
        works.push(work);
        self.commit_here(writer, works);
    }

    /// Commits `works` on this thread (a caller's), or hands them back to the writer thread if
    /// they would wait here; asks the writer thread to empty the log if it is past its cap.
    fn commit_here(&self, writer: &mut Writer, works: Vec<Work>) {
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

    /// A [`Flush`]'s turn: commits what is queued on this thread (`here`: a task's, once the
    /// runtime's other ready tasks have run) if the connection is idle and nothing queued asks
    /// for a flush to disk; otherwise (or not `here`) leaves it to the writer thread, which
    /// takes it after the batch it is committing, or is woken for it.
    fn flush_queued(&self, here: bool) {
        let mut held = match here.then(|| self.writer.try_lock()) {
            Some(Ok(writer)) => Some(writer),
            Some(Err(TryLockError::Poisoned(p))) => Some(p.into_inner()),
            _ => None,
        };
        let mut pending = lock(&self.pending);
        pending.flusher = None;
        let fsync = pending.asks_fsync();
        let writer = held.as_mut().and_then(|w| w.as_mut()).filter(|_| !fsync);
        let works: Vec<Work> = match writer {
            Some(_) => {
                let n = pending.work.len().min(MAX_BATCH);
                pending.work.drain(..n).collect()
            }
            None => Vec::new(),
        };
        // What is left (all of it, if it is not committed here) is the writer thread's.
        if !pending.work.is_empty() && pending.idle {
            self.ready.notify_one();
        }
        drop(pending);
        if let Some(writer) = writer
            && !works.is_empty()
        {
            self.commit_here(writer, works);
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

/// The commit of appends queued by tasks of an async runtime while runs are driven at once
/// (see [`Shared::commit_or_queue`]), spawned on that runtime by the first of them. It yields,
/// so that the runtime runs its other ready tasks and polls for I/O first, and the appends those
/// tasks make (the other runs' next steps) join the queue; yields a second time (the tasks that
/// poll woke append after this one's first turn), and again while the queue keeps growing, up to
/// [`MORE_YIELDS`] times more. Then it commits the queue (up to a batch; what is left is the
/// writer thread's) on its worker's thread, as a lone run's
/// caller commits its own append: not waiting for another process's lock, the checkpointer or
/// the disk (such a batch is handed back to the writer thread).
///
/// The writer thread did this before, woken for each batch. At 16 requests at once
/// (`rein bench gateway`), on one CPU its wakes, the worker's wakes by it and the switches
/// between them were about a tenth of the server's CPU (`perf`: `Unparker::unpark` from the
/// writer's answers, the worker parking in `epoll_wait` while the writer ran): CPU per request
/// went from 139-147 to 121-131 µs with this. On two CPUs, the writer thread, woken at once on
/// the other, committed batches of one or two appends: 56-62 KiB written per request became
/// 19.6, and CPU per request went from 181-207 to 126-131 µs.
///
/// Dropped unrun (its runtime shutting down), it leaves the queue to the writer thread. A commit
/// hook that panics unwinds the task (the runtime catches it): the batch is committed, but its
/// other appenders (and the ledger writes riding with them) are answered `Closed`, and its
/// after-batch work waits for the next batch, as on a lone run's caller's thread.
struct Flush(Option<Arc<Shared>>);

/// A [`Flush`] yields at most this many times more while the queue grows.
const MORE_YIELDS: usize = 4;

impl Flush {
    async fn run(mut self) {
        // Once, and again while the others' appends keep coming (the tasks the runtime's poll
        // for I/O woke append when their turn comes, after this one's first).
        let mut queued = 0;
        for _ in 0..=MORE_YIELDS {
            tokio::task::yield_now().await;
            let now = self.0.as_ref().map_or(0, |s| lock(&s.pending).work.len());
            if now == queued {
                break;
            }
            queued = now;
        }
        if let Some(shared) = self.0.take() {
            shared.flush_queued(true);
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            shared.flush_queued(false);
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
mod tests;
