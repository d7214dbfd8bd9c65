//! The ledger's writer thread: writes are queued to it and committed together, each in a
//! savepoint of its own (group commit), so concurrent runs share a commit and no async caller
//! blocks a worker thread on the database.

use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll};

use rusqlite::Connection;

use crate::StoreError;
use crate::side::SideDb;
use crate::tx::Tx;

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
pub(super) trait Job: Send {
    /// Runs the write in the open transaction; false if it failed (its savepoint is undone).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction has committed (`None`) or failed (why).
    fn finish(self: Box<Self>, failed: Option<&str>, db: &SideDb);
}

pub(super) struct Write<T, F> {
    pub(super) op: Option<F>,
    pub(super) out: Option<rusqlite::Result<T>>,
    pub(super) done: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
}

impl<T: Send, F: FnOnce(&Connection) -> rusqlite::Result<T> + Send> Job for Write<T, F> {
    fn run(&mut self, conn: &Connection) -> bool {
        let out = self.op.take().map(|op| op(conn));
        let ok = matches!(out, Some(Ok(_)));
        self.out = out;
        ok
    }

    fn finish(self: Box<Self>, failed: Option<&str>, db: &SideDb) {
        let answer = match (self.out, failed) {
            (Some(Err(e)), _) => Err(db.err(e)),
            (_, Some(message)) => Err(StoreError::CommitFailed {
                path: db.path().display().to_string(),
                message: message.to_owned(),
            }),
            (Some(Ok(v)), None) => Ok(v),
            (None, None) => Err(StoreError::Closed),
        };
        let _ = self.done.send(answer);
    }
}

/// The writer thread, on its own connection: takes everything queued, runs it in one immediate
/// transaction (a savepoint per write), commits, answers every caller (errors name `db`'s file).
pub(super) fn write_loop(conn: &Connection, db: &SideDb, queue: &mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while let Ok(next) = queue.try_recv() {
            jobs.push(next);
        }
        let failed = commit_batch(conn, &mut jobs).err().map(|e| e.to_string());
        for job in jobs {
            job.finish(failed.as_deref(), db);
        }
    }
}

/// Runs `jobs` in one transaction: a write that fails is undone alone; anything else that fails
/// undoes them all.
fn commit_batch(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    let tx = Tx::begin(conn)?;
    for job in jobs.iter_mut() {
        let _ = tx.item(|conn| if job.run(conn) { Ok(()) } else { Err(()) })?;
    }
    tx.commit()
}
