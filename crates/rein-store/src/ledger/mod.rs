//! The budget ledger: what every agent, user, tenant and run has spent in each period, and the
//! reservations of model calls in flight, in two tables of the store's database (`rein.db`:
//! `budget_spend`, `budget_reservations`).
//!
//! A call reserves its estimated spend on every line that limits it, in one write (inside the
//! store writer's `BEGIN IMMEDIATE` transaction, undone alone if it fails) that checks spent +
//! reserved + estimate against each limit: so concurrent runs, in one process or several, can
//! never together pass a limit. When the call returns, its reservation is replaced by what it
//! actually spent. A reservation left by a crashed process stops counting after its expiry; a
//! live process extends the reservations of the runs it drives.
//!
//! A run with a budget of its own is first *admitted*: its whole per-run cap is held on every
//! shared line it spends from, so when many runs contend for a shared budget the ones that fit are
//! admitted whole and finish, and the rest are refused before they spend anything. A call of an
//! admitted run draws on its admission first; what it does not spend goes back to it.

mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rein_core::budget::Spend;
use rusqlite::{Connection, OptionalExtension, params};

use crate::side::SideDb;
use serde::Serialize;
pub(crate) use writer::Job;
use writer::Write;
pub use writer::{LedgerWrite, Queued};

use crate::StoreError;
use crate::sqlite::{Work, WorkQueue};

/// One line a spend is checked against and booked to.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLine {
    /// `run:<id>`, `agent:<name>`, `user:<name>`, `tenant:<name>`.
    pub key: String,
    /// `run`, `2026-11-23`, `2026-11`.
    pub period: String,
    /// The most tokens, if limited.
    pub max_tokens: Option<u64>,
    /// The most millionths of a dollar, if limited.
    pub max_cost_micros: Option<u64>,
}

impl LedgerLine {
    /// Whether `total` passes one of the line's limits.
    pub fn over(&self, total: Spend) -> bool {
        self.max_tokens.is_some_and(|m| total.tokens > m)
            || self.max_cost_micros.is_some_and(|m| total.cost_micros > m)
    }
}

/// Spend held for a call in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The reservation rows, one per line.
    pub ids: Vec<i64>,
    /// The lines, for settling.
    pub lines: Vec<LedgerLine>,
    /// What was reserved.
    pub amount: Spend,
    /// What the call took from its run's admission, per line.
    pub taken: Vec<Spend>,
    /// The run whose admission the call draws on (the root of its run tree).
    pub admission: String,
}

/// A run's admission: its whole per-run cap, held on the shared lines it spends from.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    /// The run admitted (the root of its run tree).
    pub run_id: String,
    /// What is held on each line.
    pub amount: Spend,
}

/// What settling a call found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settled {
    /// The call spent more than it reserved (the provider passed the cap it was sent).
    pub over_reserved: bool,
    /// Lines now past their limit (`key period`), because of that overrun.
    pub over_limit: Vec<String>,
}

/// Why a reservation was refused: the first line it would have passed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("budget {key} ({period}) would be exceeded: spent {} tokens / ${:.6}, reserved {} tokens / ${:.6}, this needs up to {} tokens / ${:.6}; limit {} tokens / {}",
    spent.tokens, spent.cost_micros as f64 / 1e6, reserved.tokens, reserved.cost_micros as f64 / 1e6,
    needed.tokens, needed.cost_micros as f64 / 1e6,
    max_tokens.map(|t| t.to_string()).unwrap_or_else(|| "unlimited".into()),
    max_cost_micros.map(|c| format!("${:.6}", c as f64 / 1e6)).unwrap_or_else(|| "unlimited".into()))]
pub struct Exhausted {
    /// The line.
    pub key: String,
    /// Its period.
    pub period: String,
    /// Spent so far.
    pub spent: Spend,
    /// Held by calls in flight and admitted runs.
    pub reserved: Spend,
    /// What the call (or the admission) needed.
    pub needed: Spend,
    /// The token limit.
    pub max_tokens: Option<u64>,
    /// The money limit.
    pub max_cost_micros: Option<u64>,
}

impl Exhausted {
    /// The refusal of `needed` on `line`, which has `spent` and `reserved` already.
    pub fn on(line: &LedgerLine, spent: Spend, reserved: Spend, needed: Spend) -> Exhausted {
        Exhausted {
            key: line.key.clone(),
            period: line.period.clone(),
            spent,
            reserved,
            needed,
            max_tokens: line.max_tokens,
            max_cost_micros: line.max_cost_micros,
        }
    }
}

/// One line of `rein usage`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// The line's key.
    pub key: String,
    /// Its period.
    pub period: String,
    /// Tokens spent.
    pub tokens: u64,
    /// Millionths of a dollar spent.
    pub cost_micros: u64,
    /// Model calls booked.
    pub calls: u64,
    /// The last limits checked against it.
    pub max_tokens: Option<u64>,
    /// The last money limit checked against it.
    pub max_cost_micros: Option<u64>,
}

/// The ledger. Its writes are queued to the store's writer, which commits them with the event
/// appends waiting beside them in one transaction, a write that fails undone alone (group
/// commit, see `sqlite::batch`): a write is applied in the order it was queued and sees every
/// earlier one, so the limits hold as if each were its own transaction, while concurrent runs
/// share the commit (a gateway request's hold shares its run's start's). A write queued alone
/// goes to the writer thread, and one riding with a lone run's append is committed on the run's
/// thread only when that waits for nothing, so an async caller never blocks a worker thread on
/// the database (another process may hold its lock for seconds). Obtained from [`crate::Store::ledger`].
pub struct BudgetLedger {
    /// The store's database, for reads.
    db: Arc<SideDb>,
    queue: WorkQueue,
}

impl std::fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetLedger")
            .field("path", &self.db.path())
            .finish()
    }
}

/// The ledger's tables, as the store's schema creates them (version 5 on). Its holds are found
/// by line (to sum what a line holds) and admissions by run; a call's hold, held for the call
/// alone, is in no index of its run (one index fewer written twice a call: at its hold and at
/// its settlement), so what finds a run's calls (`extend`, every ten seconds a run) reads the
/// table, which holds only what is held at the moment.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS budget_spend (
    key TEXT NOT NULL, period TEXT NOT NULL,
    tokens INTEGER NOT NULL DEFAULT 0, cost_micros INTEGER NOT NULL DEFAULT 0,
    calls INTEGER NOT NULL DEFAULT 0,
    max_tokens INTEGER, max_cost_micros INTEGER,
    PRIMARY KEY (key, period));
CREATE TABLE IF NOT EXISTS budget_reservations (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL, period TEXT NOT NULL,
    tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL,
    run_id TEXT NOT NULL, expires_ms INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'call',
    taken_tokens INTEGER NOT NULL DEFAULT 0, taken_cost INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS budget_reservations_line ON budget_reservations (key, period);
CREATE INDEX IF NOT EXISTS budget_admissions_by_run ON budget_reservations (run_id) WHERE kind = 'admission';
";

/// Moves what the ledger's own file from before schema version 5 (`old`, if it is there) holds
/// into its tables in the store's database at `db`, inside the store's migration `tx`: the spend
/// of every line and period, and the reservations and admissions (those of a process that is
/// gone lapse at their expiry, as they would have). The old file is left as it was, unused.
pub(crate) fn import(tx: &Connection, db: &Path, old: &Path) -> Result<(), StoreError> {
    if !old.exists() {
        return Ok(());
    }
    let err = |source| StoreError::OldLedger {
        path: old.display().to_string(),
        source,
    };
    let into = |source| StoreError::Database {
        path: db.display().to_string(),
        source,
    };
    let from = Connection::open_with_flags(old, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(&err)?;
    from.busy_timeout(crate::side::BUSY_TIMEOUT).map_err(&err)?;
    let tables: Vec<String> = from
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(&err)?;
    // Version 1 of the old file had no admissions.
    let version: i64 = from
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&err)?;
    let copies = [
        (
            "spend",
            "SELECT key, period, tokens, cost_micros, calls, max_tokens, max_cost_micros FROM spend",
            "INSERT INTO budget_spend (key, period, tokens, cost_micros, calls, max_tokens, max_cost_micros)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        ),
        (
            "reservations",
            if version >= 2 {
                "SELECT key, period, tokens, cost_micros, run_id, expires_ms, kind, taken_tokens, taken_cost FROM reservations"
            } else {
                "SELECT key, period, tokens, cost_micros, run_id, expires_ms, 'call', 0, 0 FROM reservations"
            },
            "INSERT INTO budget_reservations (key, period, tokens, cost_micros, run_id, expires_ms, kind, taken_tokens, taken_cost)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        ),
    ];
    for (table, select, insert) in copies {
        if !tables.iter().any(|t| t == table) {
            continue;
        }
        let mut read = from.prepare(select).map_err(&err)?;
        let columns = read.column_count();
        let mut rows = read.query([]).map_err(&err)?;
        let mut write = tx.prepare(insert).map_err(&into)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let values = (0..columns)
                .map(|i| row.get::<_, rusqlite::types::Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&err)?;
            write
                .execute(rusqlite::params_from_iter(values))
                .map_err(&into)?;
        }
    }
    Ok(())
}

fn spend(tokens: i64, cost: i64) -> Spend {
    Spend {
        tokens: tokens.max(0) as u64,
        cost_micros: cost.max(0) as u64,
    }
}

/// Everything held on a line by unexpired reservations and admissions. Holds found lapsed are
/// deleted (their process died mid-call, or gave up without settling): they hold nothing, and
/// left in place, every later hold on the line would read past them, for good.
fn reserved(tx: &Connection, line: &LedgerLine, now_ms: u64) -> rusqlite::Result<Spend> {
    let at = params![line.key, line.period, now_ms as i64];
    let (held, lapsed) = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(tokens) FILTER (WHERE expires_ms > ?3), 0),
                    COALESCE(SUM(cost_micros) FILTER (WHERE expires_ms > ?3), 0),
                    COUNT(*) FILTER (WHERE expires_ms <= ?3)
             FROM budget_reservations WHERE key = ?1 AND period = ?2",
        )?
        .query_row(at, |r| {
            Ok((spend(r.get(0)?, r.get(1)?), r.get::<_, i64>(2)?))
        })?;
    if lapsed > 0 {
        tx.prepare_cached(
            "DELETE FROM budget_reservations WHERE key = ?1 AND period = ?2 AND expires_ms <= ?3",
        )?
        .execute(at)?;
    }
    Ok(held)
}

/// What `run_id`'s admission still holds on a line.
fn admission_on(
    tx: &Connection,
    run_id: &str,
    line: &LedgerLine,
    now_ms: u64,
) -> rusqlite::Result<Spend> {
    tx.prepare_cached(
        "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_micros), 0) FROM budget_reservations
         WHERE kind = 'admission' AND run_id = ?1 AND key = ?2 AND period = ?3 AND expires_ms > ?4",
    )?
    .query_row(params![run_id, line.key, line.period, now_ms as i64], |r| {
        Ok(spend(r.get(0)?, r.get(1)?))
    })
}

fn min_spend(a: Spend, b: Spend) -> Spend {
    Spend {
        tokens: a.tokens.min(b.tokens),
        cost_micros: a.cost_micros.min(b.cost_micros),
    }
}

fn minus(a: Spend, b: Spend) -> Spend {
    Spend {
        tokens: a.tokens.saturating_sub(b.tokens),
        cost_micros: a.cost_micros.saturating_sub(b.cost_micros),
    }
}

impl BudgetLedger {
    /// The ledger in the store's database at `db`, written through the store's writer `queue`.
    pub(crate) fn within(db: SideDb, queue: WorkQueue) -> BudgetLedger {
        BudgetLedger {
            db: Arc::new(db),
            queue,
        }
    }

    /// Prepares what `f` writes instead of queueing it: the writes go to the store with an
    /// append ([`crate::Store::append_with`]) and share its commit, or, dropped, on their own.
    /// The answer comes once they are committed.
    pub fn later<T>(
        &self,
        f: impl FnOnce(&BudgetLedger) -> Queued<T>,
    ) -> (Vec<LedgerWrite>, Queued<T>) {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let answer = f(&BudgetLedger {
            db: self.db.clone(),
            queue: WorkQueue::Kept(kept.clone()),
        });
        let prepared = std::mem::take(&mut *kept.lock().unwrap_or_else(|p| p.into_inner()));
        let writes = prepared
            .into_iter()
            .filter_map(|work| match work {
                Work::Ledger(job) => Some(LedgerWrite {
                    job: std::sync::Mutex::new(Some(job)),
                    queue: self.queue.clone(),
                    db: self.db.clone(),
                }),
                _ => None,
            })
            .collect();
        (writes, answer)
    }

    /// Queues a write for the writer thread. The write may be run more than once in its
    /// transaction (the writer runs it again, each item apart, when anything of its batch
    /// failed and was undone), so it only reads what it captured.
    fn write<T: Send + 'static>(
        &self,
        op: impl FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Queued<T> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Write {
            op,
            out: None,
            done,
        });
        self.queue.send(Work::Ledger(job));
        Queued(answer)
    }

    /// Admits run `run_id`: holds `amount` (what is left of its per-run cap) on every shared
    /// line, or refuses without holding anything if a line cannot cover it. Admitting a run that
    /// is admitted already only extends its hold.
    pub fn admit(
        &self,
        run_id: &str,
        lines: &[LedgerLine],
        amount: Spend,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Queued<Result<Admission, Exhausted>> {
        let expires = (now_ms + ttl_ms) as i64;
        let (run_id, lines) = (run_id.to_owned(), lines.to_vec());
        self.write(move |tx| {
            tx.prepare_cached("DELETE FROM budget_reservations WHERE kind = 'admission' AND run_id = ?1 AND expires_ms <= ?2")?
.execute(
                params![run_id, now_ms as i64],
            )?;
            let mut fresh = Vec::new();
            for line in &lines {
                let held: Option<i64> = tx
                    .prepare_cached("SELECT id FROM budget_reservations WHERE kind = 'admission' AND run_id = ?1
                         AND key = ?2 AND period = ?3")?
.query_row(
                        params![run_id, line.key, line.period],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = held {
                    tx.prepare_cached("UPDATE budget_reservations SET expires_ms = MAX(expires_ms, ?2) WHERE id = ?1")?
.execute(
                        params![id, expires],
                    )?;
                    continue;
                }
                let spent = spent(tx, line)?;
                let reserved = reserved(tx, line, now_ms)?;
                if line.over(spent.plus(reserved).plus(amount)) {
                    return Ok(Err(Exhausted::on(line, spent, reserved, amount)));
                }
                fresh.push(line);
            }
            for line in fresh {
                tx.prepare_cached("INSERT INTO budget_reservations (key, period, tokens, cost_micros, run_id, expires_ms, kind)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'admission')")?
.execute(
                    params![line.key, line.period, amount.tokens as i64, amount.cost_micros as i64, run_id, expires],
                )?;
            }
            Ok(Ok(Admission {
                run_id: run_id.clone(),
                amount,
            }))
        })
    }

    /// Gives up what is left of a run's admission (it ended or suspended).
    pub fn release_admission(&self, run_id: &str) -> Queued<()> {
        let run_id = run_id.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "DELETE FROM budget_reservations WHERE kind = 'admission' AND run_id = ?1",
            )?
            .execute([&run_id])
            .map(|_| ())
        })
    }

    /// Keeps the reservations and admission of a run that is still being driven from lapsing
    /// before `until_ms`. Reads the table (a call's hold is in no index of its run): it holds
    /// only what is held at the moment, and a run extends its holds every ten seconds.
    pub fn extend(&self, run_id: &str, until_ms: u64) -> Queued<()> {
        let run_id = run_id.to_owned();
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE budget_reservations SET expires_ms = MAX(expires_ms, ?2) WHERE run_id = ?1",
            )?
            .execute(params![run_id, until_ms as i64])
            .map(|_| ())
        })
    }

    /// Holds `amount` on every line for a call of `run_id`, or refuses without holding anything
    /// if any line would pass its limit with `headroom` to spare (room kept for a last, smaller
    /// call). The call draws first on the admission of `admission` (its run tree's root).
    #[allow(clippy::too_many_arguments)]
    pub fn reserve(
        &self,
        run_id: &str,
        admission: &str,
        lines: &[LedgerLine],
        amount: Spend,
        headroom: Spend,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Queued<Result<Reservation, Exhausted>> {
        let expires = (now_ms + ttl_ms) as i64;
        let (run_id, admission, lines) = (run_id.to_owned(), admission.to_owned(), lines.to_vec());
        self.write(move |tx| {
            let mut taken = Vec::with_capacity(lines.len());
            for line in &lines {
                let spent = spent(tx, line)?;
                let reserved = reserved(tx, line, now_ms)?;
                let own = admission_on(tx, &admission, line, now_ms)?;
                let take = min_spend(amount, own);
                let needed = minus(amount, take);
                // The room kept for a wrap-up may also come out of what the admission still
                // holds.
                let headroom = minus(headroom, minus(own, take));
                if line.over(spent.plus(reserved).plus(needed).plus(headroom)) {
                    return Ok(Err(Exhausted::on(line, spent, reserved, amount)));
                }
                taken.push(take);
            }
            let mut ids = Vec::with_capacity(lines.len());
            for (line, take) in lines.iter().zip(&taken) {
                tx.prepare_cached("INSERT INTO budget_reservations (key, period, tokens, cost_micros, run_id, expires_ms, kind, taken_tokens, taken_cost)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'call', ?7, ?8)")?
.execute(
                    params![
                        line.key,
                        line.period,
                        amount.tokens as i64,
                        amount.cost_micros as i64,
                        run_id.as_str(),
                        expires,
                        take.tokens as i64,
                        take.cost_micros as i64
                    ],
                )?;
                ids.push(tx.last_insert_rowid());
                if *take != Spend::default() {
                    tx.prepare_cached("UPDATE budget_reservations SET tokens = MAX(0, tokens - ?4), cost_micros = MAX(0, cost_micros - ?5)
                         WHERE kind = 'admission' AND run_id = ?1 AND key = ?2 AND period = ?3")?
.execute(
                        params![admission, line.key, line.period, take.tokens as i64, take.cost_micros as i64],
                    )?;
                }
            }
            Ok(Ok(Reservation {
                ids,
                lines: lines.clone(),
                amount,
                taken,
                admission: admission.clone(),
            }))
        })
    }

    /// Replaces a reservation by what the call actually spent; what it took from its run's
    /// admission and did not spend goes back to the admission.
    pub fn settle(&self, reservation: &Reservation, actual: Spend) -> Queued<Settled> {
        let reservation = reservation.clone();
        self.write(move |tx| {
            for id in &reservation.ids {
                tx.prepare_cached("DELETE FROM budget_reservations WHERE id = ?1")?
.execute( params![id])?;
            }
            let mut settled = Settled {
                over_reserved: actual.tokens > reservation.amount.tokens
                    || actual.cost_micros > reservation.amount.cost_micros,
                over_limit: Vec::new(),
            };
            for (i, line) in reservation.lines.iter().enumerate() {
                tx.prepare_cached("INSERT INTO budget_spend (key, period, tokens, cost_micros, calls, max_tokens, max_cost_micros)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)
                     ON CONFLICT (key, period) DO UPDATE SET
                       tokens = tokens + excluded.tokens, cost_micros = cost_micros + excluded.cost_micros,
                       calls = calls + 1, max_tokens = excluded.max_tokens, max_cost_micros = excluded.max_cost_micros")?
.execute(
                    params![
                        line.key,
                        line.period,
                        actual.tokens as i64,
                        actual.cost_micros as i64,
                        line.max_tokens.map(|t| t as i64),
                        line.max_cost_micros.map(|c| c as i64)
                    ],
                )?;
                let back = reservation
                    .taken
                    .get(i)
                    .map(|t| minus(*t, min_spend(*t, actual)))
                    .unwrap_or_default();
                if back != Spend::default() {
                    tx.prepare_cached("UPDATE budget_reservations SET tokens = tokens + ?4, cost_micros = cost_micros + ?5
                         WHERE kind = 'admission' AND run_id = ?1 AND key = ?2 AND period = ?3")?
.execute(
                        params![reservation.admission, line.key, line.period, back.tokens as i64, back.cost_micros as i64],
                    )?;
                }
                if settled.over_reserved && line.over(spent(tx, line)?) {
                    settled.over_limit.push(format!("{} {}", line.key, line.period));
                }
            }
            Ok(settled)
        })
    }

    /// What a line has spent.
    pub fn spent(&self, line: &LedgerLine) -> Result<Spend, StoreError> {
        Ok(self.spent_on(&[line])?.pop().unwrap_or_default())
    }

    /// What each of `lines` has spent, in their order, read in one statement.
    pub fn spent_on(&self, lines: &[&LedgerLine]) -> Result<Vec<Spend>, StoreError> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.db.conn();
        let wanted: Vec<String> = (0..lines.len())
            .map(|i| format!("(key = ?{} AND period = ?{})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!(
            "SELECT key, period, tokens, cost_micros FROM budget_spend WHERE {}",
            wanted.join(" OR ")
        );
        let values: Vec<&dyn rusqlite::ToSql> = lines
            .iter()
            .flat_map(|l| [&l.key as &dyn rusqlite::ToSql, &l.period])
            .collect();
        let read = || -> rusqlite::Result<Vec<Spend>> {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(values.as_slice())?;
            let mut out = vec![Spend::default(); lines.len()];
            while let Some(row) = rows.next()? {
                let (key, period): (String, String) = (row.get(0)?, row.get(1)?);
                let found = spend(row.get(2)?, row.get(3)?);
                for (line, slot) in lines.iter().zip(out.iter_mut()) {
                    if line.key == key && line.period == period {
                        *slot = found;
                    }
                }
            }
            Ok(out)
        };
        read().map_err(|e| self.db.err(e))
    }

    /// Every line whose key starts with `prefix` (all with ""), newest periods first.
    pub fn usage(&self, prefix: &str) -> Result<Vec<UsageRow>, StoreError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key, period, tokens, cost_micros, calls, max_tokens, max_cost_micros FROM budget_spend
                 WHERE substr(key, 1, length(?1)) = ?1 ORDER BY period DESC, key",
            )
            .map_err(|e| self.db.err(e))?;
        let rows = stmt
            .query_map(params![prefix], |r| {
                Ok(UsageRow {
                    key: r.get(0)?,
                    period: r.get(1)?,
                    tokens: r.get::<_, i64>(2)? as u64,
                    cost_micros: r.get::<_, i64>(3)? as u64,
                    calls: r.get::<_, i64>(4)? as u64,
                    max_tokens: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                    max_cost_micros: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                })
            })
            .map_err(|e| self.db.err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db.err(e))
    }
}

fn spent(conn: &Connection, line: &LedgerLine) -> rusqlite::Result<Spend> {
    Ok(conn
        .prepare_cached(
            "SELECT tokens, cost_micros FROM budget_spend WHERE key = ?1 AND period = ?2",
        )?
        .query_row(params![line.key, line.period], |r| {
            Ok(Spend {
                tokens: r.get::<_, i64>(0)? as u64,
                cost_micros: r.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?
        .unwrap_or_default())
}

#[cfg(test)]
mod tests;
