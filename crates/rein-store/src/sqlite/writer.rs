//! The store's writer: the write connection, which commits the appends of all runs that are
//! waiting, and the budget ledger's writes, in one transaction (group commit), each in its own
//! savepoint so that one bad append or write fails alone. Every append is checked against its
//! run's lease and log before it is written. Who holds it (the writer thread, an appender that
//! found it idle, or a task of the appenders' runtime committing for runs at once) is decided in
//! [`super::queue`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rein_core::{Durability, EndState};
use rusqlite::{Connection, OptionalExtension, params};

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
    /// Budget ledger writes that go in the same transaction (each in its own savepoint).
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
struct WriterMemory {
    /// The last sequence number committed per run, under the lease token it was committed with,
    /// so each append is checked without reading the log's end.
    last_seq: HashMap<String, (u64, u64)>,
    /// (run, lease owner, lease token) that were refused once: every later append under them is
    /// refused too, so a writer that lost a race can never land a later event.
    fenced: HashSet<(String, String, u64)>,
    /// Each run's lease (owner, token) as this writer last read or wrote it. Valid only while no
    /// other connection has committed: see `data_version`.
    leases: HashMap<String, (Option<String>, u64)>,
    /// `PRAGMA data_version` when the caches were last known valid: it changes when any other
    /// connection (a lease taken by another process, a renewal) commits, and the caches are
    /// then dropped, so the lease check inside the write transaction stays exact without reading
    /// the runs table for every append.
    data_version: Option<i64>,
    /// The `synchronous` setting the connection has now.
    fsync: bool,
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

/// Commits a batch of appends and ledger writes in one transaction, each in its own savepoint so
/// that one bad append or write fails alone. Returns one result per append (a ledger write keeps
/// its own), or why the whole batch failed.
fn commit_batch(
    tx: Tx<'_>,
    path: &Path,
    memory: &mut WriterMemory,
    batch: &[Append],
    jobs: &mut [Box<dyn Job>],
) -> rusqlite::Result<Vec<Result<(), StoreError>>> {
    let db_err = |source| StoreError::Database {
        path: path.display().to_string(),
        source,
    };
    // Another connection committed since this writer's last commit: what it remembers of leases
    // and logs may be stale.
    match tx
        .0
        .prepare_cached("PRAGMA data_version")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
    {
        Ok(version) if memory.data_version == Some(version) => {}
        Ok(version) => {
            memory.leases.clear();
            memory.last_seq.clear();
            memory.data_version = Some(version);
        }
        Err(e) => return Err(e),
    }
    let mut results = Vec::with_capacity(batch.len());
    // Runs advanced in this transaction: (run, token, last seq), applied to memory on commit.
    let mut advanced: Vec<(&str, u64, u64)> = Vec::new();
    // Leases read or changed in this transaction, applied to memory on commit.
    let mut leases: Vec<(&str, Option<String>, u64)> = Vec::new();
    // A lone append needs no savepoint: if it fails, the transaction is dropped.
    let isolate = batch.len() + jobs.len() > 1;
    for append in batch {
        let run = append.lease.run_id.as_str();
        let fence = (
            run.to_owned(),
            append.lease.owner.clone(),
            append.lease.token,
        );
        if memory.fenced.contains(&fence) {
            results.push(Err(conflict(
                run,
                "this writer was refused an earlier append of this run, so every later one is \
                 refused too; resume the run to continue it"
                    .into(),
            )));
            continue;
        }
        let outcome = if isolate {
            // The savepoint could not be taken or undone: no part of the batch may commit.
            tx.item(|conn| apply_append(conn, append, memory, &advanced, &mut leases))?
        } else {
            apply_append(tx.0, append, memory, &advanced, &mut leases)
        };
        match outcome {
            Ok(seq) => {
                advanced.push((run, append.lease.token, seq));
                results.push(Ok(()));
            }
            Err(e) => {
                // What this append read may be half applied: read leases afresh next time.
                leases.retain(|(r, _, _)| *r != run);
                let e = match e {
                    ApplyError::Db(e) => db_err(e),
                    ApplyError::Conflict(detail) => {
                        memory.fenced.insert(fence);
                        conflict(run, detail)
                    }
                };
                if !isolate {
                    // The lone append failed: drop the transaction rather than commit a part.
                    drop(tx);
                    return Ok(vec![Err(e)]);
                }
                results.push(Err(e));
            }
        }
    }
    for job in jobs.iter_mut() {
        // A write that fails is undone alone, and answered with its own error.
        let _ = tx.item(|conn| if job.run(conn) { Ok(()) } else { Err(()) })?;
    }
    tx.commit()?;
    memory.remember(advanced, leases);
    Ok(results)
}

impl Writer {
    /// How many runs the writer remembers the log's end or lease of.
    #[cfg(test)]
    pub(super) fn runs_remembered(&self) -> usize {
        self.memory.last_seq.len().max(self.memory.leases.len())
    }
}

impl WriterMemory {
    /// Keeps what a committed batch did to runs' logs and leases. A run whose lease the batch
    /// released (it ended or suspended) is forgotten instead: nobody appends to it under that
    /// lease again, and whoever takes it next is checked against the file. Without that, a
    /// busy gateway (a run per request) grew these by about 200 bytes a request for the life of
    /// the process. Past `MEMORY_KEPT` runs (runs left driven, which release nothing), all is
    /// forgotten: it is only a cache of the file.
    fn remember(
        &mut self,
        advanced: Vec<(&str, u64, u64)>,
        leases: Vec<(&str, Option<String>, u64)>,
    ) {
        if self.last_seq.len().max(self.leases.len()) >= MEMORY_KEPT {
            self.last_seq.clear();
            self.leases.clear();
        }
        for (run, token, seq) in advanced {
            match self.last_seq.get_mut(run) {
                Some(kept) => *kept = (token, seq),
                None => {
                    self.last_seq.insert(run.to_owned(), (token, seq));
                }
            }
        }
        for (run, owner, token) in leases {
            if owner.is_none() {
                self.last_seq.remove(run);
                self.leases.remove(run);
                continue;
            }
            match self.leases.get_mut(run) {
                Some(kept) => *kept = (owner, token),
                None => {
                    self.leases.insert(run.to_owned(), (owner, token));
                }
            }
        }
    }
}

/// The most runs the writer remembers the log's end and lease of (see
/// [`WriterMemory::remember`]).
const MEMORY_KEPT: usize = 10_000;

fn conflict(run_id: &str, detail: String) -> StoreError {
    StoreError::Conflict {
        run_id: run_id.to_owned(),
        detail,
    }
}

enum ApplyError {
    Db(rusqlite::Error),
    Conflict(String),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(e: rusqlite::Error) -> Self {
        ApplyError::Db(e)
    }
}

/// A run that ends cancels the approvals it still waits for (found by `approvals_by_run`).
pub(super) const CANCEL_PENDING: &str =
    "UPDATE approvals SET status = 'cancelled' WHERE run_id = ?1 AND status = 'pending'";

fn apply_append<'a>(
    conn: &Connection,
    append: &'a Append,
    memory: &WriterMemory,
    advanced: &[(&str, u64, u64)],
    leases: &mut Vec<(&'a str, Option<String>, u64)>,
) -> Result<u64, ApplyError> {
    let lease = &append.lease;
    let run = lease.run_id.as_str();
    let Some(&(first_seq, first_at, _, _)) = append.rows.first() else {
        return Err(ApplyError::Conflict(
            "an append must hold at least one event".into(),
        ));
    };
    // The lease is checked inside the write transaction, so no other writer can change it
    // between this check and the commit: as this writer knows it (no other connection committed
    // since), else read.
    let known = leases
        .iter()
        .rev()
        .find(|(r, _, _)| *r == run)
        .map(|(_, owner, token)| (owner.clone(), *token as i64))
        .or_else(|| {
            memory
                .leases
                .get(run)
                .map(|(owner, token)| (owner.clone(), *token as i64))
        });
    let holder: Option<(Option<String>, i64)> = match known {
        Some(lease) => Some(lease),
        None => conn
            .prepare_cached("SELECT lease_owner, lease_token FROM runs WHERE id = ?1")?
            .query_row([run], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    };
    let last = match &holder {
        None => {
            if append.started.is_none() {
                return Err(ApplyError::Conflict(
                    "the first event of a run must be run_started".into(),
                ));
            }
            if lease.token != 1 {
                return Err(ApplyError::Conflict(format!(
                    "a new run is created under lease token 1, not {}",
                    lease.token
                )));
            }
            0
        }
        Some((owner, token)) => {
            if append.started.is_some() {
                return Err(ApplyError::Conflict(
                    "run_started must be the first event".into(),
                ));
            }
            if *token as u64 != lease.token || owner.as_deref() != Some(lease.owner.as_str()) {
                return Err(ApplyError::Conflict(format!(
                    "this writer ({}) does not hold the run's lease{}: is another process driving \
                     this run?",
                    lease.owner,
                    owner
                        .as_ref()
                        .map(|o| format!(" ({o} does)"))
                        .unwrap_or_default()
                )));
            }
            // Within this batch the run may already have advanced; otherwise trust memory kept
            // under this same lease, then the file.
            let known = advanced
                .iter()
                .rev()
                .find(|(r, t, _)| *r == run && *t == lease.token)
                .map(|(_, _, seq)| *seq)
                .or_else(|| match memory.last_seq.get(run) {
                    Some((t, seq)) if *t == lease.token => Some(*seq),
                    _ => None,
                });
            match known {
                Some(seq) => seq,
                None => conn
                    .prepare_cached("SELECT MAX(seq) FROM events WHERE run_id = ?1")?
                    .query_row([run], |r| r.get::<_, Option<i64>>(0))?
                    .map(|v| v as u64)
                    .unwrap_or(0),
            }
        }
    };
    if first_seq != last + 1 {
        return Err(ApplyError::Conflict(format!(
            "expected event {} but was given event {first_seq}; is another process driving this run?",
            last + 1
        )));
    }
    if let Some(s) = &append.started {
        conn.prepare_cached(
            "INSERT INTO runs (id, agent, task, status, created_ms, steps, user, tenant, parent_run,
                               lease_owner, lease_token, lease_expires_ms)
             VALUES (?1, ?2, ?3, NULL, ?4, 0, ?5, ?6, ?7, ?8, 1, ?9)",
        )?
        .execute(params![
            run,
            s.agent,
            s.task,
            first_at as i64,
            s.user,
            s.tenant,
            s.parent,
            lease.owner,
            lease.expires_ms as i64
        ])?;
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (run_id, seq, at_ms, payload, v) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut expected = first_seq;
    for (seq, at_ms, payload, format) in &append.rows {
        if *seq != expected {
            return Err(ApplyError::Conflict(format!(
                "events in one append must be consecutive (expected {expected}, got {seq})"
            )));
        }
        insert.execute(params![
            run,
            *seq as i64,
            *at_ms as i64,
            payload,
            i64::from(*format)
        ])?;
        expected += 1;
    }
    let last_new = expected - 1;
    // What the `runs` row shows, changed in one statement (the row is found and rewritten once,
    // not once per change): the steps, the cost, the status; at the end no cancellation is
    // pending; once the run ends or suspends nobody drives it (the lease token stays, so the
    // old holder is still fenced).
    if append.steps.is_some()
        || append.cost_micros > 0
        || append.status.is_some()
        || append.ends
        || append.releases
    {
        conn.prepare_cached(
            "UPDATE runs SET
               steps = COALESCE(?2, steps),
               cost_micros = cost_micros + ?3,
               status = CASE WHEN ?4 THEN ?5 ELSE status END,
               cancel_requested = CASE WHEN ?6 THEN NULL ELSE cancel_requested END,
               lease_owner = CASE WHEN ?7 THEN NULL ELSE lease_owner END,
               lease_expires_ms = CASE WHEN ?7 THEN 0 ELSE lease_expires_ms END
             WHERE id = ?1",
        )?
        .execute(params![
            run,
            append.steps.map(i64::from),
            append.cost_micros as i64,
            append.status.is_some(),
            append.status.flatten().map(EndState::as_str),
            append.ends,
            append.releases
        ])?;
    }
    if append.ends {
        conn.prepare_cached(CANCEL_PENDING)?.execute([run])?;
    }
    for change in &append.approvals {
        match change {
            ApprovalChange::Requested {
                id,
                call_id,
                tool,
                args,
                at_ms,
                expires_ms,
            } => {
                conn.prepare_cached(
                    "INSERT INTO approvals (id, run_id, call_id, tool, status, created_ms, expires_ms, args)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7)",
                )?
                .execute(params![id, run, call_id, tool, *at_ms as i64, expires_ms.map(|e| e as i64), args])?;
            }
            ApprovalChange::Decided {
                id,
                status,
                by,
                at_ms,
            } => {
                let changed = conn
                    .prepare_cached(
                        "UPDATE approvals SET status = ?2, decided_by = ?3, decided_ms = ?4
                         WHERE id = ?1 AND status = 'pending'",
                    )?
                    .execute(params![id, status, by, *at_ms as i64])?;
                if changed != 1 {
                    return Err(ApplyError::Conflict(format!(
                        "approval {id} is not pending: it was decided already"
                    )));
                }
            }
        }
    }
    let owner = (!append.releases).then(|| lease.owner.clone());
    leases.push((run, owner, lease.token));
    Ok(last_new)
}
