//! Durable, append-only event storage for rein runs.
//!
//! [`Store`] is what the engine needs from storage: append events to a run's log (durably, in
//! order, with checked sequence numbers) and read logs and run summaries back. [`SqliteStore`] is
//! the embedded default: one SQLite file in WAL mode, written by a single thread that commits the
//! appends of all concurrent runs together (group commit).

mod ledger;
mod notes;
mod side;
mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rein_core::{EndState, StoredEvent};
use serde::Serialize;

pub use ledger::{BudgetLedger, Exhausted, LedgerLine, Reservation, UsageRow};
pub use notes::NoteStore;
pub use sqlite::SqliteStore;

/// A run as listed: what it is and where it stands, without its events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// The run's id.
    pub id: String,
    /// The agent's name.
    pub agent: String,
    /// The task.
    pub task: String,
    /// How it ended, or `None` while it has not (running, suspended or interrupted).
    pub status: Option<EndState>,
    /// When it started (ms since the epoch).
    pub created_ms: u64,
    /// When its last event was appended.
    pub updated_ms: u64,
    /// How many events its log holds.
    pub events: u64,
    /// How many model steps it took.
    pub steps: u32,
}

/// An approval request as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalSummary {
    /// The approval's id.
    pub id: String,
    /// The run it belongs to.
    pub run_id: String,
    /// The call it holds.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: String,
    /// When it was requested.
    pub created_ms: u64,
    /// When it expires, if it does.
    pub expires_ms: Option<u64>,
    /// Who decided it.
    pub decided_by: Option<String>,
}

/// What can go wrong in the store. Every error says which run and event it concerns when it can.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("state store {path}: {source}")]
    Database {
        /// The database file.
        path: String,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// A shared transaction failed to commit; every append in it failed with it.
    #[error("state store {path}: commit failed: {message}")]
    CommitFailed {
        /// The database file.
        path: String,
        /// The database's error.
        message: String,
    },
    /// An append did not follow the run's log: another process is driving the run, or a bug.
    #[error("run {run_id}: {detail}")]
    Conflict {
        /// The run.
        run_id: String,
        /// What clashed.
        detail: String,
    },
    /// A stored event cannot be decoded.
    #[error(
        "run {run_id}, event {seq}: cannot be read ({detail}); the state store may be damaged or written by a newer rein"
    )]
    Corrupt {
        /// The run.
        run_id: String,
        /// The event.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// No run has this id (or id prefix).
    #[error("no run matches `{0}`: `rein runs list` shows the runs in this state directory")]
    NotFound(String),
    /// Several runs start with this prefix.
    #[error("`{prefix}` matches several runs ({matches}): give more of the id")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// Some of the ids it matches.
        matches: String,
    },
    /// The state directory was written by a newer rein.
    #[error(
        "state store {path} has schema version {found}; this rein understands up to {supported}: upgrade rein"
    )]
    TooNew {
        /// The database file.
        path: String,
        /// The version found.
        found: i64,
        /// The newest this build reads.
        supported: i64,
    },
    /// The writer thread has stopped (after a fatal error), so nothing more can be appended.
    #[error("the state store's writer has stopped; no more events can be recorded")]
    Closed,
    /// The state directory could not be created.
    #[error("state directory {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A pending append. Awaiting it returns once the events are committed with the store's
/// durability; dropping it does not cancel the append.
#[derive(Debug)]
#[must_use = "an append is only known to be durable once its Commit is awaited"]
pub struct Commit(tokio::sync::oneshot::Receiver<Result<(), StoreError>>);

impl Commit {
    /// A commit that has already failed.
    pub fn failed(err: StoreError) -> Commit {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Err(err));
        Commit(rx)
    }

    /// Blocks the current thread until the commit is done (for callers outside async code).
    pub fn wait(self) -> Result<(), StoreError> {
        self.0.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl Future for Commit {
    type Output = Result<(), StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}

/// Durable storage of run logs.
///
/// Appends for one run must be made from one place, in order: the store checks that each batch
/// continues the log exactly (`seq` one past the last stored event) and refuses anything else,
/// which is what stops two processes from driving the same run.
pub trait Store: Send + Sync {
    /// Queues events for a run's log. The first event of a run must be `run_started`.
    fn append(&self, run_id: &str, events: &[StoredEvent]) -> Commit;
    /// A run's whole log, in order.
    fn events(&self, run_id: &str) -> Result<Vec<StoredEvent>, StoreError>;
    /// The most recent runs first.
    fn list_runs(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError>;
    /// One run's summary.
    fn run(&self, run_id: &str) -> Result<RunSummary, StoreError>;
    /// The full id of the one run whose id starts with `prefix`.
    fn resolve_run_id(&self, prefix: &str) -> Result<String, StoreError>;
    /// Bytes the store occupies on disk, after folding its write-ahead log into the main file.
    fn disk_bytes(&self) -> Result<u64, StoreError>;
    /// Approval requests, newest first; only undecided ones if `pending_only`.
    fn list_approvals(
        &self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<ApprovalSummary>, StoreError>;
    /// The one approval whose id starts with `prefix`.
    fn approval(&self, prefix: &str) -> Result<ApprovalSummary, StoreError>;
}
