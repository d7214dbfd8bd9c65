//! The labels each gateway conversation has seen, in their own SQLite file
//! (`conversations.sqlite`): one row per conversation that has any, keyed by whose it is (tenant,
//! user), the gateway, and its name. A conversation's later requests are judged with them even
//! after its client drops the tool results that brought them (a trimmed or compacted history),
//! across a restart of the server and across the processes sharing the state directory. Labels
//! are only ever added.

use std::path::Path;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use crate::StoreError;
use crate::side::SideDb;

/// Whose conversation, at which gateway, and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationRef<'a> {
    /// The tenant of the caller.
    pub tenant: &'a str,
    /// The user the caller acts as.
    pub user: &'a str,
    /// The gateway agent.
    pub agent: &'a str,
    /// The conversation's name (the client's, or derived from its history).
    pub conversation: &'a str,
}

/// The labels of every gateway conversation of a state directory.
#[derive(Debug)]
pub struct ConversationStore {
    db: SideDb,
}

const SELECT: &str = "SELECT labels FROM conversation_labels
     WHERE tenant = ?1 AND user = ?2 AND agent = ?3 AND conversation = ?4";

impl ConversationStore {
    /// Opens (or creates) `<state_dir>/conversations.sqlite`.
    pub fn open(state_dir: &Path) -> Result<ConversationStore, StoreError> {
        Ok(ConversationStore {
            db: SideDb::open(
                state_dir,
                "conversations.sqlite",
                &["CREATE TABLE IF NOT EXISTS conversation_labels (
                    tenant TEXT NOT NULL, user TEXT NOT NULL, agent TEXT NOT NULL,
                    conversation TEXT NOT NULL, labels TEXT NOT NULL,
                    updated_ms INTEGER NOT NULL,
                    PRIMARY KEY (tenant, user, agent, conversation)) WITHOUT ROWID;"],
            )?,
        })
    }

    /// The labels the conversation has seen, in the order they were first recorded; none for a
    /// conversation never recorded.
    pub fn labels(&self, c: ConversationRef<'_>) -> Result<Vec<String>, StoreError> {
        // Every gateway request asks: the statement is parsed once and kept.
        let conn = self.db.conn();
        self.read(&conn, c)
    }

    /// Adds `labels` to the conversation's (those it has are kept, in their order), and
    /// answers all it has now. Nothing is written when it has them all already; otherwise the
    /// read and the write are one immediate transaction, so two processes adding at once lose
    /// neither's.
    pub fn add(
        &self,
        c: ConversationRef<'_>,
        labels: &[String],
        at_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.db.conn();
        let known = self.read(&conn, c)?;
        if labels.iter().all(|l| known.contains(l)) {
            return Ok(known);
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db.err(e))?;
        let mut merged = self.read(&tx, c)?;
        for l in labels {
            if !merged.contains(l) {
                merged.push(l.clone());
            }
        }
        let text = serde_json::Value::from(merged.clone()).to_string();
        tx.execute(
            "INSERT INTO conversation_labels (tenant, user, agent, conversation, labels, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (tenant, user, agent, conversation)
             DO UPDATE SET labels = excluded.labels, updated_ms = excluded.updated_ms",
            params![
                c.tenant,
                c.user,
                c.agent,
                c.conversation,
                text,
                at_ms as i64
            ],
        )
        .map_err(|e| self.db.err(e))?;
        tx.commit().map_err(|e| self.db.err(e))?;
        Ok(merged)
    }

    fn read(
        &self,
        conn: &rusqlite::Connection,
        c: ConversationRef<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let mut stmt = conn.prepare_cached(SELECT).map_err(|e| self.db.err(e))?;
        let text: Option<String> = stmt
            .query_row(params![c.tenant, c.user, c.agent, c.conversation], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.db.err(e))?;
        match text {
            None => Ok(Vec::new()),
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::Database {
                path: self.db.path().display().to_string(),
                source: rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                ),
            }),
        }
    }
}
