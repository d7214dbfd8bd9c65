//! A gateway turn: one request of a client's conversation, driven as a run of the gateway's agent
//! whose tools the client runs. The run records the tool results the client sent back (with their
//! manifests' labels), makes one model call through the same step as a hosted agent (judged,
//! reserved on the budgets, retried, audited) with the client's own conversation, and judges each
//! call in the reply as a dispatch: an allowed call has its intent recorded and is handed to the
//! client, a denied one is left out with its reason, an asked one waits for a person. Then the
//! run ends: the turn is over.

use rein_core::state::{CallStatus, Ended};
use rein_core::{
    ClientResult, EndState, Event, Message, ModelSettings, ToolCall, ToolSpec, Usage, Verdict,
};

use crate::EngineError;
use crate::context::TokenCounter;
use crate::driver::Driver;
use crate::gateway::GATEWAY_REQUEST;

/// The "model" a call the client proposed itself is recorded as coming from.
const CLIENT_MODEL: &str = "client";

/// What the client sent: its system prompt, its conversation, its tools, and the tool results in
/// it, already labelled.
pub(crate) struct GatewayInput {
    pub(crate) conversation: String,
    pub(crate) system: String,
    pub(crate) messages: Vec<Message>,
    pub(crate) tools: Vec<ToolSpec>,
    pub(crate) results: Vec<ClientResult>,
    /// Labels the conversation's earlier requests saw.
    pub(crate) carried: Vec<String>,
    /// A call the client's agent proposes itself (an MCP `tools/call`): recorded as the step's
    /// reply in place of a model call, then judged and run here like any call.
    pub(crate) proposed: Option<ToolCall>,
    /// The client's own settings for the model call.
    pub(crate) settings: ModelSettings,
}

impl Driver<'_> {
    /// Records which conversation the request belongs to and the results the client sent back,
    /// before anything is judged.
    pub(super) async fn record_gateway_request(&mut self) -> Result<(), EngineError> {
        let Some(input) = self.gateway.as_mut() else {
            return Ok(());
        };
        let results = std::mem::take(&mut input.results);
        let carried = std::mem::take(&mut input.carried);
        let detail = format!(
            "a request of {} messages, {} tools and {} tool results",
            input.messages.len(),
            input.tools.len(),
            results.len()
        );
        let conversation = input.conversation.clone();
        self.notice(GATEWAY_REQUEST, &conversation, detail, None)
            .await?;
        if results.is_empty() && carried.is_empty() {
            return Ok(());
        }
        self.record(Event::ClientResults { results, carried }).await
    }

    /// The model step of a gateway run: the first step calls the model with the client's
    /// conversation; any later step means this turn's calls are settled, so the run ends with
    /// the reply's text (a resumed run's approved calls were handed over on the way here).
    pub(super) async fn gateway_step(&mut self, step: u32) -> Result<(), EngineError> {
        let input = match self.gateway.take() {
            Some(input) if step == 1 => input,
            // Resumed after a crash before the model answered: the client got no answer and
            // sends its request again, as a new run.
            None if step == 1 => {
                return self
                    .record(Event::RunEnded {
                        status: EndState::Failed,
                        output: None,
                        reason: Some(
                            "the gateway request was interrupted before the model answered; its client was not answered"
                                .into(),
                        ),
                        call_id: None,
                    })
                    .await;
            }
            _ => {
                return self
                    .record(Event::RunEnded {
                        status: EndState::Completed,
                        output: self.state.last_text().map(str::to_owned),
                        reason: None,
                        call_id: None,
                    })
                    .await;
            }
        };
        if self.cancel_requested()? {
            return Ok(());
        }
        if let Some(call) = input.proposed {
            return self.record_proposed(step, call).await;
        }
        // No admission: a gateway run makes one model call, so that call's reservation (on
        // every shared line; the run's own budget it checks against its log) already holds the
        // whole run, and contention serves the requests that fit without a second hold to take
        // and give back.
        let lines = self.budget_lines();
        self.check_budgets(&lines).await?;
        // The model may call only tools the client declared and the operator knows (a call of
        // any other is refused unjudged); of those, the ones the policies deny outright are not
        // offered, and a call of one anyway is judged, and denied by the policy that says so.
        let known: Vec<ToolSpec> = input
            .tools
            .into_iter()
            .filter(|t| self.agent.client_tools.contains(&t.name))
            .collect();
        self.offered = Some(known.iter().map(|t| t.name.clone()).collect());
        self.settings = Some(input.settings);
        self.tool_specs = known
            .into_iter()
            .filter(|t| !self.agent.gate.denied_outright(&t.name))
            .collect();
        let counter =
            TokenCounter::for_model(self.agent.provider.kind(), self.agent.provider.model());
        let counted = input.messages.iter().map(|m| counter.message(m)).sum();
        self.call_candidates(
            step,
            &lines,
            &input.system,
            &input.messages,
            counted,
            counter,
        )
        .await
    }

    /// Records a call the client proposed as the step's reply of the client ("model" `client`,
    /// nothing used), checked like a model's, so the run judges and runs it next.
    async fn record_proposed(&mut self, step: u32, call: ToolCall) -> Result<(), EngineError> {
        self.record(Event::ModelRequested {
            step,
            attempt: 1,
            model: CLIENT_MODEL.into(),
            messages: 0,
            tools: 0,
        })
        .await?;
        let sanitized =
            rein_core::reply::sanitize_calls(step, vec![call], &self.agent.reply_limits);
        self.record(Event::ModelReplied {
            step,
            text: None,
            tool_calls: sanitized.calls,
            usage: Usage::default(),
            latency_us: 0,
            stop_reason: Some("client_call".into()),
            stop_sequence: None,
            model: CLIENT_MODEL.into(),
            cost_micros: 0,
        })
        .await?;
        self.record_refusals(step, sanitized.refused).await
    }

    /// Why a call of `tool` cannot be dispatched in this gateway run, if it cannot: the run was
    /// resumed without a request to hand it to, or the model called a tool it was not offered.
    pub(super) fn gateway_refusal(&self, tool: &str) -> Option<String> {
        if self.is_gateway() && !self.turn {
            return Some(
                "the gateway request was interrupted before this call was judged; it was not handed over"
                    .into(),
            );
        }
        let offered = self.offered.as_ref()?;
        (!offered.iter().any(|t| t == tool)).then(|| {
            format!("`{tool}` is not a tool of this request: only tools the client declared and the operator knows may be called")
        })
    }

    /// Whether `tool` is run by the gateway's client: its call is handed over, not run.
    pub(super) fn runs_at_client(&self, tool: &str) -> bool {
        self.agent.client_tools.contains(tool)
    }

    /// The call a gateway run stopped on with its intent recorded but not handed over, when the
    /// core would end the run on it as in doubt: its id, and `id (tool)`. A call its client runs
    /// cannot have happened before its hand-off, since the client only gets calls in the answer
    /// sent after the run's end is durable. So a driver that took a request (a resume killed
    /// between the intent and the hand-off, picked up for the request sent again) hands it over
    /// now, and one resumed without a request ends the run `failed` naming it, instead of asking
    /// a person to check whether a call nobody received happened.
    pub(super) fn unhanded_client_call(&self, ended: &Ended) -> Option<(String, String)> {
        if !self.is_gateway() || ended.status != EndState::NeedsReconciliation {
            return None;
        }
        let call_id = ended.call_id.as_ref()?;
        self.state
            .calls()
            .iter()
            .find(|c| &c.call.id == call_id && !c.handed_off && self.runs_at_client(&c.call.name))
            .map(|c| {
                (
                    c.call.id.clone(),
                    format!("{} ({})", c.call.id, c.call.name),
                )
            })
    }

    /// Ends the run `failed` on such a call, naming it, instead of asking a person to check
    /// whether a call nobody received happened.
    pub(super) async fn end_unhanded(
        &mut self,
        output: Option<String>,
        call: String,
    ) -> Result<(), EngineError> {
        self.record(Event::RunEnded {
            status: EndState::Failed,
            output,
            reason: Some(format!(
                "the gateway request was interrupted before call {call} was handed over: its client never received it and was not answered"
            )),
            call_id: None,
        })
        .await
    }

    /// For a gateway that fails a request whose answer holds a denied call (`on_denied =
    /// "error"`): before the answer's first call is dispatched, judges all of them, and if the
    /// policies deny one, records that judgement and ends the run `denied`, handing nothing over
    /// (its client is answered with an error, so a call recorded as handed over would be one it
    /// never received). Answers whether it ended the run. Each call is judged as dispatch will
    /// judge it, counting the calls before it that dispatch will start or hold (a cap of one
    /// call per run denies the second of two here, not after the first was handed over). (A
    /// tool whose circuit breaker is open is judged here, though dispatch will refuse it
    /// unjudged: asking the breaker would spend its half-open probe.)
    pub(super) async fn refuse_whole_answer(&mut self) -> Result<bool, EngineError> {
        if !self.is_gateway() || !self.turn || !self.agent.fails_on_denied || self.answer_prejudged
        {
            return Ok(false);
        }
        self.answer_prejudged = true;
        self.refresh_data().await?;
        let proposed: Vec<ToolCall> = self
            .state
            .calls()
            .iter()
            .filter(|c| c.status == CallStatus::Proposed)
            .map(|c| c.call.clone())
            .collect();
        let mut denied = Vec::new();
        for call in proposed {
            // Calls refused before judging are left out as they would be: they are not denials.
            // So are those past the run's tool-call budget, counting the calls before them.
            let started = self.ahead.iter().filter(|(_, started)| *started).count() as u32;
            let spent = self
                .agent
                .max_tool_calls
                .is_some_and(|max| self.state.tool_executions() + started >= max);
            if spent || self.refused_unjudged(&call).is_some() {
                continue;
            }
            let (decision, provenance) = self.judge_tool(&call, None);
            match decision.verdict {
                Verdict::Deny => denied.push((call, decision, provenance)),
                Verdict::Allow => self.ahead.push((call, true)),
                Verdict::Ask => self.ahead.push((call, false)),
            }
        }
        self.ahead.clear();
        if denied.is_empty() {
            return Ok(false);
        }
        let mut why = Vec::with_capacity(denied.len());
        for (call, decision, provenance) in denied {
            why.push(format!(
                "{} `{}`: {}",
                call.id,
                call.name,
                rein_core::gate::denial(&decision.policies, &decision.reasons)
            ));
            self.record_judgement(&call, &decision, None, provenance)
                .await?;
        }
        self.record(Event::RunEnded {
            status: EndState::Denied,
            output: None,
            reason: Some(format!(
                "the policies deny a call in the model's answer, and this gateway fails such a request: none of its calls was handed over; denied: {}",
                why.join("; ")
            )),
            call_id: None,
        })
        .await?;
        Ok(true)
    }

    /// Hands a call whose intent is recorded to the client.
    pub(super) async fn hand_off(&mut self, call_id: String) -> Result<(), EngineError> {
        self.handed.push(call_id.clone());
        self.record(Event::ToolHandedOff { call_id }).await
    }
}
