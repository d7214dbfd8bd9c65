//! The gateway: requests from agents built elsewhere, each recorded as one run of a gateway agent
//! (an agent folder whose tools its clients run). The HTTP faces (OpenAI Chat Completions and
//! Responses, Anthropic Messages) translate their wire formats to a [`GatewayRequest`] and the
//! [`GatewayAnswer`] back; what is judged, reserved, recorded and withheld is decided here and in
//! the engine, once for every face.
//!
//! A conversation is named by the client (a header) or derived from its token and its first
//! messages. A request whose reply held calls for approval leaves its run suspended; the next
//! request of that conversation is answered from that run once the approvals are decided (the
//! approved calls, judged again, are handed over), and told to wait until then.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use rein_core::{EndState, Message};
use rein_engine::{GATEWAY_REQUEST, GatewayReply, GatewayTurn, NoObserver, Observer};
use rein_store::{HoldAt, Store};
use sha2::{Digest, Sha256};

pub use rein_core::{
    Message as ChatMessage, ModelSettings, OutputFormat, ToolCall, ToolChoice, ToolSpec,
};

use crate::runs::{LoadedAgent, Watch, Watching};
use crate::{Caller, Error, Rein, v1};

mod held;
mod kept;

use held::{Again, request_digest};

/// A model request to a gateway, in rein's terms.
#[derive(Debug, Clone, Default)]
pub struct GatewayRequest {
    /// The conversation the client names (`x-rein-conversation`), if it names one.
    pub conversation: Option<String>,
    /// The system prompt.
    pub system: String,
    /// The conversation so far. Tool results must name their tool (the faces take it from the
    /// assistant message that made the call).
    pub messages: Vec<ChatMessage>,
    /// The tools the client declares.
    pub tools: Vec<ToolSpec>,
    /// The client's own settings for the model call.
    pub settings: ModelSettings,
}

/// Why a call did not reach the client.
#[derive(Debug, Clone, PartialEq)]
pub struct WithheldCall {
    /// The call's id.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// `denied`, `rejected` or `awaiting_approval`.
    pub by: &'static str,
    /// Why, in words.
    pub reason: String,
    /// The approval it waits for.
    pub approval_id: Option<String>,
}

/// What a gateway request answers.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayAnswer {
    /// The run that recorded the request.
    pub run_id: String,
    /// The conversation it belongs to.
    pub conversation: String,
    /// How the request ended: `completed` (served), `awaiting_approval` (calls held),
    /// `denied`, `budget_exhausted`, `failed`, `cancelled`.
    pub status: v1::EndState,
    /// The model's text, as released.
    pub text: Option<String>,
    /// The calls handed over, with ids unique within the conversation.
    pub calls: Vec<ToolCall>,
    /// The calls withheld, and why.
    pub withheld: Vec<WithheldCall>,
    /// The calls run by rein (the gateway's own MCP tools): (call id, tool, output, failed).
    pub results: Vec<(String, String, String, bool)>,
    /// Tokens used.
    pub usage: v1::Usage,
    /// What the request cost, in US dollars.
    pub cost_usd: f64,
    /// Why the request did not complete.
    pub reason: Option<String>,
    /// It failed because every model refused it as malformed: the client's request is at fault.
    pub malformed: bool,
    /// It failed because every model's provider refused the operator's account (out of credit
    /// or quota): sending it again changes nothing until someone pays.
    pub out_of_credit: bool,
    /// The model's answer stopped at its cap on the answer: its text is cut short.
    pub cut: bool,
    /// The stop text (one the client gave) the model's answer stopped at, where its provider
    /// said which.
    pub stop_sequence: Option<String>,
}

impl GatewayAnswer {
    /// A note for the agent about what was withheld, to append to the reply's text: which calls
    /// were refused and why, and which wait for a person.
    pub fn notice(&self) -> Option<String> {
        if self.withheld.is_empty() {
            return None;
        }
        let mut lines = Vec::new();
        for w in &self.withheld {
            // The answer itself (its id is not a call's).
            if w.tool == "answer" && !w.call_id.starts_with("call_") {
                lines.push(match w.approval_id.as_deref() {
                    Some(id) => format!(
                        "rein held the model's answer for a person's approval (approval {id}). Wait for it to be decided, then send the conversation again to receive it if it is approved."
                    ),
                    None => format!("rein withheld the model's answer: {}", w.reason),
                });
                continue;
            }
            lines.push(match w.approval_id.as_deref() {
                Some(id) if w.by == "awaiting_approval" => format!(
                    "rein held the call to `{}` ({}) for a person's approval (approval {id}). Wait for it to be decided, then send the conversation again to receive the call if it is approved.",
                    w.tool, w.call_id
                ),
                _ => format!(
                    "rein withheld the call to `{}` ({}): {}",
                    w.tool, w.call_id, w.reason
                ),
            });
        }
        Some(lines.join("\n"))
    }
}

/// A conversation, as held runs and carried labels are kept by: whose it is (tenant and user),
/// at which gateway, and its name. Another user, tenant or gateway naming the same conversation
/// never reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ConversationKey {
    tenant: String,
    user: String,
    agent: String,
    conversation: String,
}

impl ConversationKey {
    fn as_ref(&self) -> rein_store::ConversationRef<'_> {
        rein_store::ConversationRef {
            tenant: &self.tenant,
            user: &self.user,
            agent: &self.agent,
            conversation: &self.conversation,
        }
    }

    fn of(caller: &Caller, loaded: &LoadedAgent, conversation: &str) -> ConversationKey {
        ConversationKey {
            tenant: caller.tenant.clone(),
            user: caller.user.clone(),
            agent: loaded.name().to_owned(),
            conversation: conversation.to_owned(),
        }
    }
}

/// What this process remembers of the gateway's conversations. The runs held for approval by
/// conversation (its next request is answered from them) and the labels each conversation has
/// seen are not kept here but in the state directory (`conversations.sqlite`), so a restart or
/// another process serving it forgets none.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// The agents whose held runs were read from the store since this process started.
    scanned: Mutex<Vec<String>>,
    /// Calls handed over, by the id the client saw: ((tenant, user, gateway), tool).
    issued: Mutex<HashMap<String, (Owner, String)>>,
    /// When this process last noted a use of each conversation in the store.
    used: Mutex<HashMap<ConversationKey, u64>>,
}

/// Whose a run is: tenant, user and gateway.
type Owner = (String, String, String);

/// The most hand-offs remembered; past it, they are read from the log again.
const ISSUED_KEPT: usize = 100_000;

/// The most runs one request's tool results make rein read to find what it handed over.
pub(crate) const RUNS_READ_PER_REQUEST: usize = 256;

/// Whose a run is, and the calls it handed over (rein's call id to the tool).
type HandedOff = (Owner, HashMap<String, String>);

/// What one request has read of earlier runs: each run's hand-offs (`None`: no such run), and
/// how many runs were read.
#[derive(Default)]
pub(crate) struct Lookups {
    runs: HashMap<String, Option<HandedOff>>,
    reads: usize,
}

impl Rein {
    /// Answers one request to the gateway agent `loaded` for `caller`.
    pub async fn gateway(
        &self,
        loaded: &LoadedAgent,
        caller: &Caller,
        request: GatewayRequest,
        watch: Option<&dyn Watch>,
    ) -> Result<GatewayAnswer, Error> {
        let observer: &dyn Observer = match watch {
            Some(w) => &Watching(w),
            None => &NoObserver,
        };
        let agent = loaded.agent();
        if !agent.gateway {
            return Err(Error::Invalid(format!(
                "agent `{}` is not a gateway: add a `[gateway]` section (and the tools its clients run, with `client = true`) to {}",
                loaded.name(),
                loaded.dir().join(rein_config::AGENT_FILE).display()
            )));
        }
        let conversation = match request.conversation.as_deref() {
            Some(c) => {
                check_conversation(c)?;
                c.to_owned()
            }
            None => derive_conversation(caller, loaded.name(), &request),
        };
        let key = ConversationKey::of(caller, loaded, &conversation);
        let kept = self.kept(loaded, &key)?;
        self.note_use(&key, &kept);
        // What identifies the request, for a conversation that holds runs or resumed one.
        let digest =
            (!kept.held.is_empty() || kept.resumed.is_some()).then(|| request_digest(&request));
        let mut held = Cow::Borrowed(&kept.held);
        if let (Some(resumed), Some(digest)) = (&kept.resumed, &digest) {
            if resumed.request == *digest {
                let held_again = kept.held.contains(&resumed.run);
                match self.answered_again(&key, resumed, held_again)? {
                    Again::Answer(reply) => return Ok(self.answer(&key, *reply)),
                    // Put back by a resume that failed, or here: resumed first.
                    Again::Held if !held_again => held.to_mut().insert(0, resumed.run.clone()),
                    Again::Held | Again::MovedOn => {}
                }
            } else {
                self.moved_on(&key, &resumed.run);
            }
        }
        if let Some(reply) = self
            .held_answer(loaded, &key, &held, digest.as_deref(), observer)
            .await?
        {
            // Only what the held run gained itself: what it brought in was the conversation's
            // when it began, and may have been forgotten by an operator since.
            self.keep_labels(&key, &reply.gained, &kept.labels);
            return Ok(self.answer(&key, reply));
        }
        let task = request
            .messages
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::User { text } => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let mut lookups = Lookups::default();
        let results: Vec<_> = request
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::Tool {
                    call_id,
                    name,
                    content,
                    ..
                } => Some((call_id, name, content)),
                _ => None,
            })
            .map(|(call_id, name, content)| {
                let tool = self
                    .issued_tool(&key, call_id, &mut lookups)?
                    .unwrap_or_else(|| name.clone());
                Ok((
                    call_id.clone(),
                    tool,
                    serde_json::Value::String(content.clone()),
                ))
            })
            .collect::<Result<_, Error>>()?;
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        let (carried_labels, known) = self.carried(&key, agent, kept.labels, &results)?;
        let turn = GatewayTurn {
            conversation: conversation.clone(),
            user: caller.user.clone(),
            tenant: caller.tenant.clone(),
            token: Some(caller.token_id.clone()),
            task,
            system: request.system,
            messages: request.messages,
            tools: request.tools,
            settings: request.settings,
            carried_labels,
            results,
            proposed: None,
        };
        let reply = self
            .engine()?
            .gateway_turn(agent, &run_id, turn, observer)
            .await?;
        if reply.status == EndState::AwaitingApproval {
            self.hold(&key, &reply.run_id, HoldAt::Last);
        }
        self.keep_labels(&key, &reply.labels, &known);
        Ok(self.answer(&key, reply))
    }

    /// Judges and runs a call an agent proposes itself through the MCP gateway (`tools/call` of
    /// one of the gateway's MCP tools), recorded as a run like a model request. A call held for
    /// approval is answered, once decided, to the same caller's next identical call.
    pub async fn gateway_tool_call(
        &self,
        loaded: &LoadedAgent,
        caller: &Caller,
        tool: &str,
        arguments: serde_json::Value,
        watch: Option<&dyn Watch>,
    ) -> Result<GatewayAnswer, Error> {
        let observer: &dyn Observer = match watch {
            Some(w) => &Watching(w),
            None => &NoObserver,
        };
        if !loaded.agent().gateway {
            return Err(Error::Invalid(format!(
                "agent `{}` is not a gateway",
                loaded.name()
            )));
        }
        let conversation = {
            let mut h = Sha256::new();
            for part in [caller.token_id.as_str(), tool, &arguments.to_string()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            format!("mcp-{}", hex::encode(&h.finalize()[..12]))
        };
        let key = ConversationKey::of(caller, loaded, &conversation);
        let kept = self.kept(loaded, &key)?;
        // (Not answered again from a resumed run: the same call made again is a new call.)
        if let Some(reply) = self
            .held_answer(loaded, &key, &kept.held, None, observer)
            .await?
        {
            return Ok(self.answer(&key, reply));
        }
        let run_id = uuid::Uuid::now_v7().simple().to_string();
        let turn = GatewayTurn {
            conversation: conversation.clone(),
            user: caller.user.clone(),
            tenant: caller.tenant.clone(),
            token: Some(caller.token_id.clone()),
            task: format!("MCP call of {tool}"),
            proposed: Some(ToolCall {
                id: String::new(),
                name: tool.to_owned(),
                arguments,
                invalid_arguments: None,
            }),
            ..Default::default()
        };
        let reply = self
            .engine()?
            .gateway_turn(loaded.agent(), &run_id, turn, observer)
            .await?;
        if reply.status == EndState::AwaitingApproval {
            self.hold(&key, &reply.run_id, HoldAt::Last);
        }
        // An MCP call has no conversation to carry labels into: each is its own.
        Ok(self.answer(&key, reply))
    }

    /// Whether run `run_id` recorded a request to a gateway: what is decided for it goes to its
    /// conversation's next request, not to `rein runs resume`.
    pub fn is_gateway_run(&self, run_id: &str) -> Result<bool, Error> {
        Ok(conversation_of(&self.store()?.events(run_id)?).is_some())
    }

    /// The tool a result is for, as rein's own log has it, when its call id is one rein handed
    /// to this caller (`call_<step>_<n>_<run>`): a client cannot relabel a page it fetched by
    /// renaming the call in its history. An id of rein's form that rein did not hand to this
    /// caller names no tool (its result counts as `untrusted`); any other id is the client's, and
    /// so is its name.
    ///
    /// A hand-off never changes once recorded: each run's are read from its log once, then kept
    /// (with their owner), so a long history does not read every earlier run each request. Within
    /// a request, a run is read at most once whatever its ids, and at most
    /// [`RUNS_READ_PER_REQUEST`] runs are read: a history made up to name many runs costs that
    /// many reads, and its other ids count as rein's and not this caller's (`untrusted`).
    fn issued_tool(
        &self,
        key: &ConversationKey,
        call_id: &str,
        lookups: &mut Lookups,
    ) -> Result<Option<String>, Error> {
        let Some((inner, run_id)) = call_id.rsplit_once('_').filter(|(inner, run)| {
            inner.starts_with("call_")
                && run.len() == 32
                && run
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }) else {
            return Ok(None);
        };
        let owner = (key.tenant.clone(), key.user.clone(), key.agent.clone());
        let mine = |(who, tool): &(Owner, String)| {
            if *who == owner {
                tool.clone()
            } else {
                String::new()
            }
        };
        if let Some(known) = self
            .held
            .issued
            .lock()
            .ok()
            .and_then(|m| m.get(call_id).cloned())
        {
            return Ok(Some(mine(&known)));
        }
        if !lookups.runs.contains_key(run_id) {
            if lookups.reads >= RUNS_READ_PER_REQUEST {
                return Ok(Some(String::new()));
            }
            lookups.reads += 1;
            let handed = self.handed_off(run_id)?;
            lookups.runs.insert(run_id.to_owned(), handed);
        }
        let found = lookups.runs.get(run_id).and_then(|handed| {
            let (who, calls) = handed.as_ref()?;
            Some((who.clone(), calls.get(inner)?.clone()))
        });
        let Some(found) = found else {
            return Ok(Some(String::new()));
        };
        if let Ok(mut issued) = self.held.issued.lock() {
            if issued.len() >= ISSUED_KEPT {
                issued.clear();
            }
            issued.insert(call_id.to_owned(), found.clone());
        }
        Ok(Some(mine(&found)))
    }

    /// Whose run `run_id` is and the calls it handed over (rein's call id to the tool), or
    /// `None` for a run that is not there, never started, or cannot be read.
    fn handed_off(&self, run_id: &str) -> Result<Option<HandedOff>, Error> {
        use rein_store::StoreError as S;
        let state = match self.engine()?.load(run_id) {
            Ok(state) => state,
            Err(rein_engine::EngineError::Store(S::NotFound(_))) => return Ok(None),
            // A log that cannot be read tells nothing of what was handed over: its ids count as
            // no hand-off to this caller (`untrusted`), rather than failing every request whose
            // history names one.
            Err(rein_engine::EngineError::Store(
                e @ (S::Corrupt { .. } | S::NewerEvent { .. }),
            )) => {
                tracing::error!(run = %run_id, error = %e, "a gateway run named in a client's history cannot be read; its results count as untrusted");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(started) = state.started() else {
            return Ok(None);
        };
        let who = (
            started.tenant.clone(),
            started.user.clone(),
            started.agent.clone(),
        );
        let calls = state
            .calls()
            .iter()
            .filter(|c| c.handed_off)
            .map(|c| (c.call.id.clone(), c.call.name.clone()))
            .collect();
        Ok(Some((who, calls)))
    }

    /// What is kept of the gateway's conversations (labels, held runs), opened once.
    pub(crate) fn conversations(&self) -> Result<&rein_store::ConversationStore, Error> {
        if let Some(c) = self.conversations.get() {
            return Ok(c);
        }
        let opened = rein_store::ConversationStore::open(&self.dir.root)?;
        Ok(self.conversations.get_or_init(|| opened))
    }

    fn answer(&self, key: &ConversationKey, reply: GatewayReply) -> GatewayAnswer {
        let run = &reply.run_id;
        GatewayAnswer {
            malformed: reply.refused_as_malformed(),
            out_of_credit: reply.refused_the_account(),
            cut: reply.cut,
            stop_sequence: reply.stop_sequence,
            // Ids rein assigns (`call_<step>_<n>`) repeat from run to run: the conversation sees
            // them with the run's id, so each is unique in it.
            calls: reply
                .calls
                .into_iter()
                .map(|mut c| {
                    c.id = wire_call_id(run, &c.id);
                    c
                })
                .collect(),
            withheld: reply
                .withheld
                .into_iter()
                .map(|w| WithheldCall {
                    call_id: wire_call_id(run, &w.call_id),
                    tool: w.tool,
                    by: w.by.as_str(),
                    reason: w.reason,
                    approval_id: w.approval_id,
                })
                .collect(),
            results: reply
                .results
                .into_iter()
                .map(|(id, tool, output, failed)| (wire_call_id(run, &id), tool, output, failed))
                .collect(),
            run_id: reply.run_id,
            conversation: key.conversation.clone(),
            status: reply.status.into(),
            text: reply.text,
            usage: reply.usage.into(),
            cost_usd: reply.cost_micros as f64 / 1e6,
            reason: reply.reason,
        }
    }
}

/// A call id as the conversation sees it: rein's id in the run, with the run's id.
fn wire_call_id(run_id: &str, call_id: &str) -> String {
    format!("{call_id}_{run_id}")
}

/// A conversation named by the client: 1 to 128 letters, digits, `-`, `_`, `.` or `:`.
fn check_conversation(c: &str) -> Result<(), Error> {
    if c.is_empty()
        || c.len() > 128
        || !c
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(Error::Invalid(
            "x-rein-conversation: 1 to 128 letters, digits, `-`, `_`, `.` or `:`".into(),
        ));
    }
    Ok(())
}

/// A conversation the client did not name: its token, the gateway, its system prompt and its
/// first message from the user identify it.
fn derive_conversation(caller: &Caller, agent: &str, request: &GatewayRequest) -> String {
    let first = request.messages.iter().find_map(|m| match m {
        Message::User { text } => Some(text.as_str()),
        _ => None,
    });
    let mut h = Sha256::new();
    for part in [
        caller.token_id.as_str(),
        agent,
        request.system.as_str(),
        first.unwrap_or_default(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("c-{}", hex::encode(&h.finalize()[..12]))
}

/// The conversation a gateway run's log names (the subject of its request notice).
fn conversation_of(events: &[rein_core::StoredEvent]) -> Option<String> {
    events.iter().find_map(|e| match &e.event {
        rein_core::Event::Notice { kind, subject, .. } if kind == GATEWAY_REQUEST => {
            Some(subject.clone())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests;
