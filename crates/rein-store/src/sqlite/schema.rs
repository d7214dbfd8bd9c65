//! The store's schema: the tables of a new database, and the migrations that bring an older one
//! to the version this build writes, in one immediate transaction.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// The schema version this build writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 6;

/// The schema of a new database, at [`SCHEMA_VERSION`].
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id               TEXT PRIMARY KEY,
    agent            TEXT NOT NULL,
    task             TEXT NOT NULL,
    status           TEXT,
    created_ms       INTEGER NOT NULL,
    steps            INTEGER NOT NULL DEFAULT 0,
    user             TEXT NOT NULL DEFAULT 'anonymous',
    tenant           TEXT NOT NULL DEFAULT 'default',
    parent_run       TEXT,
    lease_owner      TEXT,
    lease_token      INTEGER NOT NULL DEFAULT 0,
    lease_expires_ms INTEGER NOT NULL DEFAULT 0,
    cancel_requested TEXT,
    cost_micros      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_ms);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created_ms);
CREATE TABLE IF NOT EXISTS approvals (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    call_id     TEXT NOT NULL,
    tool        TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    expires_ms  INTEGER,
    decided_by  TEXT,
    decided_ms  INTEGER,
    args        TEXT
);
CREATE INDEX IF NOT EXISTS approvals_by_status ON approvals (status, created_ms);
CREATE INDEX IF NOT EXISTS approvals_by_run ON approvals (run_id, status);
CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY,
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    payload  TEXT NOT NULL,
    v        INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_run ON events (run_id, seq);
";

/// From schema version 1 (before leases, tenants on runs and event format versions).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE runs ADD COLUMN user TEXT NOT NULL DEFAULT 'anonymous';
ALTER TABLE runs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
ALTER TABLE runs ADD COLUMN parent_run TEXT;
ALTER TABLE runs ADD COLUMN lease_owner TEXT;
ALTER TABLE runs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_expires_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN cancel_requested TEXT;
ALTER TABLE events ADD COLUMN v INTEGER NOT NULL DEFAULT 1;
UPDATE runs SET
    user = COALESCE((SELECT json_extract(payload, '$.user') FROM events WHERE run_id = runs.id AND seq = 1), 'anonymous'),
    tenant = COALESCE((SELECT json_extract(payload, '$.tenant') FROM events WHERE run_id = runs.id AND seq = 1), 'default'),
    parent_run = (SELECT json_extract(payload, '$.parent.run_id') FROM events WHERE run_id = runs.id AND seq = 1);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, created_ms);
";

/// From schema version 2: approvals keep the arguments of the call they hold, so the inbox can
/// show them without reading each run's log.
const MIGRATE_2_TO_3: &str = "
ALTER TABLE approvals ADD COLUMN args TEXT;
UPDATE approvals SET args = (
    SELECT json_extract(payload, '$.args') FROM events
    WHERE events.run_id = approvals.run_id
      AND json_extract(payload, '$.type') = 'approval_requested'
      AND json_extract(payload, '$.approval_id') = approvals.id
);
";

/// From schema version 3: runs keep what their model calls cost, so a list can rank them.
const MIGRATE_3_TO_4: &str = "
ALTER TABLE runs ADD COLUMN cost_micros INTEGER NOT NULL DEFAULT 0;
UPDATE runs SET cost_micros = COALESCE((
    SELECT SUM(COALESCE(json_extract(payload, '$.cost_micros'), 0)) FROM events
    WHERE events.run_id = runs.id
      AND json_extract(payload, '$.type') IN ('model_replied', 'grants_fixed')
), 0);
";

/// From schema version 5: events in a rowid table, in the order they were written, found by
/// run and sequence through an index. Keyed by run and sequence without a rowid, the table kept
/// each event (most a few hundred bytes to a few KiB) in its index's leaves: its right-most leaf,
/// once full, was balanced with its two neighbours and their parent, four pages written where a
/// rowid table's append writes one or two, on most of a gateway request's commits. The copy is
/// made once, in the migration's transaction. And a call's budget hold is in no index of its
/// run, only an admission (see `crate::ledger::SCHEMA`); a store begun at version 1 gets the
/// indexes its runs and approvals were listed without (no migration had made them).
const MIGRATE_5_TO_6: &str = "
CREATE TABLE events_6 (
    id       INTEGER PRIMARY KEY,
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    payload  TEXT NOT NULL,
    v        INTEGER NOT NULL DEFAULT 1
);
INSERT INTO events_6 (run_id, seq, at_ms, payload, v)
    SELECT run_id, seq, at_ms, payload, v FROM events ORDER BY run_id, seq;
DROP TABLE events;
ALTER TABLE events_6 RENAME TO events;
CREATE UNIQUE INDEX events_by_run ON events (run_id, seq);
DROP INDEX IF EXISTS budget_reservations_run;
CREATE INDEX IF NOT EXISTS budget_admissions_by_run ON budget_reservations (run_id) WHERE kind = 'admission';
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_ms);
CREATE INDEX IF NOT EXISTS approvals_by_status ON approvals (status, created_ms);
";

/// The file the budget ledger had before schema version 5, beside `rein.db`.
const OLD_LEDGER: &str = "budgets.sqlite";

/// Indexes added at schema version 6 that a rein of the same version without them neither needs
/// nor minds: made when a database opened lacks them, without a new version, so that an older
/// rein still opens the database. (`approvals_by_run`: a run that ends cancels its pending
/// approvals, which without it meant a look at every pending approval of every run, inside the
/// writer's transaction.)
const LATER_INDEXES: &[(&str, &str)] = &[(
    "approvals_by_run",
    "CREATE INDEX IF NOT EXISTS approvals_by_run ON approvals (run_id, status)",
)];

/// Makes the [`LATER_INDEXES`] a database lacks (a read when it has them all).
pub(super) fn add_later_indexes(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let db_err = |source| StoreError::Database {
        path: path.display().to_string(),
        source,
    };
    for (name, create) in LATER_INDEXES {
        let has: bool = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [name],
                |r| r.get::<_, i64>(0),
            )
            .map_err(db_err)?
            > 0;
        if !has {
            conn.execute_batch(create).map_err(db_err)?;
        }
    }
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one immediate transaction; the version is read
/// inside it, so two processes opening a new or old database at once migrate it once.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let db_err = |source| StoreError::Database {
        path: path.display().to_string(),
        source,
    };
    let version = |c: &Connection| -> Result<i64, StoreError> {
        c.pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)
    };
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err)?;
    let found = version(&tx)?;
    let has_runs: bool = tx
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(db_err)?
        > 0;
    match found {
        0 if !has_runs => {
            tx.execute_batch(SCHEMA).map_err(db_err)?;
            tx.execute_batch(crate::ledger::SCHEMA).map_err(db_err)?;
        }
        // A version-1 database (also one whose version was never written).
        0 | 1 => {
            tx.execute_batch(MIGRATE_1_TO_2).map_err(db_err)?;
            tx.execute_batch(MIGRATE_2_TO_3).map_err(db_err)?;
            tx.execute_batch(MIGRATE_3_TO_4).map_err(db_err)?;
        }
        2 => {
            tx.execute_batch(MIGRATE_2_TO_3).map_err(db_err)?;
            tx.execute_batch(MIGRATE_3_TO_4).map_err(db_err)?;
        }
        3 => tx.execute_batch(MIGRATE_3_TO_4).map_err(db_err)?,
        _ => {}
    }
    // From schema version 4: the budget ledger moves in from a file of its own.
    if has_runs && found < 5 {
        tx.execute_batch(crate::ledger::SCHEMA).map_err(db_err)?;
        crate::ledger::import(&tx, path, &path.with_file_name(OLD_LEDGER))?;
    }
    if has_runs && found < 6 {
        tx.execute_batch(MIGRATE_5_TO_6).map_err(db_err)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(db_err)?;
    tx.commit().map_err(db_err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rein_core::Durability;
    use rusqlite::Connection;

    use super::super::{SqliteStore, batch::CANCEL_PENDING, starts_with};

    /// How SQLite would run `sql` (its query plan, one step a line).
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let steps: Vec<String> = stmt
            .query_map(["x"], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        steps.join("\n")
    }

    /// A run's end, and a run or approval named by a prefix, find their rows through an index
    /// rather than by reading every approval or run; a database made before `approvals_by_run`
    /// gets it when opened, and keeps its version.
    #[test]
    fn runs_ends_and_prefixes_find_their_rows_through_indexes_also_in_an_older_database() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), Durability::Normal).unwrap());
        let raw = Connection::open(dir.path().join("rein.db")).unwrap();
        let check = |raw: &Connection| {
            let cancel = plan(raw, CANCEL_PENDING);
            assert!(
                cancel.contains("USING COVERING INDEX approvals_by_run (run_id=? AND status=?)")
                    || cancel.contains("USING INDEX approvals_by_run (run_id=? AND status=?)"),
                "{cancel}"
            );
            for (table, column) in [("runs", "id"), ("approvals a", "a.id")] {
                let sql = format!("SELECT 1 FROM {table} WHERE {}", starts_with(column));
                let found = plan(raw, &sql);
                assert!(
                    found.starts_with("SEARCH") && found.contains("(id>? AND id<?)"),
                    "{sql}: {found}"
                );
            }
        };
        check(&raw);
        raw.execute_batch("DROP INDEX approvals_by_run").unwrap();
        let before = plan(&raw, CANCEL_PENDING);
        assert!(!before.contains("approvals_by_run"), "{before}");
        drop((
            raw,
            SqliteStore::open(dir.path(), Durability::Normal).unwrap(),
        ));
        // A new connection: a query plan is made from the schema a connection last read.
        let raw = Connection::open(dir.path().join("rein.db")).unwrap();
        check(&raw);
        let version: i64 = raw
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, super::SCHEMA_VERSION);
    }
}
