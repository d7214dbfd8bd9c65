//! `rein conversations`: the gateway's conversations as kept in the state directory (the labels
//! each has seen, the runs held for it), listed, forgotten one at a time, or pruned when
//! unused for a while and holding nothing. Its subcommands' shape is here beside them, as
//! the command is a face of three API calls.

use clap::Subcommand;
use rein_api::{ConversationQuery, Rein, v1};

use crate::commands::serve::now_ms;
use crate::out::{self, outln};

#[derive(Debug, Subcommand)]
pub(crate) enum ConversationsCommand {
    /// List conversations, most recently changed first, with the labels each has seen and the
    /// runs held for it.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this gateway's.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Forget one conversation's labels: its later requests are judged only on what their own
    /// history carries (for example once a person has checked what an `untrusted` tool result
    /// brought in). Calls held for it stay held: once approved, its next request receives them.
    Forget {
        /// The conversation's name, as `rein conversations list` shows it.
        conversation: String,
        /// The gateway it belongs to.
        #[arg(long)]
        agent: String,
        /// The user it belongs to.
        #[arg(long)]
        user: String,
        /// Their tenant.
        #[arg(long, default_value = "default")]
        tenant: String,
    },
    /// Forget the conversations no request has used for this many days that hold no run for a person.
    /// A request of one forgotten is judged only on what its own history carries.
    Prune {
        /// Days no request has used or changed them.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        unused_for_days: u32,
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this gateway's.
        #[arg(long)]
        agent: Option<String>,
    },
}

pub(crate) fn run(rein: &Rein, command: ConversationsCommand) -> anyhow::Result<u8> {
    match command {
        ConversationsCommand::List {
            tenant,
            agent,
            limit,
            json,
        } => {
            let query = ConversationQuery {
                tenant: tenant.as_deref(),
                agent: agent.as_deref(),
            };
            let listed = rein.list_conversations(query, limit)?;
            if json {
                out::json(&listed)?;
            } else {
                print(&listed);
            }
            Ok(0)
        }
        ConversationsCommand::Forget {
            conversation,
            agent,
            user,
            tenant,
        } => {
            let key = v1::ConversationKey {
                tenant,
                user,
                agent,
                conversation: conversation.clone(),
            };
            rein.forget_conversation(key, None)?;
            outln!("conversation {conversation} forgotten");
            Ok(0)
        }
        ConversationsCommand::Prune {
            unused_for_days,
            tenant,
            agent,
        } => {
            let query = ConversationQuery {
                tenant: tenant.as_deref(),
                agent: agent.as_deref(),
            };
            let pruned = rein.prune_conversations(query, unused_for_days, now_ms(), None)?;
            outln!("{pruned} conversations unused for {unused_for_days} days forgotten");
            Ok(0)
        }
    }
}

fn print(listed: &[v1::Conversation]) {
    outln!(
        "{:<16}  {:<16}  {:<16}  {:<34}  {:<24}  held",
        "tenant",
        "user",
        "gateway",
        "conversation",
        "labels"
    );
    for c in listed {
        let labels = if c.labels.is_empty() {
            "-".to_owned()
        } else {
            c.labels.join(",")
        };
        outln!(
            "{:<16}  {:<16}  {:<16}  {:<34}  {:<24}  {}",
            c.key.tenant,
            c.key.user,
            c.key.agent,
            c.key.conversation,
            labels,
            c.held.len()
        );
    }
}
