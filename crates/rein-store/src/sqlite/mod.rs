//! The embedded SQLite store: WAL mode, one writer connection committing the appends of all runs
//! and the budget ledger's writes in shared transactions (group commit) on its own thread (or on
//! the appender's, for a run driven alone: see [`queue`]), a pool of connections for reads and
//! one for leases. The schema and its migrations are in [`schema`], the checkpointer in
//! [`checkpoint`], the reading of rows back in [`rows`].

mod batch;
mod cancels;
mod checkpoint;
mod coalesce;
mod queue;
mod rows;
mod schema;
mod writer;

pub use checkpoint::CheckpointsPaused;

pub(crate) use queue::WorkQueue;
pub(crate) use writer::Work;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rein_core::{Durability, EndState, Event, StoredEvent};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::side::SideDb;
use crate::{
    AfterBatch, ApprovalFilter, ApprovalSummary, BudgetLedger, Commit, Driving, Lease, LeaseHolder,
    LedgerWrite, OnCommit, Renewed, RunFilter, RunSummary, Store, StoreError,
};
use checkpoint::{Paused, checkpoint_loop, log_path};
use rows::{
    APPROVAL_COLUMNS, SUMMARY_COLUMNS, approval_from_row, decode_events, parse_status,
    summary_from_row,
};
use schema::migrate;
use writer::{Append, ApprovalChange, Started, Writer};

/// The condition that `column` starts with the text `?1`: it lies from it up to it followed by
/// the last character there is, a range of the column's index rather than a look at every row
/// (`substr(column, ...) = ?1` read every run, or approval, ever recorded).
fn starts_with(column: &str) -> String {
    format!("{column} >= ?1 AND {column} < ?1 || char(1114111)")
}

/// The embedded store. Cheap to share behind an `Arc`; dropping it waits for queued appends
/// (and ledger writes).
pub struct SqliteStore {
    path: PathBuf,
    /// The way to the writer (see [`queue`]).
    queue: Arc<queue::Shared>,
    writer: Option<JoinHandle<()>>,
    /// Ends after the writer (which holds the only sender of its requests).
    checkpointer: Option<JoinHandle<()>>,
    /// Idle reading connections: a read takes one for its duration (opening another when none
    /// is idle), so concurrent reads (each run's cancellation check, event streams) never wait
    /// on each other; a lock around one shared connection made every reader of a busy process
    /// park on a futex.
    readers: Mutex<Vec<Connection>>,
    /// The cancellation requests as last read, and the size of the signal file then.
    cancels: Mutex<CancelView>,
    /// The file that tells drivers a request was made.
    signal: cancels::CancelSignal,
    /// Leases and cancellation requests: small transactions of their own.
    control: Mutex<Connection>,
    /// What runs after each batch's commit hooks, on the thread that committed it.
    after: Arc<Mutex<Vec<AfterBatch>>>,
    /// Whether the checkpointer may start a checkpoint (see [`SqliteStore::pause_checkpoints`]).
    paused: Arc<Paused>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Cancellation requests of unfinished runs, as a store last read them.
#[derive(Debug, Default)]
struct CancelView {
    /// The signal file's size when they were read (`None`: never read).
    signal: Option<u64>,
    /// Run id to who asked.
    requested: HashMap<String, String>,
}

/// Reading connections kept open between reads.
const MAX_IDLE_READERS: usize = 8;

/// Opens a connection to the store's file with the settings every connection shares.
fn connect(path: &Path) -> Result<Connection, StoreError> {
    connect_through(path, None)
}

/// A connection to `path` through the VFS named `vfs` (the default if `None`).
fn connect_through(path: &Path, vfs: Option<&std::ffi::CStr>) -> Result<Connection, StoreError> {
    let db_err = |source| StoreError::Database {
        path: path.display().to_string(),
        source,
    };
    let conn = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs),
        None => Connection::open(path),
    }
    .map_err(db_err)?;
    conn.busy_timeout(crate::side::BUSY_TIMEOUT)
        .map_err(db_err)?;
    Ok(conn)
}

impl SqliteStore {
    /// Keeps the checkpointer from copying the log into the database until the guard is
    /// dropped, as a thread starved on a loaded machine would be kept: the writer then copies it
    /// itself once it passes its cap. For tests.
    #[doc(hidden)]
    pub fn pause_checkpoints(&self) -> CheckpointsPaused {
        self.paused.set(true);
        CheckpointsPaused(self.paused.clone())
    }

    /// Opens (creating if needed) the store in `state_dir`, as `rein.db`. Many processes may
    /// open a new state directory at once: creating the schema is one transaction, and the
    /// others wait for it.
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
        // The writer appends a transaction's frames to the log in one write (see `coalesce`).
        let mut writer = connect_through(&path, coalesce::registered())?;
        crate::side::enable_wal(&writer).map_err(db_err)?;
        let sync = match durability {
            Durability::Normal => "NORMAL",
            Durability::Fsync => "FULL",
        };
        writer
            .pragma_update(None, "synchronous", sync)
            .map_err(db_err)?;
        migrate(&mut writer, &path)?;
        schema::add_later_indexes(&writer, &path)?;
        // Room for every statement the writer runs, so none is parsed twice.
        writer.set_prepared_statement_cache_capacity(64);
        // What a batch's savepoint keeps to undo it (the pages it changed, as they were) stays
        // in memory: past 64 KiB SQLite writes it to a temporary file, which a batch of 16
        // gateway requests passed (5 KiB written a request, for nothing).
        writer
            .pragma_update(None, "temp_store", "MEMORY")
            .map_err(db_err)?;
        // The writer does not copy the log into the database itself (a checkpoint, with its
        // fsyncs, was an eighth of the one writer thread's time under load): a thread of its
        // own does, on its own connection, when the writer says enough was written.
        writer
            .pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(db_err)?;
        let checkpointer = connect(&path)?;
        let reader = connect(&path)?;
        let control = connect(&path)?;

        let (wanted, checkpoints) = mpsc::sync_channel::<()>(1);
        let gate = Arc::new(Mutex::new(()));
        let writer_gate = gate.clone();
        let paused = Arc::new(Paused::default());
        let checkpointer_paused = paused.clone();
        // A new or emptied log's first commit writes its header (see `Writer`).
        let restarts = Arc::new(AtomicBool::new(true));
        let told = restarts.clone();
        let checkpoints = std::thread::Builder::new()
            .name("rein-store-checkpointer".into())
            .spawn(move || {
                checkpoint_loop(checkpointer, checkpoints, gate, checkpointer_paused, told)
            })
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let after = Arc::new(Mutex::new(Vec::new()));
        let queue = queue::Shared::new(
            Writer::new(
                writer,
                path.clone(),
                durability == Durability::Fsync,
                after.clone(),
                wanted,
                writer_gate,
                restarts,
            ),
            path.clone(),
        );
        let writer_queue = queue.clone();
        let handle = std::thread::Builder::new()
            .name("rein-store-writer".into())
            .spawn(move || writer_queue.run_writer())
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(SqliteStore {
            signal: cancels::CancelSignal::beside(&path),
            path,
            queue,
            writer: Some(handle),
            checkpointer: Some(checkpoints),
            readers: Mutex::new(vec![reader]),
            cancels: Mutex::new(CancelView::default()),
            control: Mutex::new(control),
            after,
            paused,
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

    /// What model calls (and grant planning) cost since `since_ms`, by day (UTC), model, agent
    /// and user, for one tenant's runs: read from the calls' own events, through the runs of
    /// that tenant only (its index), so one tenant's dashboard never scans another's log.
    pub fn spend(&self, tenant: &str, since_ms: u64) -> Result<Vec<crate::SpendRow>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT date(e.at_ms / 1000, 'unixepoch'),
                            COALESCE(json_extract(e.payload, '$.model'), 'planner'),
                            r.agent, r.user,
                            SUM(COALESCE(json_extract(e.payload, '$.cost_micros'), 0)),
                            SUM(COALESCE(json_extract(e.payload, '$.usage.input_tokens'), 0)
                              + COALESCE(json_extract(e.payload, '$.usage.output_tokens'), 0)),
                            COUNT(*)
                     FROM runs r JOIN events e ON e.run_id = r.id
                     WHERE r.tenant = ?1 AND e.at_ms >= ?2
                       AND json_extract(e.payload, '$.type') IN ('model_replied', 'grants_fixed')
                     GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                )
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map(params![tenant, since_ms as i64], |r| {
                    Ok(crate::SpendRow {
                        day: r.get(0)?,
                        model: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        agent: r.get(2)?,
                        user: r.get(3)?,
                        cost_micros: r.get::<_, i64>(4)?.max(0) as u64,
                        tokens: r.get::<_, i64>(5)?.max(0) as u64,
                        calls: r.get::<_, i64>(6)?.max(0) as u64,
                    })
                })
                .map_err(|e| self.db_err(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.db_err(e))
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let result = f(&conn);
        let mut idle = self
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // As many stay open as were ever in use at once, up to a bound.
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    /// Runs `f` in an immediate transaction on the control connection.
    fn control<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self
            .control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(out)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
        if let Some(handle) = self.checkpointer.take() {
            // A pause outliving the store must not keep its checkpointer from ending.
            self.paused.set(false);
            let _ = handle.join();
        }
    }
}

impl Store for SqliteStore {
    fn after_batch(&self, f: AfterBatch) {
        self.after.lock().unwrap_or_else(|p| p.into_inner()).push(f);
    }

    fn ledger(&self) -> Result<BudgetLedger, StoreError> {
        Ok(BudgetLedger::within(
            SideDb::attach(&self.path)?,
            WorkQueue::Store(self.queue.clone()),
        ))
    }

    fn driving(&self) -> Driving {
        Driving::counted(self.queue.drivers.clone())
    }

    fn append_with(
        &self,
        lease: &Lease,
        events: &[StoredEvent],
        durability: Durability,
        on_commit: Option<OnCommit>,
        writes: Vec<LedgerWrite>,
    ) -> Commit {
        // (An append that fails before it is queued drops `writes`: each is then queued alone.)
        let run_id = lease.run_id.as_str();
        let (done, rx) = tokio::sync::oneshot::channel();
        let mut append = Append {
            lease: lease.clone(),
            rows: Vec::with_capacity(events.len()),
            started: None,
            status: None,
            releases: false,
            ends: false,
            steps: None,
            cost_micros: 0,
            approvals: Vec::new(),
            durability,
            done,
            on_commit,
            ledger: Vec::new(),
        };
        for stored in events {
            match &stored.event {
                Event::RunStarted(s) => {
                    append.started = Some(Started {
                        agent: s.agent.clone(),
                        task: s.task.clone(),
                        user: s.user.clone(),
                        tenant: s.tenant.clone(),
                        parent: s.parent.as_ref().map(|p| p.run_id.clone()),
                    })
                }
                Event::RunEnded { status, .. } => {
                    append.status = Some(Some(*status));
                    append.releases = true;
                    append.ends = true;
                }
                Event::RunSuspended { .. } => {
                    append.status = Some(Some(EndState::AwaitingApproval));
                    append.releases = true;
                }
                Event::RunResumed { .. } => append.status = Some(None),
                Event::CallReconciled { .. } => append.status = Some(None),
                Event::ModelReplied {
                    step, cost_micros, ..
                } => {
                    append.steps = Some(*step);
                    append.cost_micros = append.cost_micros.saturating_add(*cost_micros);
                }
                Event::GrantsFixed { cost_micros, .. } => {
                    append.cost_micros = append.cost_micros.saturating_add(*cost_micros);
                }
                Event::ApprovalRequested {
                    approval_id,
                    call_id,
                    tool,
                    args,
                    expires_at_ms,
                    ..
                } => {
                    append.approvals.push(ApprovalChange::Requested {
                        id: approval_id.clone(),
                        call_id: call_id.clone(),
                        tool: tool.clone(),
                        args: args.to_string(),
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
            append.rows.push((
                stored.seq,
                stored.at_ms,
                payload,
                stored.event.format_version(),
            ));
        }
        append.ledger = writes.into_iter().filter_map(LedgerWrite::take).collect();
        // (Sent to a closed store, its answer is dropped: the commit reads as closed.)
        self.queue.commit_or_queue(Work::Append(append));
        Commit(rx)
    }

    fn acquire_lease(
        &self,
        run_id: &str,
        owner: &str,
        ttl_ms: u64,
        now_ms: u64,
        holder_gone: &dyn Fn(&str) -> bool,
    ) -> Result<Lease, StoreError> {
        self.control(|tx| {
            let row: Option<(Option<String>, i64, i64)> = tx
                .query_row(
                    "SELECT lease_owner, lease_token, lease_expires_ms FROM runs WHERE id = ?1",
                    [run_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(|e| self.db_err(e))?;
            let Some((holder, token, expires)) = row else {
                return Err(StoreError::NotFound(run_id.into()));
            };
            if let Some(holder) = holder
                && holder != owner
                && (expires as u64) > now_ms
                && !holder_gone(&holder)
            {
                return Err(StoreError::Leased {
                    run_id: run_id.into(),
                    holder,
                    expires_ms: expires as u64,
                });
            }
            let lease = Lease {
                run_id: run_id.to_owned(),
                owner: owner.to_owned(),
                token: token as u64 + 1,
                expires_ms: now_ms + ttl_ms,
            };
            tx.execute(
                "UPDATE runs SET lease_owner = ?2, lease_token = ?3, lease_expires_ms = ?4 WHERE id = ?1",
                params![run_id, owner, lease.token as i64, lease.expires_ms as i64],
            )
            .map_err(|e| self.db_err(e))?;
            Ok(lease)
        })
    }

    fn renew_lease(&self, lease: &Lease, ttl_ms: u64, now_ms: u64) -> Result<Renewed, StoreError> {
        self.control(|tx| {
            let changed = tx
                .execute(
                    "UPDATE runs SET lease_expires_ms = ?4
                     WHERE id = ?1 AND lease_owner = ?2 AND lease_token = ?3",
                    params![
                        lease.run_id,
                        lease.owner,
                        lease.token as i64,
                        (now_ms + ttl_ms) as i64
                    ],
                )
                .map_err(|e| self.db_err(e))?;
            if changed != 1 {
                return Err(StoreError::Conflict {
                    run_id: lease.run_id.clone(),
                    detail: format!("{} no longer holds the run's lease", lease.owner),
                });
            }
            let cancel_requested = tx
                .query_row(
                    "SELECT cancel_requested FROM runs WHERE id = ?1",
                    [&lease.run_id],
                    |r| r.get(0),
                )
                .map_err(|e| self.db_err(e))?;
            Ok(Renewed { cancel_requested })
        })
    }

    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        self.control(|tx| {
            tx.execute(
                "UPDATE runs SET lease_owner = NULL, lease_expires_ms = 0
                 WHERE id = ?1 AND lease_owner = ?2 AND lease_token = ?3",
                params![lease.run_id, lease.owner, lease.token as i64],
            )
            .map(|_| ())
            .map_err(|e| self.db_err(e))
        })
    }

    fn lease_holder(&self, run_id: &str) -> Result<Option<LeaseHolder>, StoreError> {
        self.read(|conn| {
            let row: Option<(Option<String>, i64)> = conn
                .prepare_cached("SELECT lease_owner, lease_expires_ms FROM runs WHERE id = ?1")
                .and_then(|mut s| {
                    s.query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(|e| self.db_err(e))?;
            match row {
                None => Err(StoreError::NotFound(run_id.into())),
                Some((owner, expires)) => Ok(owner.map(|owner| LeaseHolder {
                    owner,
                    expires_ms: expires as u64,
                })),
            }
        })
    }

    fn request_cancel(&self, run_id: &str, by: &str) -> Result<(), StoreError> {
        self.control(|tx| {
            let changed = tx
                .execute(
                    "UPDATE runs SET cancel_requested = ?2 WHERE id = ?1",
                    params![run_id, by],
                )
                .map_err(|e| self.db_err(e))?;
            if changed == 0 {
                return Err(StoreError::NotFound(run_id.into()));
            }
            Ok(())
        })?;
        // Tell every process's drivers to look (after the commit, so a driver that sees the
        // signal finds the request).
        self.signal.ring();
        Ok(())
    }

    fn cancel_requested(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        // Drivers ask before and after every model call; the database is read only when the
        // signal file has grown since the last look (a request was made, by any process).
        let signal = self.signal.size();
        let mut view = self
            .cancels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if view.signal != Some(signal) {
            view.requested = self.read(|conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, cancel_requested FROM runs WHERE cancel_requested IS NOT NULL",
                    )
                    .map_err(|e| self.db_err(e))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .map_err(|e| self.db_err(e))?;
                rows.collect::<Result<HashMap<_, _>, _>>()
                    .map_err(|e| self.db_err(e))
            })?;
            view.signal = Some(signal);
        }
        Ok(view.requested.get(run_id).cloned())
    }

    fn events(&self, run_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_after(run_id, 0)
    }

    fn events_after(&self, run_id: &str, after_seq: u64) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, at_ms, payload, v FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map(params![run_id, after_seq as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, i64>(1)? as u64,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)? as u32,
                    ))
                })
                .map_err(|e| self.db_err(e))?;
            decode_events(run_id, rows, |e| self.db_err(e))
        })
    }

    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.read(|conn| {
            let mut clauses: Vec<String> = Vec::new();
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            let mut push = |clause: &str, value: rusqlite::types::Value| {
                values.push(value);
                clauses.push(clause.replace('?', &format!("?{}", values.len())));
            };
            if let Some(agent) = &filter.agent {
                push("agent = ?", agent.clone().into());
            }
            if let Some(user) = &filter.user {
                push("user = ?", user.clone().into());
            }
            if let Some(tenant) = &filter.tenant {
                push("tenant = ?", tenant.clone().into());
            }
            match &filter.status {
                Some(Some(status)) => push("status = ?", status.as_str().to_owned().into()),
                Some(None) => push(
                    "(status IS NULL OR status = ?)",
                    EndState::AwaitingApproval.as_str().to_owned().into(),
                ),
                None => {}
            }
            if let Some(since) = filter.since_ms {
                push("created_ms >= ?", (since as i64).into());
            }
            if let Some(before) = filter.before_ms {
                push("created_ms < ?", (before as i64).into());
            }
            let limit = if filter.limit == 0 { 50 } else { filter.limit };
            values.push((limit as i64).into());
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs {} ORDER BY created_ms DESC, id DESC LIMIT ?{}",
                if clauses.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", clauses.join(" AND "))
                },
                values.len()
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values.iter()), summary_from_row)
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
            let sql = format!(
                "SELECT id FROM runs WHERE {} ORDER BY id LIMIT 4",
                starts_with("id")
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let ids: Vec<String> = stmt
                .query_map(params![prefix], |r| r.get(0))
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
            Ok(size(&self.path) + size(&log_path(&self.path)))
        })
    }

    fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<ApprovalSummary>, StoreError> {
        self.read(|conn| {
            let mut clauses = Vec::new();
            if filter.pending_only {
                clauses.push("a.status = 'pending'");
            }
            if filter.tenant.is_some() {
                clauses.push("r.tenant = ?2");
            }
            let sql = format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals a LEFT JOIN runs r ON r.id = a.run_id {}
                 ORDER BY a.created_ms DESC, a.id DESC LIMIT ?1",
                if clauses.is_empty() {
                    String::new()
                } else {
                    format!("WHERE {}", clauses.join(" AND "))
                }
            );
            let limit = if filter.limit == 0 { 200 } else { filter.limit } as i64;
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let rows = match &filter.tenant {
                Some(t) => stmt.query_map(params![limit, t], approval_from_row),
                None => stmt.query_map(params![limit], approval_from_row),
            }
            .map_err(|e| self.db_err(e))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.db_err(e))
        })
    }

    fn approval(&self, prefix: &str) -> Result<ApprovalSummary, StoreError> {
        self.read(|conn| {
            let sql = format!("SELECT {APPROVAL_COLUMNS} FROM approvals a LEFT JOIN runs r ON r.id = a.run_id WHERE {} ORDER BY a.id LIMIT 4", starts_with("a.id"));
            let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.db_err(e))?;
            let found: Vec<ApprovalSummary> = stmt
                .query_map(params![prefix], approval_from_row)
                .and_then(|rows| rows.collect())
                .map_err(|e| self.db_err(e))?;
            match found.len() {
                0 => Err(StoreError::ApprovalNotFound(prefix.into())),
                1 => Ok(found.into_iter().next().ok_or_else(|| StoreError::ApprovalNotFound(prefix.into()))?),
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
