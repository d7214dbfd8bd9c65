//! The small SQLite files beside the event store (`budgets.sqlite`, `memory.sqlite`): opened the
//! same way (WAL, a busy timeout, their schema created if missing), one connection behind a
//! mutex, errors naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use crate::StoreError;

pub(crate) struct SideDb {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SideDb {
    /// Opens (or creates) `<state_dir>/<file>` and runs `schema` (idempotent DDL).
    pub(crate) fn open(state_dir: &Path, file: &str, schema: &str) -> Result<SideDb, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|e| StoreError::CommitFailed {
            path: state_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = state_dir.join(file);
        let err = |source| StoreError::Database {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(schema).map_err(err)?;
        Ok(SideDb {
            path,
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
