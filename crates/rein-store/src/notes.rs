//! Notes the model keeps through `memory.write`, in their own SQLite file (`memory.sqlite`):
//! one table keyed by (scope key, note key). The scope key says whose memory it is
//! (`session:<root run>`, `agent:<name>`, `user:<agent>/<user>`); the engine binds each run to its
//! three scope keys, so a run can never reach another run's session or another user's notes.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use crate::side::SideDb;

use crate::StoreError;

/// The notes of every scope.
#[derive(Debug)]
pub struct NoteStore {
    db: SideDb,
}

impl NoteStore {
    /// Opens (or creates) `<state_dir>/memory.sqlite`.
    pub fn open(state_dir: &Path) -> Result<NoteStore, StoreError> {
        Ok(NoteStore {
            db: SideDb::open(
                state_dir,
                "memory.sqlite",
                &["CREATE TABLE IF NOT EXISTS notes (
                    scope TEXT NOT NULL, key TEXT NOT NULL, note TEXT NOT NULL,
                    updated_ms INTEGER NOT NULL, run_id TEXT NOT NULL,
                    PRIMARY KEY (scope, key));"],
            )?,
        })
    }

    /// The note under `key` in `scope`.
    pub fn read(&self, scope: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.db
            .conn()
            .query_row(
                "SELECT note FROM notes WHERE scope = ?1 AND key = ?2",
                params![scope, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db.err(e))
    }

    /// Up to `limit` notes of `scope`, newest first.
    pub fn list(&self, scope: &str, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare("SELECT key, note FROM notes WHERE scope = ?1 ORDER BY updated_ms DESC, key LIMIT ?2")
            .map_err(|e| self.db.err(e))?;
        let rows = stmt
            .query_map(params![scope, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.db.err(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.db.err(e))
    }

    /// Keeps `note` under `key` in `scope`.
    pub fn write(
        &self,
        scope: &str,
        key: &str,
        note: &str,
        run_id: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.db.conn()
            .execute(
                "INSERT INTO notes (scope, key, note, updated_ms, run_id) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (scope, key) DO UPDATE SET note = excluded.note,
                   updated_ms = excluded.updated_ms, run_id = excluded.run_id",
                params![scope, key, note, now_ms as i64, run_id],
            )
            .map(|_| ())
            .map_err(|e| self.db.err(e))
    }
}
