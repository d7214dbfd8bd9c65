//! The gateway's side of the engine: a request from an agent built elsewhere (with the OpenAI or
//! Anthropic SDK, LangGraph, Claude Code) is one run of the gateway's agent, whose tools the
//! client runs. [`Engine::gateway_turn`] records what the client sent back, makes one judged,
//! budgeted, audited model call with the client's conversation, and answers with the calls the
//! policies let through and those they withheld, and why. [`Engine::gateway_resume`] continues a
//! turn held for approval once it is decided, handing over the approved calls.

use rein_core::labels::UNTRUSTED;
use rein_core::state::{AnswerStatus, CallStatus};
use rein_core::{
    ClientResult, EndState, Message, ModelSettings, RunState, ToolCall, ToolSpec, Usage,
};
use rein_store::Lease;
use serde_json::Value;

use crate::driver::{Driver, GatewayInput};
use crate::lease::{LEASE_TTL_MS, new_owner};
use crate::{Agent, Engine, EngineError, Observer, RunRequest};

/// The kind of the notice that opens a gateway run; its subject is the conversation.
pub const GATEWAY_REQUEST: &str = "gateway_request";

/// How the reason of a run whose every model refused its request as malformed begins (HTTP 400,
/// 413 or 422 from each provider tried): the request's fault, not the model's.
pub(crate) const REFUSED_AS_MALFORMED: &str = "every model refused the request as malformed";
/// How the reason of a run begins when every model's provider refused the operator's account
/// (out of credit or quota).
pub(crate) const OUT_OF_CREDIT: &str = "every model's provider account is out of credit or quota";

/// One request to a gateway, in rein's terms.
#[derive(Debug, Clone, Default)]
pub struct GatewayTurn {
    /// The conversation it belongs to (recorded as the subject of the run's first notice).
    pub conversation: String,
    /// Who it acts for.
    pub user: String,
    /// Their tenant.
    pub tenant: String,
    /// The id of the API token the request came with, for `token` budgets.
    pub token: Option<String>,
    /// What the run is about, for people and policies (`context.task`): the client's last
    /// message from its user.
    pub task: String,
    /// The client's system prompt.
    pub system: String,
    /// The client's conversation, as the model is sent it.
    pub messages: Vec<Message>,
    /// The tools the client declares.
    pub tools: Vec<ToolSpec>,
    /// The tool results in the conversation: (call id, tool, output).
    pub results: Vec<(String, String, Value)>,
    /// Labels the conversation's earlier requests saw, carried into this one.
    pub carried_labels: Vec<String>,
    /// A call the client proposes itself, to be judged and run here (an MCP `tools/call`), in
    /// place of a model call.
    pub proposed: Option<ToolCall>,
    /// The client's own settings for the model call (sampling, its cap on the answer, stop
    /// texts, tool choice).
    pub settings: ModelSettings,
}

/// Why a call in the model's reply did not reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithheldBy {
    /// The policies denied it (or the person asked denied it).
    Denied,
    /// It was refused before judging: a tool the operator does not know, arguments that do not
    /// match its schema.
    Rejected,
    /// It waits for a person's approval.
    AwaitingApproval,
}

impl WithheldBy {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            WithheldBy::Denied => "denied",
            WithheldBy::Rejected => "rejected",
            WithheldBy::AwaitingApproval => "awaiting_approval",
        }
    }
}

/// A call the client did not get.
#[derive(Debug, Clone, PartialEq)]
pub struct Withheld {
    /// The call's id, as rein assigned it.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// Why.
    pub by: WithheldBy,
    /// In words, as the policies and checks gave it.
    pub reason: String,
    /// The approval it waits for.
    pub approval_id: Option<String>,
}

/// What a gateway request answers.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayReply {
    /// The run that recorded the request.
    pub run_id: String,
    /// How it ended (`completed`, or `awaiting_approval`, `denied`, `budget_exhausted`,
    /// `failed`, `cancelled`).
    pub status: EndState,
    /// The model's text, as released to the client.
    pub text: Option<String>,
    /// The calls handed to the client, with rein's ids and the model's arguments.
    pub calls: Vec<ToolCall>,
    /// The calls the client does not get, and why.
    pub withheld: Vec<Withheld>,
    /// The calls run here (tools the gateway runs itself, such as its MCP servers'), with what
    /// the model would read of them: (call id, tool, output, whether it failed).
    pub results: Vec<(String, String, String, bool)>,
    /// Tokens the model call used.
    pub usage: Usage,
    /// What it cost, in millionths of a US dollar.
    pub cost_micros: u64,
    /// Why the run did not complete.
    pub reason: Option<String>,
    /// The model's answer stopped at its cap, and its text, cut short, is in this reply.
    pub cut: bool,
    /// The stop text (one the client gave) the model's answer stopped at, where its provider
    /// said which; only with the model's text in this reply.
    pub stop_sequence: Option<String>,
    /// The labels in play at the end of the run: what the conversation's next request carries.
    pub labels: Vec<String>,
    /// Of those, the ones the run gained itself (not brought in by its request): what a reply
    /// from a held run adds to its conversation, whose labels an operator may have forgotten
    /// since the run began.
    pub gained: Vec<String>,
}

impl Engine {
    /// The labels a result of `tool` carries, as the client sends it back: a client tool's
    /// manifest's. For any other tool (one the operator does not know, or one of the gateway's
    /// own, which its clients do not run, so the result is the client's word) `untrusted`, with
    /// whatever labels the operator's manifest gives the tool: a result claimed for a tool
    /// labelled `pii` keeps `pii`.
    pub fn gateway_labels(agent: &Agent, tool: &str) -> Vec<String> {
        let mut labels = agent.output_labels.get(tool).cloned().unwrap_or_default();
        if !agent.client_tools.contains(tool) && !labels.iter().any(|l| l == UNTRUSTED) {
            labels.push(UNTRUSTED.to_owned());
        }
        labels
    }

    /// Records one gateway request as run `run_id` (new: 32 lower-case hex digits) of `agent`
    /// and answers it.
    pub async fn gateway_turn(
        &self,
        agent: &Agent,
        run_id: &str,
        turn: GatewayTurn,
        observer: &dyn Observer,
    ) -> Result<GatewayReply, EngineError> {
        if !agent.gateway {
            return Err(EngineError::Agent(format!(
                "agent `{}` is not a gateway: it has no `[gateway]` section",
                agent.name
            )));
        }
        if self.is_stopping() {
            return Err(EngineError::Stopped {
                run_id: run_id.to_owned(),
            });
        }
        let results = turn
            .results
            .into_iter()
            .map(|(call_id, tool, output)| ClientResult {
                labels: Engine::gateway_labels(agent, &tool),
                call_id,
                tool,
                output,
            })
            .collect();
        let input = GatewayInput {
            conversation: turn.conversation,
            system: turn.system,
            messages: turn.messages,
            tools: turn.tools,
            results,
            carried: turn.carried_labels,
            proposed: turn.proposed,
            settings: turn.settings,
        };
        let request = RunRequest {
            token: turn.token,
            task: turn.task,
            user: turn.user,
            tenant: turn.tenant,
            parent: None,
            grants: None,
        };
        let workspace = self.prepare_workspace(agent, run_id)?;
        let lease = Lease::new_run(run_id, &new_owner(), self.clock.now_ms() + LEASE_TTL_MS);
        let driven = Driver::new(self, agent, lease, RunState::default(), workspace, observer)
            .for_gateway(input)
            .start_through(&request)
            .await?;
        Ok(reply(driven))
    }

    /// Continues a gateway run held for approval, now that its approvals are decided: approved
    /// calls are judged again and handed over, denied ones withheld.
    pub async fn gateway_resume(
        &self,
        run_id: &str,
        agent: &Agent,
        observer: &dyn Observer,
    ) -> Result<GatewayReply, EngineError> {
        let (run_id, state, _) = self
            .resume_driver(run_id, agent, observer)?
            .taking_turn()
            .resume_through()
            .await?;
        // What this turn handed over, including what a resume a crash stopped handed before
        // it: no client received those (it gets calls once the run ended or was held again).
        Ok(GatewayReply::again(&run_id, &state))
    }
}

impl GatewayReply {
    /// Whether the run failed because every model refused its request as malformed (a value
    /// the client sent that the provider does not take): the client's to fix.
    pub fn refused_as_malformed(&self) -> bool {
        self.failed_because(REFUSED_AS_MALFORMED)
    }

    /// Whether the run failed because every model's provider refused the operator's account:
    /// no request gets through until someone pays, so a client should not send it again.
    pub fn refused_the_account(&self) -> bool {
        self.failed_because(OUT_OF_CREDIT)
    }

    /// Whether the run failed with a reason that begins with `cause`.
    fn failed_because(&self, cause: &str) -> bool {
        self.status == EndState::Failed
            && self.reason.as_deref().is_some_and(|r| r.starts_with(cause))
    }

    /// What a request is told while its conversation's held run still waits for a person:
    /// what is held and why, nothing new spent, no text.
    pub fn waiting(run_id: &str, state: &RunState) -> GatewayReply {
        let mut reply = reply((run_id.to_owned(), state.clone(), Vec::new()));
        reply.status = EndState::AwaitingApproval;
        reply.text = None;
        reply.results.clear();
        reply.usage = Usage::default();
        reply.cost_micros = 0;
        reply.reason =
            Some("what this conversation's earlier request held still waits for a person".into());
        reply
    }

    /// The answer a held run gives the request that resumed it, and gives again to the same
    /// request sent again (its client lost the answer): the calls this turn of the run handed
    /// over (not those an earlier turn handed to the request it answered then), with the same
    /// ids, what it withheld and why, its text. Nothing is judged, spent or recorded.
    pub fn again(run_id: &str, state: &RunState) -> GatewayReply {
        let handed = state
            .handed_this_turn()
            .map(|s| s.call.id.clone())
            .collect();
        reply((run_id.to_owned(), state.clone(), handed))
    }
}

/// The answer to a request, from the run's state once the driver stopped.
fn reply((run_id, state, handed): (String, RunState, Vec<String>)) -> GatewayReply {
    let ended = state.ended();
    let status = ended
        .map(|e| e.status)
        .unwrap_or(EndState::AwaitingApproval);
    let calls = state
        .calls()
        .iter()
        .filter(|s| handed.contains(&s.call.id))
        .map(|s| s.call.clone())
        .collect();
    let withheld: Vec<Withheld> = state
        .calls()
        .iter()
        .filter_map(|slot| {
            let (by, approval_id) = match slot.status {
                CallStatus::Rejected => {
                    let said = refusal(&state, &slot.call.id);
                    let denied = said.starts_with("error: denied by")
                        || said.contains("did not approve")
                        || said.contains("nobody approved");
                    (
                        if denied {
                            WithheldBy::Denied
                        } else {
                            WithheldBy::Rejected
                        },
                        slot.approval.as_ref().map(|a| a.id.clone()),
                    )
                }
                CallStatus::AwaitingApproval => (
                    WithheldBy::AwaitingApproval,
                    slot.approval.as_ref().map(|a| a.id.clone()),
                ),
                _ => return None,
            };
            let reason = match by {
                WithheldBy::AwaitingApproval => format!(
                    "held for a person's approval ({})",
                    approval_id.as_deref().unwrap_or_default()
                ),
                _ => refusal(&state, &slot.call.id)
                    .trim_start_matches("error: ")
                    .to_owned(),
            };
            Some(Withheld {
                call_id: slot.call.id.clone(),
                tool: slot.call.name.clone(),
                by,
                reason,
                approval_id,
            })
        })
        .collect();
    let results = state
        .calls()
        .iter()
        .filter(|s| s.status == CallStatus::Done && !s.handed_off)
        .filter_map(|slot| {
            state.messages().iter().rev().find_map(|m| match m {
                Message::Tool {
                    call_id,
                    content,
                    is_error,
                    ..
                } if *call_id == slot.call.id => Some((
                    call_id.clone(),
                    slot.call.name.clone(),
                    content.clone(),
                    *is_error,
                )),
                _ => None,
            })
        })
        .collect();
    let mut withheld: Vec<Withheld> = withheld;
    // A final answer the policies hold or withhold is not the client's to read.
    let text = match state.answer().map(|a| (a, &a.status)) {
        Some((a, AnswerStatus::Held | AnswerStatus::AwaitingApproval)) => {
            let approval_id = a.approval.as_ref().map(|x| x.id.clone());
            withheld.push(Withheld {
                call_id: a.call_id(),
                tool: "answer".into(),
                by: WithheldBy::AwaitingApproval,
                reason: format!(
                    "the answer is held for a person's approval ({})",
                    approval_id.as_deref().unwrap_or_default()
                ),
                approval_id,
            });
            None
        }
        Some((_, AnswerStatus::Withheld(reason))) => {
            withheld.push(Withheld {
                call_id: String::new(),
                tool: "answer".into(),
                by: WithheldBy::Denied,
                reason: reason.clone(),
                approval_id: None,
            });
            None
        }
        // While the run waits for a person, the text that came with the held calls waits too.
        _ => ended.and_then(|e| e.output.clone()),
    };
    // Cut only where the client reads the model's text (not while it waits with held calls).
    let cut = state.last_reply_cut() && text.is_some();
    let stop_sequence = state
        .last_stop_sequence()
        .filter(|_| text.is_some())
        .map(str::to_owned);
    GatewayReply {
        run_id,
        status,
        text,
        calls,
        withheld,
        results,
        usage: state.usage(),
        cost_micros: state.cost_micros(),
        reason: ended.and_then(|e| e.reason.clone()),
        cut,
        stop_sequence,
        labels: state.labels().to_vec(),
        gained: state
            .labels()
            .to_vec()
            .into_iter()
            .filter(|l| !state.brought_labels().contains(l))
            .collect(),
    }
}

/// What the run's conversation says about a call that did not run.
fn refusal(state: &RunState, call_id: &str) -> String {
    state
        .messages()
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::Tool {
                call_id: id,
                content,
                ..
            } if id == call_id => Some(content.clone()),
            _ => None,
        })
        .unwrap_or_default()
}
