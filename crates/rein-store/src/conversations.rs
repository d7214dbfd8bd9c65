//! What rein keeps of each gateway conversation, in its own SQLite file
//! (`conversations.sqlite`): one row per conversation, keyed by whose it is (tenant, user), the
//! gateway, and its name, holding
//! - the labels it has seen, only ever added to: its later requests are judged with them even
//!   after its client drops the tool results that brought them (a trimmed or compacted history);
//! - the runs held for a person's approval whose calls its next request receives, oldest first;
//! - the held runs given up (their resume failed for good), never to be held again;
//! - the held run its last request resumed, and which request that was: the same request sent
//!   again (a client retrying an answer it lost) is answered from that run again, until the
//!   conversation moves on.
//!
//! Every process serving the state directory reads and writes the same rows, so a restart or a
//! second server forgets neither. Requests only ever add labels; only an operator removes a
//! conversation (`forget`, or `prune` of those no request has used for a while and holding
//! nothing), and what is removed is shown to the caller's record of it (the audit trail) before
//! it goes. Each change is one immediate transaction that re-reads the row inside it, so two
//! processes changing one conversation at once lose neither's change.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

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

/// What is kept of a conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    /// The labels it has seen, in the order they were first kept.
    pub labels: Vec<String>,
    /// The runs held for approval whose calls it is to receive, oldest first.
    pub held: Vec<String>,
    /// The held runs given up: no request could resume them.
    pub given_up: Vec<String>,
    /// The held run the conversation's last request resumed, if it has not moved on since.
    pub resumed: Option<Resumed>,
}

/// A held run a request resumed: the same request sent again is answered from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resumed {
    /// The run.
    pub run: String,
    /// The request that resumed it, as its caller identifies requests (a digest of it).
    pub request: String,
    /// When it was resumed (ms since the epoch).
    pub at_ms: u64,
}

/// A conversation as listed: whose it is, and what is kept of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// The tenant of its caller.
    pub tenant: String,
    /// The user its caller acts as.
    pub user: String,
    /// The gateway agent.
    pub agent: String,
    /// Its name.
    pub conversation: String,
    /// What is kept of it.
    pub kept: Conversation,
    /// When it last changed (ms since the epoch): a label or a held run added, a run released.
    pub updated_ms: u64,
    /// When a request last used it (ms since the epoch; kept to the hour, see
    /// [`ConversationStore::used`]), or changed it.
    pub used_ms: u64,
}

/// Which conversations to list or prune: each field that is set must match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConversationFilter<'a> {
    /// Only this tenant's.
    pub tenant: Option<&'a str>,
    /// Only this gateway's.
    pub agent: Option<&'a str>,
}

/// Every gateway conversation of a state directory.
#[derive(Debug)]
pub struct ConversationStore {
    db: SideDb,
    /// A second connection for [`ConversationStore::get`], which every gateway request makes:
    /// in WAL mode it reads while a change of this process waits for another process's write.
    reads: SideDb,
}

const SELECT: &str = "SELECT labels, held, given_up, resumed FROM conversations
     WHERE tenant = ?1 AND user = ?2 AND agent = ?3 AND conversation = ?4";

const UPSERT: &str = "INSERT INTO conversations
     (tenant, user, agent, conversation, labels, held, given_up, updated_ms, used_ms, resumed)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)
     ON CONFLICT (tenant, user, agent, conversation)
     DO UPDATE SET labels = excluded.labels, held = excluded.held,
                   given_up = excluded.given_up, updated_ms = excluded.updated_ms,
                   resumed = excluded.resumed,
                   used_ms = MAX(used_ms, excluded.used_ms)";

/// Where a run is put among a conversation's held runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAt {
    /// After the others: held now.
    Last,
    /// Before the others: held before, and put back after a resume that could not go on yet.
    First,
    /// In the order of run ids (rein's are time-ordered): found again in the store.
    InOrder,
}

impl ConversationStore {
    /// Opens (or creates) `<state_dir>/conversations.sqlite`.
    pub fn open(state_dir: &Path) -> Result<ConversationStore, StoreError> {
        let db = SideDb::open(
            state_dir,
            "conversations.sqlite",
            &[
                "CREATE TABLE IF NOT EXISTS conversations (
                    tenant TEXT NOT NULL, user TEXT NOT NULL, agent TEXT NOT NULL,
                    conversation TEXT NOT NULL,
                    labels TEXT NOT NULL DEFAULT '[]', held TEXT NOT NULL DEFAULT '[]',
                    given_up TEXT NOT NULL DEFAULT '[]',
                    updated_ms INTEGER NOT NULL,
                    PRIMARY KEY (tenant, user, agent, conversation)) WITHOUT ROWID;",
                // Version 2: when a request last used each (a prune goes by it).
                "ALTER TABLE conversations ADD COLUMN used_ms INTEGER NOT NULL DEFAULT 0;
                 UPDATE conversations SET used_ms = updated_ms;",
                // Version 3: the held run the last request resumed, and for which request.
                "ALTER TABLE conversations ADD COLUMN resumed TEXT;",
            ],
        )?;
        let reads = SideDb::attach(db.path())?;
        Ok(ConversationStore { db, reads })
    }

    /// The conversations `filter` names, most recently changed first, at most `limit`.
    pub fn list(
        &self,
        filter: ConversationFilter<'_>,
        limit: usize,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        self.select(
            &self.reads.conn(),
            "WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR agent = ?2)
             ORDER BY updated_ms DESC, tenant, user, agent, conversation LIMIT ?3",
            params![
                filter.tenant,
                filter.agent,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
        )
    }

    /// Forgets the conversation's labels, and the conversation with them unless it holds runs
    /// for a person's approval (those stay held, so an approved call still reaches its next
    /// request). `record` is shown what is forgotten first, inside the transaction that forgets
    /// it (the operator's audit record): if it fails, nothing is forgotten. Answers whether it
    /// had labels to forget.
    pub fn forget<E: From<StoreError>>(
        &self,
        c: ConversationRef<'_>,
        record: impl FnOnce(&[ConversationRow]) -> Result<(), E>,
    ) -> Result<bool, E> {
        // One without labels (forgotten already, or holding runs only) has nothing to forget.
        let gone = self.remove(
            "WHERE tenant = ?1 AND user = ?2 AND agent = ?3 AND conversation = ?4
               AND labels != '[]'",
            params![c.tenant, c.user, c.agent, c.conversation],
            record,
        )?;
        Ok(gone > 0)
    }

    /// Forgets the conversations `filter` names that no request has used or changed since
    /// `before_ms` (see [`ConversationStore::used`]) and that hold no run for a person's
    /// approval (one that does is still in use, however long the person takes), each shown to
    /// `record` first as [`ConversationStore::forget`] does. Answers how many were forgotten.
    pub fn prune<E: From<StoreError>>(
        &self,
        filter: ConversationFilter<'_>,
        before_ms: u64,
        record: impl FnOnce(&[ConversationRow]) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.remove(
            "WHERE used_ms < ?1 AND json_array_length(held) = 0
               AND (?2 IS NULL OR tenant = ?2) AND (?3 IS NULL OR agent = ?3)",
            params![
                i64::try_from(before_ms).unwrap_or(i64::MAX),
                filter.tenant,
                filter.agent
            ],
            record,
        )
    }

    /// Removes the rows `filter` (a `WHERE` clause over `params`) finds, in one immediate
    /// transaction, once `record` has seen them.
    fn remove<E: From<StoreError>>(
        &self,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
        record: impl FnOnce(&[ConversationRow]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut conn = self.db.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db.err(e))?;
        let rows = self.select(&tx, filter, params)?;
        if rows.is_empty() {
            return Ok(0);
        }
        record(&rows)?;
        for row in &rows {
            // A row holding runs keeps them (and the runs given up), its labels gone: a held
            // call approved later still reaches the conversation's next request, in this
            // process as in the next to start.
            let sql = if row.kept.held.is_empty() {
                "DELETE FROM conversations
                 WHERE tenant = ?1 AND user = ?2 AND agent = ?3 AND conversation = ?4"
            } else {
                "UPDATE conversations SET labels = '[]'
                 WHERE tenant = ?1 AND user = ?2 AND agent = ?3 AND conversation = ?4"
            };
            tx.execute(
                sql,
                params![row.tenant, row.user, row.agent, row.conversation],
            )
            .map_err(|e| self.db.err(e))?;
        }
        tx.commit().map_err(|e| self.db.err(e))?;
        Ok(rows.len())
    }

    /// The rows `tail` (a `WHERE` clause, an order, a limit) finds over `params`.
    fn select(
        &self,
        conn: &Connection,
        tail: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT tenant, user, agent, conversation, labels, held, given_up, updated_ms, used_ms,
                        resumed
                 FROM conversations {tail}"
            ))
            .map_err(|e| self.db.err(e))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    ConversationRow {
                        tenant: r.get(0)?,
                        user: r.get(1)?,
                        agent: r.get(2)?,
                        conversation: r.get(3)?,
                        kept: Conversation::default(),
                        updated_ms: r.get::<_, i64>(7)?.max(0) as u64,
                        used_ms: r.get::<_, i64>(8)?.max(0) as u64,
                    },
                    [r.get::<_, String>(4)?, r.get(5)?, r.get(6)?],
                    r.get::<_, Option<String>>(9)?,
                ))
            })
            .map_err(|e| self.db.err(e))?;
        let mut found = Vec::new();
        for row in rows {
            let (mut row, [labels, held, given_up], resumed) = row.map_err(|e| self.db.err(e))?;
            row.kept = self.decode(&labels, &held, &given_up, resumed.as_deref())?;
            found.push(row);
        }
        Ok(found)
    }

    /// Notes that a request used the conversation at `at_ms` (one kept already; nothing is
    /// added for one that is not). A prune forgets only those no request has used for its days:
    /// a conversation in use keeps the labels it has seen however long ago it saw them. Callers
    /// note a use now and then (say, hourly), not on every request, as it is a write.
    pub fn used(&self, c: ConversationRef<'_>, at_ms: u64) -> Result<(), StoreError> {
        self.db
            .conn()
            .execute(
                "UPDATE conversations SET used_ms = ?5
                 WHERE tenant = ?1 AND user = ?2 AND agent = ?3 AND conversation = ?4
                   AND used_ms < ?5",
                params![
                    c.tenant,
                    c.user,
                    c.agent,
                    c.conversation,
                    i64::try_from(at_ms).unwrap_or(i64::MAX)
                ],
            )
            .map(|_| ())
            .map_err(|e| self.db.err(e))
    }

    /// What is kept of the conversation; nothing for one never kept.
    pub fn get(&self, c: ConversationRef<'_>) -> Result<Conversation, StoreError> {
        let conn = self.reads.conn();
        self.read(&conn, c)
    }

    /// Adds `labels` to the conversation's (those it has are kept, in their order), and
    /// answers all it has now. Nothing is written when it has them all already.
    pub fn add_labels(
        &self,
        c: ConversationRef<'_>,
        labels: &[String],
        at_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let change = |kept: &mut Conversation| {
            let mut changed = false;
            for l in labels {
                if !kept.labels.contains(l) {
                    kept.labels.push(l.clone());
                    changed = true;
                }
            }
            changed
        };
        Ok(self.change(c, at_ms, change)?.labels)
    }

    /// Holds run `run_id` for the conversation's next request, where `at` says (a run held
    /// already stays where it is; one given up is not held again). Answers whether the
    /// conversation holds the run now: not if it was given up.
    pub fn hold(
        &self,
        c: ConversationRef<'_>,
        run_id: &str,
        at: HoldAt,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut holds = true;
        self.change(c, at_ms, |kept| {
            if kept.given_up.iter().any(|r| r == run_id) {
                holds = false;
                return false;
            }
            if kept.held.iter().any(|r| r == run_id) {
                return false;
            }
            let at = match at {
                HoldAt::Last => kept.held.len(),
                HoldAt::First => 0,
                HoldAt::InOrder => kept.held.partition_point(|r| r.as_str() < run_id),
            };
            kept.held.insert(at, run_id.to_owned());
            true
        })?;
        Ok(holds)
    }

    /// Releases run `run_id`: no later request of the conversation is answered from it. Answers
    /// whether it was held (of two processes releasing it at once, one is told it was).
    pub fn release(
        &self,
        c: ConversationRef<'_>,
        run_id: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        self.release_as(c, run_id, None, at_ms)
    }

    /// Releases run `run_id` for `request` (a digest of the request, as the caller identifies
    /// requests) to resume, as [`ConversationStore::release`] does, and notes both in the same
    /// write: the same request sent again is answered from the run, not from the model, until
    /// the conversation [moves on](ConversationStore::moved_on).
    pub fn release_to(
        &self,
        c: ConversationRef<'_>,
        run_id: &str,
        request: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        self.release_as(c, run_id, Some(request), at_ms)
    }

    fn release_as(
        &self,
        c: ConversationRef<'_>,
        run_id: &str,
        request: Option<&str>,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut released = false;
        self.change(c, at_ms, |kept| {
            let before = kept.held.len();
            kept.held.retain(|r| r != run_id);
            released = kept.held.len() < before;
            if released && let Some(request) = request {
                kept.resumed = Some(Resumed {
                    run: run_id.to_owned(),
                    request: request.to_owned(),
                    at_ms,
                });
            }
            released
        })?;
        Ok(released)
    }

    /// The conversation moved on from run `run_id` (a request other than the one that resumed
    /// it came): no request is answered from it again.
    pub fn moved_on(
        &self,
        c: ConversationRef<'_>,
        run_id: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.change(c, at_ms, |kept| {
            if kept.resumed.as_ref().is_none_or(|r| r.run != run_id) {
                return false;
            }
            kept.resumed = None;
            true
        })
        .map(|_| ())
    }

    /// Gives run `run_id` up: it is released, and never held again (a process reading the
    /// runs waiting for approval from the store finds it there still); and, if the last
    /// request resumed it, the conversation moves on from it in the same write (the request
    /// sent again is answered as any other, not told to wait for a resume that failed for good).
    pub fn give_up(
        &self,
        c: ConversationRef<'_>,
        run_id: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.change(c, at_ms, |kept| {
            kept.held.retain(|r| r != run_id);
            let resumed = kept.resumed.as_ref().is_some_and(|r| r.run == run_id);
            if resumed {
                kept.resumed = None;
            }
            if kept.given_up.iter().any(|r| r == run_id) {
                return resumed;
            }
            kept.given_up.push(run_id.to_owned());
            true
        })
        .map(|_| ())
    }

    /// Applies `change` to the conversation and writes it if `change` says it changed: read
    /// first without a lock (most requests change nothing), then read, changed and written in
    /// one immediate transaction.
    fn change(
        &self,
        c: ConversationRef<'_>,
        at_ms: u64,
        mut change: impl FnMut(&mut Conversation) -> bool,
    ) -> Result<Conversation, StoreError> {
        let mut conn = self.db.conn();
        let mut kept = self.read(&conn, c)?;
        if !change(&mut kept) {
            return Ok(kept);
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db.err(e))?;
        let mut kept = self.read(&tx, c)?;
        if change(&mut kept) {
            let json = |v: &[String]| serde_json::Value::from(v.to_vec()).to_string();
            tx.execute(
                UPSERT,
                params![
                    c.tenant,
                    c.user,
                    c.agent,
                    c.conversation,
                    json(&kept.labels),
                    json(&kept.held),
                    json(&kept.given_up),
                    at_ms as i64,
                    kept.resumed
                        .as_ref()
                        .map(|r| serde_json::to_string(r).unwrap_or_default())
                ],
            )
            .map_err(|e| self.db.err(e))?;
        }
        tx.commit().map_err(|e| self.db.err(e))?;
        Ok(kept)
    }

    fn read(&self, conn: &Connection, c: ConversationRef<'_>) -> Result<Conversation, StoreError> {
        // Every gateway request asks: the statement is parsed once and kept.
        let mut stmt = conn.prepare_cached(SELECT).map_err(|e| self.db.err(e))?;
        let row: Option<(String, String, String, Option<String>)> = stmt
            .query_row(params![c.tenant, c.user, c.agent, c.conversation], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()
            .map_err(|e| self.db.err(e))?;
        let Some((labels, held, given_up, resumed)) = row else {
            return Ok(Conversation::default());
        };
        self.decode(&labels, &held, &given_up, resumed.as_deref())
    }

    /// A row's three lists and the run it resumed last, from their JSON.
    fn decode(
        &self,
        labels: &str,
        held: &str,
        given_up: &str,
        resumed: Option<&str>,
    ) -> Result<Conversation, StoreError> {
        let json = |text: &str| -> Result<Vec<String>, StoreError> { self.json(text) };
        Ok(Conversation {
            labels: json(labels)?,
            held: json(held)?,
            given_up: json(given_up)?,
            resumed: resumed.map(|r| self.json(r)).transpose()?,
        })
    }

    /// A column's JSON, or the error naming the file it is in.
    fn json<T: serde::de::DeserializeOwned>(&self, text: &str) -> Result<T, StoreError> {
        serde_json::from_str(text).map_err(|e| StoreError::Database {
            path: self.db.path().display().to_string(),
            source: rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                Box::new(e),
            ),
        })
    }
}
