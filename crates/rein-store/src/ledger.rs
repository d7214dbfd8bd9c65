//! The budget ledger: what every agent, user, tenant and run has spent in each period, and the
//! reservations of model calls in flight, in its own SQLite file (`budgets.sqlite`).
//!
//! A call reserves its estimated spend on every line that limits it, in one `BEGIN IMMEDIATE`
//! transaction that checks spent + reserved + estimate against each limit: so concurrent runs,
//! in one process or several, can never together pass a limit. When the call returns, its
//! reservation is replaced by what it actually spent. A reservation left by a crashed process
//! stops counting after its expiry.

use std::path::Path;

use rein_core::budget::Spend;
use rusqlite::{Connection, OptionalExtension, params};

use crate::side::SideDb;
use serde::Serialize;

use crate::StoreError;

/// How long a reservation counts if it is never settled (its process died).
const RESERVATION_TTL_MS: u64 = 15 * 60 * 1000;

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

/// Spend held for a call in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The reservation rows, one per line.
    pub ids: Vec<i64>,
    /// The lines, for settling.
    pub lines: Vec<LedgerLine>,
    /// What was reserved.
    pub amount: Spend,
}

/// Why a reservation was refused: the first line it would have passed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("budget {key} ({period}) would be exceeded: spent {} tokens / ${:.6}, reserved {} tokens / ${:.6}, this call needs up to {} tokens / ${:.6}; limit {} tokens / {}",
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
    /// Held by calls in flight.
    pub reserved: Spend,
    /// What the call needed.
    pub needed: Spend,
    /// The token limit.
    pub max_tokens: Option<u64>,
    /// The money limit.
    pub max_cost_micros: Option<u64>,
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

/// The ledger.
pub struct BudgetLedger {
    db: SideDb,
}

impl std::fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetLedger")
            .field("path", &self.db.path())
            .finish()
    }
}

impl BudgetLedger {
    /// Opens (or creates) `<state_dir>/budgets.sqlite`.
    pub fn open(state_dir: &Path) -> Result<BudgetLedger, StoreError> {
        Ok(BudgetLedger {
            db: SideDb::open(
                state_dir,
                "budgets.sqlite",
                "CREATE TABLE IF NOT EXISTS spend (
                key TEXT NOT NULL, period TEXT NOT NULL,
                tokens INTEGER NOT NULL DEFAULT 0, cost_micros INTEGER NOT NULL DEFAULT 0,
                calls INTEGER NOT NULL DEFAULT 0,
                max_tokens INTEGER, max_cost_micros INTEGER,
                PRIMARY KEY (key, period));
             CREATE TABLE IF NOT EXISTS reservations (
                id INTEGER PRIMARY KEY, key TEXT NOT NULL, period TEXT NOT NULL,
                tokens INTEGER NOT NULL, cost_micros INTEGER NOT NULL,
                run_id TEXT NOT NULL, expires_ms INTEGER NOT NULL);
             CREATE INDEX IF NOT EXISTS reservations_line ON reservations (key, period);",
            )?,
        })
    }

    /// Holds `amount` on every line, or refuses without holding anything if any line would pass
    /// its limit with `headroom` to spare (room kept for a last, smaller call).
    pub fn reserve(
        &self,
        run_id: &str,
        lines: &[LedgerLine],
        amount: Spend,
        headroom: Spend,
        now_ms: u64,
    ) -> Result<Result<Reservation, Exhausted>, StoreError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db.err(e))?;
        for line in lines {
            let spent = spent(&tx, line).map_err(|e| self.db.err(e))?;
            let reserved: (i64, i64) = tx
                .query_row(
                    "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(cost_micros), 0) FROM reservations
                     WHERE key = ?1 AND period = ?2 AND expires_ms > ?3",
                    params![line.key, line.period, now_ms as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| self.db.err(e))?;
            let reserved = Spend {
                tokens: reserved.0 as u64,
                cost_micros: reserved.1 as u64,
            };
            let total = spent.plus(reserved).plus(amount).plus(headroom);
            let over = line.max_tokens.is_some_and(|m| total.tokens > m)
                || line.max_cost_micros.is_some_and(|m| total.cost_micros > m);
            if over {
                return Ok(Err(Exhausted {
                    key: line.key.clone(),
                    period: line.period.clone(),
                    spent,
                    reserved,
                    needed: amount,
                    max_tokens: line.max_tokens,
                    max_cost_micros: line.max_cost_micros,
                }));
            }
        }
        let mut ids = Vec::with_capacity(lines.len());
        for line in lines {
            tx.execute(
                "INSERT INTO reservations (key, period, tokens, cost_micros, run_id, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    line.key,
                    line.period,
                    amount.tokens as i64,
                    amount.cost_micros as i64,
                    run_id,
                    (now_ms + RESERVATION_TTL_MS) as i64
                ],
            )
            .map_err(|e| self.db.err(e))?;
            ids.push(tx.last_insert_rowid());
        }
        tx.commit().map_err(|e| self.db.err(e))?;
        Ok(Ok(Reservation {
            ids,
            lines: lines.to_vec(),
            amount,
        }))
    }

    /// Replaces a reservation by what the call actually spent.
    pub fn settle(&self, reservation: &Reservation, actual: Spend) -> Result<(), StoreError> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db.err(e))?;
        for id in &reservation.ids {
            tx.execute("DELETE FROM reservations WHERE id = ?1", params![id])
                .map_err(|e| self.db.err(e))?;
        }
        for line in &reservation.lines {
            tx.execute(
                "INSERT INTO spend (key, period, tokens, cost_micros, calls, max_tokens, max_cost_micros)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)
                 ON CONFLICT (key, period) DO UPDATE SET
                   tokens = tokens + excluded.tokens, cost_micros = cost_micros + excluded.cost_micros,
                   calls = calls + 1, max_tokens = excluded.max_tokens, max_cost_micros = excluded.max_cost_micros",
                params![
                    line.key,
                    line.period,
                    actual.tokens as i64,
                    actual.cost_micros as i64,
                    line.max_tokens.map(|t| t as i64),
                    line.max_cost_micros.map(|c| c as i64)
                ],
            )
            .map_err(|e| self.db.err(e))?;
        }
        tx.commit().map_err(|e| self.db.err(e))
    }

    /// What a line has spent.
    pub fn spent(&self, line: &LedgerLine) -> Result<Spend, StoreError> {
        let conn = self.db.conn();
        spent(&conn, line).map_err(|e| self.db.err(e))
    }

    /// Every line whose key starts with `prefix` (all with ""), newest periods first.
    pub fn usage(&self, prefix: &str) -> Result<Vec<UsageRow>, StoreError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key, period, tokens, cost_micros, calls, max_tokens, max_cost_micros FROM spend
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
        .query_row(
            "SELECT tokens, cost_micros FROM spend WHERE key = ?1 AND period = ?2",
            params![line.key, line.period],
            |r| {
                Ok(Spend {
                    tokens: r.get::<_, i64>(0)? as u64,
                    cost_micros: r.get::<_, i64>(1)? as u64,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(max_tokens: u64) -> LedgerLine {
        LedgerLine {
            key: "user:ann".into(),
            period: "2026-11-23".into(),
            max_tokens: Some(max_tokens),
            max_cost_micros: None,
        }
    }

    #[test]
    fn reservations_count_until_settled_and_never_pass_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = BudgetLedger::open(dir.path()).unwrap();
        let amount = Spend {
            tokens: 40,
            cost_micros: 0,
        };
        let a = ledger
            .reserve("r1", &[line(100)], amount, Spend::default(), 0)
            .unwrap()
            .unwrap();
        let _b = ledger
            .reserve("r2", &[line(100)], amount, Spend::default(), 0)
            .unwrap()
            .unwrap();
        // 40 + 40 held; another 40 would pass 100.
        let refused = ledger
            .reserve("r3", &[line(100)], amount, Spend::default(), 0)
            .unwrap()
            .unwrap_err();
        assert_eq!(refused.reserved.tokens, 80);
        // Settling for less frees the difference.
        ledger
            .settle(
                &a,
                Spend {
                    tokens: 10,
                    cost_micros: 0,
                },
            )
            .unwrap();
        assert!(
            ledger
                .reserve("r3", &[line(100)], amount, Spend::default(), 0)
                .unwrap()
                .is_ok()
        );
        assert_eq!(ledger.spent(&line(100)).unwrap().tokens, 10);
        // Headroom is checked, not held.
        let headroom = Spend {
            tokens: 11,
            cost_micros: 0,
        };
        assert!(
            ledger
                .reserve("r5", &[line(100)], Spend::default(), headroom, 0)
                .unwrap()
                .is_err()
        );
        // Expired reservations (a dead process) stop counting.
        assert!(
            ledger
                .reserve(
                    "r4",
                    &[line(100)],
                    amount,
                    Spend::default(),
                    RESERVATION_TTL_MS + 1
                )
                .unwrap()
                .is_ok()
        );
        let rows = ledger.usage("user:").unwrap();
        assert_eq!((rows.len(), rows[0].tokens, rows[0].calls), (1, 10, 1));
    }
}
