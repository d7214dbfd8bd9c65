//! API tokens of `rein serve`, in their own SQLite file (`tokens.sqlite`): each token's id, the
//! SHA-256 of its secret (never the secret), the tenant and user it acts as, its scopes, and when
//! it expires or was revoked.

use std::path::Path;

use rusqlite::{OptionalExtension, params};

use crate::StoreError;
use crate::side::SideDb;

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Its id (the part of the token before its secret).
    pub id: String,
    /// The SHA-256 of its secret, hex.
    pub hash: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// The user it acts as.
    pub user: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// When it expires, if it does.
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

/// The tokens of a state directory.
#[derive(Debug)]
pub struct TokenStore {
    db: SideDb,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        id: r.get(0)?,
        hash: r.get(1)?,
        tenant: r.get(2)?,
        user: r.get(3)?,
        scopes: r
            .get::<_, String>(4)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_ms: r.get::<_, i64>(5)? as u64,
        expires_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        revoked_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
    })
}

const COLUMNS: &str = "id, hash, tenant, user, scopes, created_ms, expires_ms, revoked_ms";

impl TokenStore {
    /// Opens (or creates) `<state_dir>/tokens.sqlite`.
    pub fn open(state_dir: &Path) -> Result<TokenStore, StoreError> {
        Ok(TokenStore {
            db: SideDb::open(
                state_dir,
                "tokens.sqlite",
                &["CREATE TABLE IF NOT EXISTS tokens (
                    id TEXT PRIMARY KEY, hash TEXT NOT NULL, tenant TEXT NOT NULL,
                    user TEXT NOT NULL, scopes TEXT NOT NULL, created_ms INTEGER NOT NULL,
                    expires_ms INTEGER, revoked_ms INTEGER);"],
            )?,
        })
    }

    /// Stores a new token.
    pub fn create(&self, token: &TokenRow) -> Result<(), StoreError> {
        self.db
            .conn()
            .execute(
                "INSERT INTO tokens (id, hash, tenant, user, scopes, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    token.id,
                    token.hash,
                    token.tenant,
                    token.user,
                    token.scopes.join(","),
                    token.created_ms as i64,
                    token.expires_ms.map(|v| v as i64)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.db.err(e))
    }

    /// The token with this id.
    pub fn get(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        // Every authenticated request asks: the statement is parsed once and kept.
        let conn = self.db.conn();
        let mut stmt = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM tokens WHERE id = ?1"))
            .map_err(|e| self.db.err(e))?;
        stmt.query_row(params![id], row)
            .optional()
            .map_err(|e| self.db.err(e))
    }

    /// Every token, or one tenant's, newest first.
    pub fn list(&self, tenant: Option<&str>) -> Result<Vec<TokenRow>, StoreError> {
        let conn = self.db.conn();
        let sql = format!(
            "SELECT {COLUMNS} FROM tokens WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_ms DESC, id"
        );
        let mut stmt = conn.prepare(&sql).map_err(|e| self.db.err(e))?;
        let rows = stmt
            .query_map(params![tenant], row)
            .map_err(|e| self.db.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db.err(e))
    }

    /// Revokes a token; false if there is none with this id or it was revoked already.
    pub fn revoke(&self, id: &str, at_ms: u64) -> Result<bool, StoreError> {
        self.db
            .conn()
            .execute(
                "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
                params![id, at_ms as i64],
            )
            .map(|n| n > 0)
            .map_err(|e| self.db.err(e))
    }
}
