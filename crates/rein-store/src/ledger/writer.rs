//! A ledger write as the store's writer runs it: queued with the event appends, committed in
//! their transaction (group commit; one that fails is undone alone), so a gateway request's hold
//! goes in with its run's start. A write queued alone goes to the writer thread, so no async
//! caller blocks a worker thread on the database for it.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rusqlite::Connection;

use crate::StoreError;
use crate::side::SideDb;
use crate::sqlite::{Work, WorkQueue};

/// A write queued to the ledger: settled once the transaction holding it commits or fails.
/// Await it, or [`Queued::wait`] for it outside async code; dropped, the write still happens.
#[derive(Debug)]
#[must_use = "a ledger write is only known to be done once it is awaited"]
pub struct Queued<T>(pub(super) tokio::sync::oneshot::Receiver<Result<T, StoreError>>);

impl<T> Queued<T> {
    /// Blocks the current thread until the write is done (for callers outside async code).
    pub fn wait(self) -> Result<T, StoreError> {
        self.0.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl<T> Future for Queued<T> {
    type Output = Result<T, StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

/// One queued write, type-erased for the writer thread.
pub(crate) trait Job: Send {
    /// Runs the write in the open transaction; false if it failed (what it did is undone).
    /// Run again after an undo, it writes again, and its answer is the last run's.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction has committed (`None`) or failed (why); errors
    /// name the database at `path`.
    fn finish(self: Box<Self>, failed: Option<&str>, path: &Path);
}

pub(super) struct Write<T, F> {
    pub(super) op: F,
    pub(super) out: Option<rusqlite::Result<T>>,
    pub(super) done: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: FnMut(&Connection) -> rusqlite::Result<T> + Send> Job for Write<T, F> {
    fn run(&mut self, conn: &Connection) -> bool {
        let out = (self.op)(conn);
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&str>, path: &Path) {
        let answer = match (self.out, failed) {
            (Some(Err(source)), _) => Err(StoreError::Database {
                path: path.display().to_string(),
                source,
            }),
            (_, Some(message)) => Err(StoreError::CommitFailed {
                path: path.display().to_string(),
                message: message.to_owned(),
            }),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Closed),
        };
        let _ = self.done.send(answer);
    }
}

/// A ledger write prepared to go to the store together with an append
/// ([`crate::Store::append_with`]), so the two share one commit
/// ([`crate::BudgetLedger::later`]). Dropped before that, it is queued on its own: a prepared
/// write is always done.
pub struct LedgerWrite {
    /// Behind a mutex only so a run's driver holding writes stays `Sync`; never contended.
    pub(super) job: Mutex<Option<Box<dyn Job>>>,
    pub(super) queue: WorkQueue,
    pub(super) db: Arc<SideDb>,
}

impl LedgerWrite {
    /// The write, for the store's writer to run with an append.
    pub(crate) fn take(self) -> Option<Box<dyn Job>> {
        self.job.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl std::fmt::Debug for LedgerWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWrite")
            .field("path", &self.db.path())
            .field(
                "sent",
                &self.job.lock().map(|j| j.is_none()).unwrap_or(true),
            )
            .finish()
    }
}

impl Drop for LedgerWrite {
    fn drop(&mut self) {
        let job = self.job.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(job) = job {
            self.queue.send(Work::Ledger(job));
        }
    }
}
