//! What one batch of the writer's (group commit) does inside its transaction: every append
//! checked against its run's lease and log before it is written, the runs' rows and approvals
//! kept in step with their logs, the ledger's writes; all of it applied whole, or, if an item
//! fails, item by item so that the item alone is undone.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use rein_core::EndState;

use super::writer::{Append, ApprovalChange, WriterMemory};
use crate::StoreError;
use crate::ledger::Job;
use crate::tx::{Tx, exec};

/// Commits a batch of appends and ledger writes in one transaction, so that one bad append or
/// write fails alone. Returns one result per append (a ledger write keeps its own), or why the
/// whole batch failed.
///
/// Almost no batch holds a bad item, so the batch is first applied whole, under one savepoint;
/// only if an item fails is that undone and the batch applied again, each item in a savepoint
/// of its own. A savepoint an item takes costs two statements, and SQLite copies each page the
/// item changes the first time it does (to undo it): in a busy gateway's batches (`rein bench
/// gateway`, 16 at once) the item savepoints were 8 of a request's 32 statements, and taking
/// them out saved about 2% of the server's instructions a request.
pub(super) fn commit_batch(
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
    // A lone append needs no savepoint: if it fails, the transaction is dropped.
    let isolate = batch.len() + jobs.len() > 1;
    if isolate {
        exec(tx.0, "SAVEPOINT batch")?;
        if let Some((results, (advanced, leases))) = apply_whole(tx.0, memory, batch, jobs) {
            tx.commit()?;
            memory.remember(advanced, leases);
            return Ok(results);
        }
        // Back to the batch's start. (An error here leaves the transaction in a state nobody
        // knows: none of it may commit.)
        exec(tx.0, "ROLLBACK TO batch")?;
    }
    let mut results = Vec::with_capacity(batch.len());
    let (mut advanced, mut leases): Applied = (Vec::new(), Vec::new());
    for append in batch {
        let run = append.lease.run_id.as_str();
        if fenced(memory, append) {
            results.push(Err(refused_before(run)));
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
                        memory.fenced.insert((
                            run.to_owned(),
                            append.lease.owner.clone(),
                            append.lease.token,
                        ));
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

/// What the runs advanced (run, lease token, last seq) and the leases read or changed (run,
/// holder, token) in a transaction: kept in the writer's memory once it commits.
type Applied<'a> = (
    Vec<(&'a str, u64, u64)>,
    Vec<(&'a str, Option<String>, u64)>,
);

/// The batch applied whole, with no savepoint for any item: one result per append, and what
/// the memory keeps once it commits. `None` as soon as an append or a write fails (the batch
/// must then be undone and applied item by item); an append of a writer already refused is
/// answered so without being applied, as item by item.
fn apply_whole<'a>(
    conn: &Connection,
    memory: &WriterMemory,
    batch: &'a [Append],
    jobs: &mut [Box<dyn Job>],
) -> Option<(Vec<Result<(), StoreError>>, Applied<'a>)> {
    let mut results = Vec::with_capacity(batch.len());
    let (mut advanced, mut leases): Applied<'a> = (Vec::new(), Vec::new());
    for append in batch {
        let run = append.lease.run_id.as_str();
        if fenced(memory, append) {
            results.push(Err(refused_before(run)));
            continue;
        }
        let seq = apply_append(conn, append, memory, &advanced, &mut leases).ok()?;
        advanced.push((run, append.lease.token, seq));
        results.push(Ok(()));
    }
    for job in jobs.iter_mut() {
        if !job.run(conn) {
            return None;
        }
    }
    Some((results, (advanced, leases)))
}

/// Whether this append's writer was refused an earlier append of its run under the same lease.
fn fenced(memory: &WriterMemory, append: &Append) -> bool {
    !memory.fenced.is_empty()
        && memory.fenced.contains(&(
            append.lease.run_id.clone(),
            append.lease.owner.clone(),
            append.lease.token,
        ))
}

/// The answer to an append of a writer refused before.
fn refused_before(run: &str) -> StoreError {
    conflict(
        run,
        "this writer was refused an earlier append of this run, so every later one is refused \
         too; resume the run to continue it"
            .into(),
    )
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
