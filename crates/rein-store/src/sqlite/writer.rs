//! The store's writer: the write connection, which commits the appends of all runs that are
//! waiting, and the budget ledger's writes, in one transaction (group commit), so that one bad
//! append or write fails alone (what goes into that transaction is [`super::batch`]'s). Who
//! holds it (the writer thread, an appender that
//! found it idle, or a task of the appenders' runtime committing for runs at once) is decided in
//! [`super::queue`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rein_core::{Durability, EndState};
use rusqlite::Connection;

use super::batch::commit_batch;
use crate::ledger::Job;
use crate::tx::Tx;
use crate::{AfterBatch, Lease, OnCommit, StoreError};

/// What the writer is sent. (An append is what it is sent most, and moved once: boxing
/// it to make a ledger write's message smaller would cost an allocation per append.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Work {
    /// Events for a run's log.
    Append(Append),
    /// A write of the budget ledger, whose tables are in the same file.
    Ledger(Box<dyn Job>),
}

/// One append, encoded by the caller's thread so the writer only writes. The `runs` row is only
/// touched when something it shows changes (start, a step, the end); the number of events and the
/// time of the last one are read from the events' primary key instead, so most commits dirty a
/// single page.
pub(crate) struct Append {
    pub(super) lease: Lease,
    /// (seq, at_ms, payload, the event's format version).
    pub(super) rows: Vec<(u64, u64, String, u32)>,
    pub(super) started: Option<Started>,
    /// A new status for the run: `Some(None)` clears it (resumed), `Some(Some(s))` sets it.
    pub(super) status: Option<Option<EndState>>,
    /// The run ends or suspends with this append: its lease is released with it.
    pub(super) releases: bool,
    /// The run ends with this append: approvals still pending can no longer be decided.
    pub(super) ends: bool,
    pub(super) steps: Option<u32>,
    /// What the model calls in this append cost, added to the run's total.
    pub(super) cost_micros: u64,
    pub(super) approvals: Vec<ApprovalChange>,
    pub(super) durability: Durability,
    pub(super) done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    pub(super) on_commit: Option<OnCommit>,
    /// Budget ledger writes that go in the same transaction (each undone alone if it fails).
    pub(super) ledger: Vec<Box<dyn Job>>,
}

/// What the `runs` row of a new run holds.
pub(super) struct Started {
    pub(super) agent: String,
    pub(super) task: String,
    pub(super) user: String,
    pub(super) tenant: String,
    pub(super) parent: Option<String>,
}

/// A change to the approvals table that an append carries.
pub(super) enum ApprovalChange {
    Requested {
        id: String,
        call_id: String,
        tool: String,
        args: String,
        at_ms: u64,
        expires_ms: Option<u64>,
    },
    Decided {
        id: String,
        status: &'static str,
        by: String,
        at_ms: u64,
    },
}

/// What the writer remembers between batches.
#[derive(Default)]
pub(super) struct WriterMemory {
    /// The last sequence number committed per run, under the lease token it was committed with,
    /// so each append is checked without reading the log's end.
    pub(super) last_seq: HashMap<String, (u64, u64)>,
    /// (run, lease owner, lease token) that were refused once: every later append under them is
    /// refused too, so a writer that lost a race can never land a later event.
    pub(super) fenced: HashSet<(String, String, u64)>,
    /// Each run's lease (owner, token) as this writer last read or wrote it. Valid only while no
    /// other connection has committed: see `data_version`.
    pub(super) leases: HashMap<String, (Option<String>, u64)>,
    /// `PRAGMA data_version` when the caches were last known valid: it changes when any other
    /// connection (a lease taken by another process, a renewal) commits, and the caches are
    /// then dropped, so the lease check inside the write transaction stays exact without reading
    /// the runs table for every append.
    pub(super) data_version: Option<i64>,
    /// The `synchronous` setting the connection has now.
    pub(super) fsync: bool,
}

/// After about this many events the checkpointer is asked to copy the log into the database
/// (SQLite's own automatic checkpoint, off on the writer, runs after 1000 pages). A pass copies
/// each page once however often it was written since the last (about one page per gateway
/// request either way) and costs two fsyncs and a walk of the log's index besides: at 2000
/// events rather than 1000, the checkpointer's CPU per request under `rein bench gateway` at one
/// request at a time went from 53 to 40 µs.
const CHECKPOINT_EVERY: usize = 2000;

/// The most the write-ahead log may grow to before the writer copies it into the database
/// itself: three times the size past which the checkpointer starts it over (`CATCH_UP_FRAMES`
/// of 4 KiB pages, with their frame headers, about 48 MiB). A checkpointer that keeps up stays
/// below it; one that falls behind (a thread starved on a loaded machine, a slow disk's fsyncs)
/// no longer lets it grow with everything written. (When the log started over past 1000
/// frames, `rein bench gateway` at 16 at once took it to 10.9 MB, 2.7 times that size, and a cap
/// at 1.5 times it, 6 MB, had the writer step in every few hundred milliseconds under that load,
/// its own checkpoints, fsyncs included, costing it latency.)
const LOG_CAP_BYTES: u64 = 3 * super::checkpoint::CATCH_UP_FRAMES as u64 * (4096 + 24);

/// How long the writer waits, when the log is past its cap, for the checkpointer's pass and for
/// readers to let go before leaving the log for the next look.
const CAP_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Looks (one per `CHECKPOINT_EVERY` events) skipped after a try to empty the log found it busy,
/// so a long reader costs the writer one wait now and then, not one per look.
const CAP_RETRY_LOOKS: usize = 10;

/// The write connection and what goes with it: whoever holds it (the writer thread, or an
/// appender or a runtime's task that found it idle, see [`super::queue`]) commits what is queued.
pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    /// The write-ahead log's file.
    log: PathBuf,
    memory: WriterMemory,
    since_checkpoint: usize,
    /// The log is past its cap (see `cap_log`); looks to skip after a busy try.
    cap_due: bool,
    cap_rest: usize,
    after: Arc<Mutex<Vec<AfterBatch>>>,
    checkpoint: mpsc::SyncSender<()>,
    /// Held by the checkpointer only while it finishes a checkpoint this writer outran.
    gate: Arc<Mutex<()>>,
    /// The log may start over at the next commit (everything in it was copied into the
    /// database, or it was emptied): SQLite then flushes the new log's header to disk, even at
    /// `synchronous = NORMAL`, which a caller's thread does not wait for.
    restarts: Arc<AtomicBool>,
}

/// How a batch went, for the one that committed it.
pub(super) enum Committed {
    /// Committed (or failed) and answered.
    Done,
    /// Not begun on a caller's thread, which does not wait (another process's write lock, the
    /// checkpointer, a new log's header): the batch is handed back, untouched, for the writer
    /// thread.
    Busy(Vec<Work>),
}

impl Writer {
    /// The writer of `conn`, whose `synchronous` setting is FULL when `fsync`.
    pub(super) fn new(
        conn: Connection,
        path: PathBuf,
        fsync: bool,
        after: Arc<Mutex<Vec<AfterBatch>>>,
        checkpoint: mpsc::SyncSender<()>,
        gate: Arc<Mutex<()>>,
        restarts: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            conn,
            log: super::checkpoint::log_path(&path),
            path,
            memory: WriterMemory {
                fsync,
                ..WriterMemory::default()
            },
            since_checkpoint: 0,
            cap_due: false,
            cap_rest: 0,
            after,
            checkpoint,
            gate,
            restarts,
        }
    }

    /// Whether the log passed its cap and waits to be emptied (by the writer thread: it may wait
    /// for readers).
    pub(super) fn cap_due(&self) -> bool {
        self.cap_due
    }

    /// Empties the log if it passed its cap (on the writer thread, once its batch is answered).
    pub(super) fn cap_if_due(&mut self) {
        // A reader that kept the log busy is given a few more looks' time before the next try.
        if std::mem::take(&mut self.cap_due) {
            if cap_log(&self.conn) {
                self.restarts.store(true, Ordering::Relaxed);
            } else {
                self.cap_rest = CAP_RETRY_LOOKS;
            }
        }
    }

    /// Commits `works` (appends and ledger writes, in the order they were queued) in one
    /// transaction and answers each. On a caller's thread (`here`), a batch that would wait
    /// (for another process's write lock, for the checkpointer, for the log's header to reach
    /// the disk) is handed back untouched.
    pub(super) fn commit(&mut self, works: Vec<Work>, here: bool) -> Committed {
        if works.is_empty() {
            return Committed::Done;
        }
        if here && self.restarts.load(Ordering::Relaxed) {
            return Committed::Busy(works);
        }
        // A caller's thread neither waits for the checkpointer nor blocks on another process.
        let turn = if here {
            match self.gate.try_lock() {
                Ok(turn) => turn,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Committed::Busy(works),
            }
        } else {
            self.gate.lock().unwrap_or_else(|p| p.into_inner())
        };
        // The batch is flushed to disk if any append in it asks for it (group commit).
        let fsync = works
            .iter()
            .any(|w| matches!(w, Work::Append(a) if a.durability == Durability::Fsync));
        let synced = if fsync == self.memory.fsync {
            Ok(())
        } else {
            let level = if fsync { "FULL" } else { "NORMAL" };
            self.conn
                .pragma_update(None, "synchronous", level)
                .map(|()| self.memory.fsync = fsync)
        };
        let begun = synced.and_then(|()| {
            if !here {
                return Tx::begin(&self.conn);
            }
            let _ = self.conn.busy_timeout(std::time::Duration::ZERO);
            let begun = Tx::begin(&self.conn);
            let _ = self.conn.busy_timeout(crate::side::BUSY_TIMEOUT);
            begun
        });
        if here
            && let Err(e) = &begun
            && e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
        {
            return Committed::Busy(works);
        }
        let (mut batch, mut jobs) = (Vec::new(), Vec::new());
        for work in works {
            match work {
                Work::Append(mut append) => {
                    jobs.append(&mut append.ledger);
                    batch.push(append);
                }
                Work::Ledger(job) => jobs.push(job),
            }
        }
        let outcome =
            begun.and_then(|tx| commit_batch(tx, &self.path, &mut self.memory, &batch, &mut jobs));
        drop(turn);
        let (results, failed) = match outcome {
            Ok(results) => {
                // Whether or not it started the log over, the next commit will not.
                self.restarts.store(false, Ordering::Relaxed);
                (results, None)
            }
            Err(e) => (
                fail_all(&e, &self.path, &mut self.memory, batch.len()),
                Some(e.to_string()),
            ),
        };
        self.since_checkpoint += jobs.len() + batch.iter().map(|a| a.rows.len()).sum::<usize>();
        if self.since_checkpoint >= CHECKPOINT_EVERY {
            self.since_checkpoint = 0;
            // One request waiting is enough: a full channel means one is on its way.
            let _ = self.checkpoint.try_send(());
            self.cap_due = self.cap_rest == 0
                && std::fs::metadata(&self.log).is_ok_and(|m| m.len() > LOG_CAP_BYTES);
            self.cap_rest = self.cap_rest.saturating_sub(1);
        }
        // The hooks run, then what comes after the batch, before any appender wakes: whatever
        // they hand on (audit records) is handled by the time the appender's next step runs.
        let mut answers = Vec::with_capacity(batch.len());
        for (append, result) in batch.into_iter().zip(results) {
            if let Some(hook) = append.on_commit {
                hook(result.is_ok());
            }
            answers.push((append.done, result));
        }
        self.after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|f| f());
        for (done, result) in answers {
            let _ = done.send(result);
        }
        for job in jobs {
            job.finish(failed.as_deref(), &self.path);
        }
        Committed::Done
    }
}

/// Copies the whole log into the database and empties it, waiting a moment (not the
/// connection's ten seconds) for the checkpointer's pass and for readers. False when something
/// still kept it busy: the log is left for a later look.
fn cap_log(conn: &Connection) -> bool {
    let _ = conn.busy_timeout(CAP_WAIT);
    let emptied = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok_and(|busy| busy == 0);
    let _ = conn.busy_timeout(crate::side::BUSY_TIMEOUT);
    emptied
}

fn fail_all(
    e: &rusqlite::Error,
    path: &Path,
    memory: &mut WriterMemory,
    n: usize,
) -> Vec<Result<(), StoreError>> {
    memory.last_seq.clear();
    memory.leases.clear();
    memory.data_version = None;
    let msg = e.to_string();
    (0..n)
        .map(|_| {
            Err(StoreError::CommitFailed {
                path: path.display().to_string(),
                message: msg.clone(),
            })
        })
        .collect()
}

impl Writer {
    /// How many runs the writer remembers the log's end or lease of.
    #[cfg(test)]
    pub(super) fn runs_remembered(&self) -> usize {
        self.memory.last_seq.len().max(self.memory.leases.len())
    }
}
