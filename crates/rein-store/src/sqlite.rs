//! The embedded SQLite store: WAL mode, one writer thread committing the appends of all runs in
//! shared transactions (group commit), and a separate connection for reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rein_core::{Durability, EndState, Event, StoredEvent};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{ApprovalSummary, Commit, RunSummary, Store, StoreError};

/// The schema version this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

/// At most this many appends share one transaction.
const MAX_BATCH: usize = 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id          TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    task        TEXT NOT NULL,
    status      TEXT,
    created_ms  INTEGER NOT NULL,
    steps       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_ms);
CREATE TABLE IF NOT EXISTS approvals (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    tool        TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    decided_by  TEXT,
    decided_ms  INTEGER
);
CREATE INDEX IF NOT EXISTS approvals_by_status ON approvals (status, created_ms);
CREATE TABLE IF NOT EXISTS events (
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    payload  TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
";

/// One append, encoded by the caller's thread so the writer only writes. The `runs` row is only
/// touched when something it shows changes (start, a step, the end); the number of events and the
/// time of the last one are read from the events' primary key instead, so most commits dirty a
/// single page.
struct Append {
    run_id: String,
    rows: Vec<(u64, u64, String)>,
    started: Option<(String, String)>,
    /// A new status for the run: `Some(None)` clears it (resumed), `Some(Some(s))` sets it.
    status: Option<Option<EndState>>,
    steps: Option<u32>,
    approvals: Vec<ApprovalChange>,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// A change to the approvals table that an append carries.
enum ApprovalChange {
    Requested {
        id: String,
        call_id: String,
        tool: String,
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

/// The embedded store. Cheap to share behind an `Arc`; dropping it waits for queued appends.
pub struct SqliteStore {
    path: PathBuf,
    sender: Option<mpsc::Sender<Append>>,
    writer: Option<JoinHandle<()>>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `state_dir`, as `rein.db`.
    pub fn open(state_dir: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("rein.db");
        let db_err = |source| StoreError::Database {
            path: path.display().to_string(),
            source,
        };

        let mut writer = Connection::open(&path).map_err(db_err)?;
        writer
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Fsync => "FULL",
        };
        writer
            .pragma_update(None, "synchronous", sync)
            .map_err(db_err)?;
        migrate(&mut writer, &path)?;

        let reader = Connection::open(&path).map_err(db_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;

        let (sender, receiver) = mpsc::channel();
        let writer_path = path.clone();
        let handle = std::thread::Builder::new()
            .name("rein-store-writer".into())
            .spawn(move || write_loop(writer, writer_path, receiver))
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SqliteStore {
            path,
            sender: Some(sender),
            writer: Some(handle),
            reader: Mutex::new(reader),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Database {
            path: self.path.display().to_string(),
            source,
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self
            .reader
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&conn)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let db_err = |source| StoreError::Database {
        path: path.display().to_string(),
        source,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db_err)?;
        tx.execute_batch(SCHEMA).map_err(db_err)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
    }
    Ok(())
}

fn write_loop(mut conn: Connection, path: PathBuf, receiver: mpsc::Receiver<Append>) {
    // The last sequence number committed per run, so each append is checked without a read.
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let results = commit_batch(&mut conn, &path, &mut last_seq, &batch);
        for (append, result) in batch.into_iter().zip(results) {
            let _ = append.done.send(result);
        }
    }
}

/// Commits a batch in one transaction, each append in its own savepoint so that one bad append
/// fails alone. Returns one result per append.
fn commit_batch(
    conn: &mut Connection,
    path: &Path,
    last_seq: &mut HashMap<String, u64>,
    batch: &[Append],
) -> Vec<Result<(), StoreError>> {
    let db_err = |source| StoreError::Database {
        path: path.display().to_string(),
        source,
    };
    let fail_all = |e: rusqlite::Error, last_seq: &mut HashMap<String, u64>| {
        last_seq.clear();
        let msg = e.to_string();
        batch
            .iter()
            .map(|_| {
                Err(StoreError::CommitFailed {
                    path: path.display().to_string(),
                    message: msg.clone(),
                })
            })
            .collect()
    };
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(e, last_seq),
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut advanced: Vec<(&str, u64)> = Vec::with_capacity(batch.len());
    // With one append there is nothing to isolate it from: the transaction is its savepoint.
    let isolate = batch.len() > 1;
    for append in batch {
        let outcome = (|| {
            let to_store_error = |e| match e {
                ApplyError::Db(e) => db_err(e),
                ApplyError::Conflict(detail) => StoreError::Conflict {
                    run_id: append.run_id.clone(),
                    detail,
                },
            };
            if !isolate {
                return apply_append(&tx, append, last_seq, &advanced).map_err(to_store_error);
            }
            let sp = tx.savepoint().map_err(db_err)?;
            let last = apply_append(&sp, append, last_seq, &advanced).map_err(to_store_error)?;
            sp.commit().map_err(db_err)?;
            Ok(last)
        })();
        match outcome {
            Ok(last) => {
                advanced.push((&append.run_id, last));
                results.push(Ok(()));
            }
            Err(e) => {
                if !isolate {
                    // The lone append failed: drop the transaction rather than commit a part.
                    drop(tx);
                    return vec![Err(e)];
                }
                results.push(Err(e));
            }
        }
    }
    if let Err(e) = tx.commit() {
        return fail_all(e, last_seq);
    }
    for (run, seq) in advanced {
        last_seq.insert(run.to_owned(), seq);
    }
    results
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

fn apply_append(
    conn: &Connection,
    append: &Append,
    last_seq: &HashMap<String, u64>,
    advanced: &[(&str, u64)],
) -> Result<u64, ApplyError> {
    let Some(&(first_seq, first_at, _)) = append.rows.first() else {
        return Err(ApplyError::Conflict(
            "an append must hold at least one event".into(),
        ));
    };
    // Within this batch a run may already have advanced; otherwise trust the cache, then the file.
    let known = advanced
        .iter()
        .rev()
        .find(|(run, _)| *run == append.run_id)
        .map(|(_, seq)| *seq)
        .or_else(|| last_seq.get(&append.run_id).copied());
    let last = match known {
        Some(seq) => seq,
        None => conn
            .prepare_cached("SELECT MAX(seq) FROM events WHERE run_id = ?1")?
            .query_row([&append.run_id], |r| r.get::<_, Option<i64>>(0))?
            .map(|v| v as u64)
            .unwrap_or(0),
    };
    if first_seq != last + 1 {
        return Err(ApplyError::Conflict(format!(
            "expected event {} but was given event {first_seq}; is another process driving this run?",
            last + 1
        )));
    }
    if let Some((agent, task)) = &append.started {
        if last != 0 {
            return Err(ApplyError::Conflict(
                "run_started must be the first event".into(),
            ));
        }
        conn.prepare_cached(
            "INSERT INTO runs (id, agent, task, status, created_ms, steps)
             VALUES (?1, ?2, ?3, NULL, ?4, 0)",
        )?
        .execute(params![append.run_id, agent, task, first_at as i64])?;
    } else if last == 0 {
        return Err(ApplyError::Conflict(
            "the first event of a run must be run_started".into(),
        ));
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (run_id, seq, at_ms, payload) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut expected = first_seq;
    for (seq, at_ms, payload) in &append.rows {
        if *seq != expected {
            return Err(ApplyError::Conflict(format!(
                "events in one append must be consecutive (expected {expected}, got {seq})"
            )));
        }
        insert.execute(params![append.run_id, *seq as i64, *at_ms as i64, payload])?;
        expected += 1;
    }
    let last_new = expected - 1;
    if let Some(steps) = append.steps {
        conn.prepare_cached("UPDATE runs SET steps = ?2 WHERE id = ?1")?
            .execute(params![append.run_id, i64::from(steps)])?;
    }
    if let Some(status) = append.status {
        conn.prepare_cached("UPDATE runs SET status = ?2 WHERE id = ?1")?
            .execute(params![append.run_id, status.map(EndState::as_str)])?;
    }
    for change in &append.approvals {
        match change {
            ApprovalChange::Requested {
                id,
                call_id,
                tool,
                at_ms,
                expires_ms,
            } => {
                conn.prepare_cached(
                    "INSERT INTO approvals (id, run_id, call_id, tool, status, created_ms, expires_ms)
                     VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6)",
                )?
                .execute(params![id, append.run_id, call_id, tool, *at_ms as i64, expires_ms.map(|e| e as i64)])?;
            }
            ApprovalChange::Decided {
                id,
                status,
                by,
                at_ms,
            } => {
                conn.prepare_cached("UPDATE approvals SET status = ?2, decided_by = ?3, decided_ms = ?4 WHERE id = ?1")?
                    .execute(params![id, status, by, *at_ms as i64])?;
            }
        }
    }
    Ok(last_new)
}

fn parse_status(run_id: &str, raw: Option<String>) -> Result<Option<EndState>, StoreError> {
    raw.map(|s| {
        serde_json::from_value(serde_json::Value::String(s.clone())).map_err(|_| {
            StoreError::Corrupt {
                run_id: run_id.into(),
                seq: 0,
                detail: format!("unknown status `{s}`"),
            }
        })
    })
    .transpose()
}

/// A run's summary columns; the last event's position and time come from the events' key.
const APPROVAL_COLUMNS: &str =
    "id, run_id, call_id, tool, status, created_ms, expires_ms, decided_by";

fn approval_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalSummary> {
    Ok(ApprovalSummary {
        id: row.get(0)?,
        run_id: row.get(1)?,
        call_id: row.get(2)?,
        tool: row.get(3)?,
        status: row.get(4)?,
        created_ms: row.get::<_, i64>(5)? as u64,
        expires_ms: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        decided_by: row.get(7)?,
    })
}

const SUMMARY_COLUMNS: &str = "id, agent, task, status, created_ms,
    (SELECT at_ms FROM events WHERE run_id = runs.id ORDER BY seq DESC LIMIT 1),
    (SELECT MAX(seq) FROM events WHERE run_id = runs.id), steps";

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(RunSummary, Option<String>)> {
    Ok((
        RunSummary {
            id: row.get(0)?,
            agent: row.get(1)?,
            task: row.get(2)?,
            status: None,
            created_ms: row.get::<_, i64>(4)? as u64,
            updated_ms: row.get::<_, i64>(5)? as u64,
            events: row.get::<_, i64>(6)? as u64,
            steps: row.get::<_, i64>(7)? as u32,
        },
        row.get(3)?,
    ))
}

impl Store for SqliteStore {
    fn append(&self, run_id: &str, events: &[StoredEvent]) -> Commit {
        let (done, rx) = tokio::sync::oneshot::channel();
        let mut append = Append {
            run_id: run_id.to_owned(),
            rows: Vec::with_capacity(events.len()),
            started: None,
            status: None,
            steps: None,
            approvals: Vec::new(),
            done,
        };
        for stored in events {
            match &stored.event {
                Event::RunStarted(s) => append.started = Some((s.agent.clone(), s.task.clone())),
                Event::RunEnded { status, .. } => append.status = Some(Some(*status)),
                Event::RunSuspended { .. } => {
                    append.status = Some(Some(EndState::AwaitingApproval))
                }
                Event::RunResumed { .. } => append.status = Some(None),
                Event::CallReconciled { .. } => append.status = Some(None),
                Event::ModelReplied { step, .. } => append.steps = Some(*step),
                Event::ApprovalRequested {
                    approval_id,
                    call_id,
                    tool,
                    expires_at_ms,
                    ..
                } => {
                    append.approvals.push(ApprovalChange::Requested {
                        id: approval_id.clone(),
                        call_id: call_id.clone(),
                        tool: tool.clone(),
                        at_ms: stored.at_ms,
                        expires_ms: *expires_at_ms,
                    });
                }
                Event::ApprovalDecided {
                    approval_id,
                    approved,
                    by,
                    expired,
                    ..
                } => {
                    let status = if *expired {
                        "expired"
                    } else if *approved {
                        "approved"
                    } else {
                        "denied"
                    };
                    append.approvals.push(ApprovalChange::Decided {
                        id: approval_id.clone(),
                        status,
                        by: by.clone(),
                        at_ms: stored.at_ms,
                    });
                }
                _ => {}
            }
            let payload = match serde_json::to_string(&stored.event) {
                Ok(p) => p,
                Err(e) => {
                    return Commit::failed(StoreError::Corrupt {
                        run_id: run_id.into(),
                        seq: stored.seq,
                        detail: format!("cannot encode: {e}"),
                    });
                }
            };
            append.rows.push((stored.seq, stored.at_ms, payload));
        }
        match &self.sender {
            Some(sender) => match sender.send(append) {
                Ok(()) => Commit(rx),
                Err(_) => Commit::failed(StoreError::Closed),
            },
            None => Commit::failed(StoreError::Closed),
        }
    }

    fn events(&self, run_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at_ms, payload FROM events WHERE run_id = ?1 ORDER BY seq",
                )
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map([run_id], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(|e| self.db_err(e))?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, at_ms, payload) = row.map_err(|e| self.db_err(e))?;
                let event: Event =
                    serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt {
                        run_id: run_id.into(),
                        seq,
                        detail: e.to_string(),
                    })?;
                out.push(StoredEvent { seq, at_ms, event });
            }
            Ok(out)
        })
    }

    fn list_runs(&self, limit: usize) -> Result<Vec<RunSummary>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs ORDER BY created_ms DESC, id DESC LIMIT ?1"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map([limit as i64], summary_from_row)
                .map_err(|e| self.db_err(e))?;
            let mut out = Vec::new();
            for row in rows {
                let (mut summary, status) = row.map_err(|e| self.db_err(e))?;
                summary.status = parse_status(&summary.id, status)?;
                out.push(summary);
            }
            Ok(out)
        })
    }

    fn run(&self, run_id: &str) -> Result<RunSummary, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {SUMMARY_COLUMNS} FROM runs WHERE id = ?1");
            let found = conn
                .prepare_cached(&sql)
                .and_then(|mut s| s.query_row([run_id], summary_from_row).optional())
                .map_err(|e| self.db_err(e))?;
            let (mut summary, status) = found.ok_or_else(|| StoreError::NotFound(run_id.into()))?;
            summary.status = parse_status(&summary.id, status)?;
            Ok(summary)
        })
    }

    fn resolve_run_id(&self, prefix: &str) -> Result<String, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id FROM runs WHERE substr(id, 1, ?1) = ?2 ORDER BY id LIMIT 4",
                )
                .map_err(|e| self.db_err(e))?;
            let ids: Vec<String> = stmt
                .query_map(params![prefix.chars().count() as i64, prefix], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(|e| self.db_err(e))?;
            match ids.len() {
                0 => Err(StoreError::NotFound(prefix.into())),
                1 => Ok(ids.into_iter().next().unwrap_or_default()),
                _ if ids.iter().any(|id| id == prefix) => Ok(prefix.into()),
                _ => Err(StoreError::Ambiguous {
                    prefix: prefix.into(),
                    matches: ids.join(", "),
                }),
            }
        })
    }

    fn disk_bytes(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(|e| self.db_err(e))?;
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let wal = PathBuf::from(format!("{}-wal", self.path.display()));
            Ok(size(&self.path) + size(&wal))
        })
    }

    fn list_approvals(
        &self,
        pending_only: bool,
        limit: usize,
    ) -> Result<Vec<ApprovalSummary>, StoreError> {
        self.read(|conn| {
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals {} ORDER BY created_ms DESC, id DESC LIMIT ?1",
                if pending_only { "WHERE status = 'pending'" } else { "" }
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let rows = stmt.query_map([limit as i64], approval_from_row).map_err(|e| self.db_err(e))?;
            rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.db_err(e))
        })
    }

    fn approval(&self, prefix: &str) -> Result<ApprovalSummary, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE substr(id, 1, ?1) = ?2 ORDER BY id LIMIT 4");
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let found: Vec<ApprovalSummary> = stmt
                .query_map(params![prefix.chars().count() as i64, prefix], approval_from_row)
                .and_then(|rows| rows.collect())
                .map_err(|e| self.db_err(e))?;
            match found.len() {
                0 => Err(StoreError::NotFound(prefix.into())),
                1 => Ok(found.into_iter().next().ok_or_else(|| StoreError::NotFound(prefix.into()))?),
                _ => match found.iter().find(|a| a.id == prefix) {
                    Some(exact) => Ok(exact.clone()),
                    None => Err(StoreError::Ambiguous {
                        prefix: prefix.into(),
                        matches: found.iter().map(|a| a.id.clone()).collect::<Vec<_>>().join(", "),
                    }),
                },
            }
        })
    }
}
