//! Durable, append-only event storage for rein runs.
//!
//! [`Store`] is what the engine needs from storage: append events to a run's log (durably, in
//! order, with checked sequence numbers, only under the run's lease) and read logs and run
//! summaries back. [`SqliteStore`] is the embedded default: one SQLite file in WAL mode, written by
//! a single thread that commits the appends of all concurrent runs together (group commit).
//!
//! A run is driven by at most one writer at a time. The writer holds the run's [`Lease`] (an
//! owner, a token that grows with every new holder, an expiry it renews); every append names the
//! lease it is made under and is refused unless that lease is the run's current one. A writer
//! whose lease was taken over, or that lost one sequence race, has every later append refused.

mod conversations;
mod ledger;
mod notes;
mod side;
mod sqlite;
mod tokens;
mod tx;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use rein_core::{Durability, EndState, StoredEvent};
use serde::Serialize;

pub use conversations::{
    Conversation, ConversationFilter, ConversationRef, ConversationRow, ConversationStore, HoldAt,
    Resumed,
};
pub use ledger::{
    Admission, BudgetLedger, Exhausted, LedgerLine, LedgerWrite, Queued, Reservation, Settled,
    UsageRow,
};
pub use notes::NoteStore;
pub use sqlite::{CheckpointsPaused, SqliteStore};
pub use tokens::{TokenRow, TokenStore};

/// What model calls cost on one day (UTC) for one model, agent and user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRow {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// The model.
    pub model: String,
    /// The agent.
    pub agent: String,
    /// Who the runs acted for.
    pub user: String,
    /// What the calls cost, in millionths of a US dollar.
    pub cost_micros: u64,
    /// Tokens in and out.
    pub tokens: u64,
    /// Model calls.
    pub calls: u64,
}

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
    /// Who the run acts for.
    pub user: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// For a sub-agent's run, the run that delegated to it.
    pub parent: Option<String>,
    /// When it started (ms since the epoch).
    pub created_ms: u64,
    /// When its last event was appended.
    pub updated_ms: u64,
    /// How many events its log holds.
    pub events: u64,
    /// How many model steps it took.
    pub steps: u32,
    /// What its model calls cost, in millionths of a US dollar.
    pub cost_micros: u64,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// At most this many (the most recent first); 0 means 50.
    pub limit: usize,
    /// Only runs of this agent.
    pub agent: Option<String>,
    /// Only runs for this user.
    pub user: Option<String>,
    /// Only runs of this tenant.
    pub tenant: Option<String>,
    /// Only runs in this state; `Some(None)` asks for runs that have not ended.
    pub status: Option<Option<EndState>>,
    /// Only runs started at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only runs started before this time: the next page after a run started at this time.
    pub before_ms: Option<u64>,
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
    /// `pending`, `approved`, `denied`, `expired`, or `cancelled` (its run ended first).
    pub status: String,
    /// When it was requested.
    pub created_ms: u64,
    /// When it expires, if it does.
    pub expires_ms: Option<u64>,
    /// The arguments of the call it holds (`null` for an approval recorded before they were
    /// kept).
    pub args: serde_json::Value,
    /// Who decided it.
    pub decided_by: Option<String>,
    /// The tenant of its run.
    pub tenant: String,
}

/// Which approvals to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApprovalFilter {
    /// Only undecided ones.
    pub pending_only: bool,
    /// Only those of this tenant's runs.
    pub tenant: Option<String>,
    /// At most this many, newest first; 0 means 200.
    pub limit: usize,
}

/// The right to append to one run's log, held by one writer at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// The run.
    pub run_id: String,
    /// Who holds it (a process and a nonce, see the engine's lease owners).
    pub owner: String,
    /// Grows with every new holder; appends carry it, so a writer that lost the lease is fenced.
    pub token: u64,
    /// When it lapses unless renewed (ms since the epoch).
    pub expires_ms: u64,
}

impl Lease {
    /// The lease of a run that does not exist yet: its `run_started` append creates the run
    /// with this lease.
    pub fn new_run(run_id: &str, owner: &str, expires_ms: u64) -> Lease {
        Lease {
            run_id: run_id.to_owned(),
            owner: owner.to_owned(),
            token: 1,
            expires_ms,
        }
    }
}

/// Who holds a run's lease, as others see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseHolder {
    /// The holder.
    pub owner: String,
    /// When the lease lapses unless renewed.
    pub expires_ms: u64,
}

/// What a renewal learned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Renewed {
    /// Someone asked for the run to be cancelled (and who).
    pub cancel_requested: Option<String>,
}

/// Called by the store once an append has committed (`true`) or failed (`false`).
pub type OnCommit = Box<dyn FnOnce(bool) + Send>;

/// Called by the store after the commit hooks of each batch of appends have run, before any of
/// their appenders is told the batch committed; it answers whether it wants to be called again
/// (false once whatever it serves is gone).
pub type AfterBatch = Box<dyn Fn() -> bool + Send>;

/// A run being driven in this process, counted by its store while this is kept: with one run at
/// a time, its appends are committed on its own thread rather than handed to the writer thread
/// (see [`Store::driving`]). Dropped when the driver stops.
#[derive(Debug, Default)]
pub struct Driving(Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>);

impl Driving {
    pub(crate) fn counted(count: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Driving {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Driving(Some(count))
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
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
    /// An append did not follow the run's log, or was made without the run's lease: another
    /// process is driving the run, or a bug.
    #[error("run {run_id}: {detail}")]
    Conflict {
        /// The run.
        run_id: String,
        /// What clashed.
        detail: String,
    },
    /// Another live writer holds the run's lease.
    #[error(
        "run {run_id} is being driven by {holder} (its lease runs until {expires_ms} ms); try again once it has stopped"
    )]
    Leased {
        /// The run.
        run_id: String,
        /// Who holds it.
        holder: String,
        /// When its lease lapses unless renewed.
        expires_ms: u64,
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
    /// An event was written in a newer event format than this build reads.
    #[error(
        "run {run_id}, event {seq} was written in event format {found} by a newer rein; this rein reads formats up to {supported}: upgrade rein to read this run"
    )]
    NewerEvent {
        /// The run.
        run_id: String,
        /// The event.
        seq: u64,
        /// Its format.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// No run has this id (or id prefix).
    #[error("no run matches `{0}`: `rein runs list` shows the runs in this state directory")]
    NotFound(String),
    /// No approval has this id (or id prefix).
    #[error("no approval matches `{0}`: `rein approvals list --all` shows the approval requests")]
    ApprovalNotFound(String),
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
    /// The budget ledger's own file from before schema version 5 could not be read to move its
    /// spend into the store.
    #[error(
        "{path}: the budget ledger of an older rein could not be read to move its spend into rein.db ({source}); repair it, or move it away to start every budget from nothing"
    )]
    OldLedger {
        /// The old file.
        path: String,
        /// Why.
        source: rusqlite::Error,
    },
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
/// Appends for one run are made under its lease, in order: the store checks that the lease is
/// the run's current one and that each batch continues the log exactly (`seq` one past the last
/// stored event), and refuses anything else, which is what stops two processes from driving the
/// same run. PostgreSQL (fleet mode) implements the same trait and passes the same suite.
pub trait Store: Send + Sync {
    /// Queues events for a run's log under `lease`. The first event of a run must be
    /// `run_started`, appended under [`Lease::new_run`]. `on_commit` runs once the append has
    /// committed or failed (the audit trail follows commits through it).
    fn append(
        &self,
        lease: &Lease,
        events: &[StoredEvent],
        durability: Durability,
        on_commit: Option<OnCommit>,
    ) -> Commit {
        self.append_with(lease, events, durability, on_commit, Vec::new())
    }
    /// As [`Store::append`], with budget ledger writes ([`BudgetLedger::later`]) committed in
    /// the same transaction. Each write keeps its own answer: one that fails is undone alone,
    /// and an append refused does not undo them.
    fn append_with(
        &self,
        lease: &Lease,
        events: &[StoredEvent],
        durability: Durability,
        on_commit: Option<OnCommit>,
        writes: Vec<LedgerWrite>,
    ) -> Commit;
    /// Registers `f` to run after each batch of appends' commit hooks, on the thread that ran
    /// them, before the appenders are answered: what the hooks queued (audit records) is handled
    /// once per batch, and is done by the time an appender learns its events committed.
    fn after_batch(&self, f: AfterBatch);
    /// Counts a run being driven in this process until the guard is dropped. A store may then
    /// commit the appends of a run driven alone on the appender's own thread: waking a writer
    /// thread and being woken by it cost more than the commit (see the SQLite store's queue);
    /// with several runs at once their appends share commits instead (the SQLite store's are
    /// made by a task of the appenders' async runtime, once its other tasks have appended).
    fn driving(&self) -> Driving {
        Driving::default()
    }
    /// The budget ledger kept in this store: its writes are committed with the appends queued
    /// beside them, so a run's hold and its events share a commit.
    fn ledger(&self) -> Result<BudgetLedger, StoreError>;
    /// Takes the lease of an existing run for `ttl_ms`: free, lapsed, or held by an owner that
    /// `holder_gone` says no longer exists (a process on this machine that died). Refused with
    /// [`StoreError::Leased`] while another live writer holds it.
    fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        now_ms: u64,
        holder_gone: &dyn Fn(&str) -> bool,
    ) -> Result<Lease, StoreError>;
    /// Extends a held lease; [`StoreError::Conflict`] if it was taken over.
    fn renew_lease(&self, lease: &Lease, ttl_ms: u64, now_ms: u64) -> Result<Renewed, StoreError>;
    /// Gives a lease up (nothing happens if it is no longer held).
    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;
    /// Who holds a run's lease now, if anyone (a lapsed lease is still reported, with its
    /// expiry in the past).
    fn lease_holder(&self, run_id: &str) -> Result<Option<LeaseHolder>, StoreError>;
    /// Asks the run's driver to cancel it at its next step boundary.
    fn request_cancel(&self, run_id: &str, by: &str) -> Result<(), StoreError>;
    /// Who asked for the run to be cancelled, if anyone has (read at each model step).
    fn cancel_requested(&self, run_id: &str) -> Result<Option<String>, StoreError>;
    /// A run's whole log, in order.
    fn events(&self, run_id: &str) -> Result<Vec<StoredEvent>, StoreError>;
    /// A run's events after `after_seq`, in order.
    fn events_after(&self, run_id: &str, after_seq: u64) -> Result<Vec<StoredEvent>, StoreError>;
    /// Runs, the most recent first.
    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError>;
    /// One run's summary.
    fn run(&self, run_id: &str) -> Result<RunSummary, StoreError>;
    /// The full id of the one run whose id starts with `prefix`.
    fn resolve_run_id(&self, prefix: &str) -> Result<String, StoreError>;
    /// Bytes the store occupies on disk, after folding its write-ahead log into the main file.
    fn disk_bytes(&self) -> Result<u64, StoreError>;
    /// Approval requests, newest first.
    fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<ApprovalSummary>, StoreError>;
    /// The one approval whose id starts with `prefix`.
    fn approval(&self, prefix: &str) -> Result<ApprovalSummary, StoreError>;
}
