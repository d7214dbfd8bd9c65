//! The small SQLite files beside the event store (`memory.sqlite`, `tokens.sqlite`,
//! `conversations.sqlite`), and the budget
//! ledger's reads of the store's own file: opened the same way (WAL, a busy timeout, their schema
//! migrated by version), one connection behind a mutex, errors naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// Switches a connection to WAL mode. Switching needs a moment of exclusive access, which many
/// processes opening a new state directory at once contend for; a busy answer is retried for as
/// long as the busy timeout would wait.
pub(crate) fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a connection waits for another writer (or a checkpoint) before it gives up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to `path`: in WAL mode, waiting up to ten seconds for another writer, with room
/// for every statement a side database runs (the ledger's are all cached).
fn configured(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(64);
    enable_wal(&conn)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

pub(crate) struct SideDb {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// A side database shows as its file: the stores over one derive their `Debug` from it.
impl std::fmt::Debug for SideDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideDb").field("path", &self.path).finish()
    }
}

impl SideDb {
    /// Opens (or creates) `<state_dir>/<file>` and brings its schema up to date: `migrations[i]`
    /// takes the file from version `i` to `i + 1` (`PRAGMA user_version`), in one immediate
    /// transaction that reads the version inside it, so concurrent openers migrate once.
    pub(crate) fn open(
        state_dir: &Path,
        file: &str,
        migrations: &[&str],
    ) -> Result<SideDb, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Io {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join(file);
        let err = |source| StoreError::Database {
            path: path.display().to_string(),
            source,
        };
        let mut conn = configured(&path).map_err(err)?;
        let version = |c: &Connection| -> Result<i64, StoreError> {
            c.pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(err)
        };
        let target = migrations.len() as i64;
        let found = version(&conn)?;
        if found > target {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found,
                supported: target,
            });
        }
        if found < target {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(err)?;
            let found = version(&tx)?;
            for step in migrations.iter().skip(found.max(0) as usize) {
                tx.execute_batch(step).map_err(err)?;
            }
            tx.pragma_update(None, "user_version", target)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(SideDb {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// A connection to `path`, a database whose schema its owner keeps (the store's `rein.db`,
    /// which holds the ledger's tables): set up as [`SideDb::open`] sets one up, not migrated.
    pub(crate) fn attach(path: &Path) -> Result<SideDb, StoreError> {
        let conn = configured(path).map_err(|source| StoreError::Database {
            path: path.display().to_string(),
            source,
        })?;
        Ok(SideDb {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        })
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A database error, naming the file.
    pub(crate) fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Database {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// The connection.
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
