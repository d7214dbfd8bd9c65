//! What an operator sees and does of the gateway's conversations (kept in
//! `conversations.sqlite`, see `rein_store::ConversationStore`): lists them with the labels each
//! has seen and the runs held for it, forgets one (its later requests are judged only on what
//! their own history carries: for example after a person has checked what an `untrusted` tool
//! result brought in), and prunes those unchanged for a while that hold nothing. Requests never
//! remove anything; this is the only way a conversation's labels go.

use rein_store::{ConversationRef, ConversationRow};

use crate::ConversationQuery;

use crate::{Error, Rein, v1};

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

    /// Forgets one conversation: the labels it has seen and the runs held for it (those still
    /// wait for a person in the store, and are held for it again by the next process to start
    /// serving the gateway).
    pub fn forget_conversation(&self, key: v1::ConversationKey) -> Result<(), Error> {
        let c = ConversationRef {
            tenant: &key.tenant,
            user: &key.user,
            agent: &key.agent,
            conversation: &key.conversation,
        };
        if self.conversations()?.forget(c)? {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "no conversation `{}` of user `{}` (tenant `{}`) at gateway `{}`: `rein conversations list` shows those kept",
                key.conversation, key.user, key.tenant, key.agent
            )))
        }
    }

    /// Forgets the conversations `query` names that have not changed for `unchanged_for_days`
    /// days (1 to [`MAX_DAYS`]) before `now_ms` and hold no run for a person's approval. Answers how
    /// many it forgot.
    pub fn prune_conversations(
        &self,
        query: ConversationQuery<'_>,
        unchanged_for_days: u32,
        now_ms: u64,
    ) -> Result<usize, Error> {
        if !(1..=MAX_DAYS).contains(&unchanged_for_days) {
            return Err(Error::Invalid(format!(
                "`unchanged_for_days` is 1 to {MAX_DAYS}, not {unchanged_for_days}: a conversation that changed less than a day ago may be in the middle of a request"
            )));
        }
        let before = now_ms.saturating_sub(u64::from(unchanged_for_days) * MS_PER_DAY);
        Ok(self.conversations()?.prune(query, before)?)
    }
}

/// The most days a prune looks back (a hundred years).
const MAX_DAYS: u32 = 36_500;

/// Milliseconds in a day.
const MS_PER_DAY: u64 = 86_400_000;
