//! What an operator sees and does of the gateway's conversations (kept in
//! `conversations.sqlite`, see `rein_store::ConversationStore`): lists them with the labels each
//! has seen and the runs held for it, forgets one (its later requests are judged only on what
//! their own history carries: for example after a person has checked what an `untrusted` tool
//! result brought in), and prunes those no request has used for a while that hold nothing.
//! Requests never remove anything; this is the only way a conversation's labels go, and each
//! conversation that goes is first recorded in the audit trail (`conversation_forgotten`: whose
//! it was, the labels forgotten and the runs it held, which stay held, why, and who asked),
//! under a signed checkpoint, flushed to disk: a change of what later decisions see is as
//! answerable as the decisions.

use rein_audit::Entry;
use rein_store::{ConversationRef, ConversationRow};
use serde_json::json;

use crate::ConversationQuery;

use crate::{Caller, Error, Rein, v1};

fn wire(row: ConversationRow) -> v1::Conversation {
    v1::Conversation {
        key: v1::ConversationKey {
            tenant: row.tenant,
            user: row.user,
            agent: row.agent,
            conversation: row.conversation,
        },
        labels: row.kept.labels,
        held: row.kept.held,
        given_up: row.kept.given_up,
        updated_ms: row.updated_ms,
        used_ms: row.used_ms,
    }
}

impl Rein {
    /// The conversations `query` names, most recently changed first, at most `limit`.
    pub fn list_conversations(
        &self,
        query: ConversationQuery<'_>,
        limit: usize,
    ) -> Result<Vec<v1::Conversation>, Error> {
        Ok(self
            .conversations()?
            .list(query, limit)?
            .into_iter()
            .map(wire)
            .collect())
    }

    /// Forgets one conversation: the labels it has seen (the runs held for it stay, so a call a
    /// person approves still reaches its next request). `by` is who asked (`None`: the command
    /// line, with the state directory's files), named in the audit record written before it
    /// goes.
    pub fn forget_conversation(
        &self,
        key: v1::ConversationKey,
        by: Option<&Caller>,
    ) -> Result<(), Error> {
        let c = ConversationRef {
            tenant: &key.tenant,
            user: &key.user,
            agent: &key.agent,
            conversation: &key.conversation,
        };
        // The audit trail opened before the conversations' file is locked.
        self.engine()?;
        let record = |rows: &[ConversationRow]| self.record_forgotten(rows, "forgotten", by);
        if self.conversations()?.forget(c, record)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no conversation `{}` of user `{}` (tenant `{}`) at gateway `{}` with labels to forget: `rein conversations list` shows those kept",
                key.conversation, key.user, key.tenant, key.agent
            )))
        }
    }

    /// Forgets the conversations `query` names that no request has used for `unused_for_days`
    /// days (1 to [`MAX_DAYS`]) before `now_ms` and hold no run for a person's approval, each
    /// recorded in the audit trail first as [`Rein::forget_conversation`] does. Answers how
    /// many it forgot.
    pub fn prune_conversations(
        &self,
        query: ConversationQuery<'_>,
        unused_for_days: u32,
        now_ms: u64,
        by: Option<&Caller>,
    ) -> Result<usize, Error> {
        if !(1..=MAX_DAYS).contains(&unused_for_days) {
            return Err(Error::Invalid(format!(
                "`unused_for_days` is 1 to {MAX_DAYS}, not {unused_for_days}: a conversation used less than a day ago may be in the middle of a request"
            )));
        }
        let before = now_ms.saturating_sub(u64::from(unused_for_days) * MS_PER_DAY);
        let days = if unused_for_days == 1 { "day" } else { "days" };
        let why = format!("pruned: unused for {unused_for_days} {days}");
        self.engine()?;
        let record = |rows: &[ConversationRow]| self.record_forgotten(rows, &why, by);
        self.conversations()?.prune(query, before, record)
    }

    /// Records each conversation about to be forgotten in the audit trail, flushed to disk and
    /// under a signed checkpoint, before it goes.
    fn record_forgotten(
        &self,
        rows: &[ConversationRow],
        why: &str,
        by: Option<&Caller>,
    ) -> Result<(), Error> {
        let engine = self.engine()?;
        let at_ms = engine.clock().now_ms();
        let by = match by {
            Some(caller) => json!({
                "via": "http", "tenant": caller.tenant, "user": caller.user, "token": caller.token_id,
            }),
            None => json!({"via": "cli"}),
        };
        let entries: Vec<Entry> = rows
            .iter()
            .map(|row| Entry {
                at_ms,
                kind: FORGOTTEN.into(),
                run_id: None,
                event: None,
                data: json!({
                    "tenant": row.tenant, "user": row.user, "agent": row.agent,
                    "conversation": row.conversation, "labels": row.kept.labels,
                    "held": row.kept.held, "given_up": row.kept.given_up,
                    "updated_ms": row.updated_ms, "why": why, "by": by,
                })
                .into(),
            })
            .collect();
        engine
            .audit_log()
            .append_and_checkpoint(&entries, true, Some((at_ms, true)))?;
        Ok(())
    }
}

/// The kind of the audit record of a conversation an operator forgot.
pub const FORGOTTEN: &str = "conversation_forgotten";

/// The most days a prune looks back (a hundred years).
const MAX_DAYS: u32 = 36_500;

/// Milliseconds in a day.
const MS_PER_DAY: u64 = 86_400_000;
