//! The model step: the context, the candidates (routed model, primary, fallbacks) with their
//! breakers, the gate's verdict, a hold on the budgets sized by each model's own reply cap, the
//! call (with its retries, in `model_call`), and what rein accepts of the reply before it is
//! recorded.

use std::sync::Arc;
use std::time::Duration;

use rein_core::budget::{Price, Spend};
use rein_core::gate::within_parent;
use rein_core::{Decision, EndState, Event, Message, ToolSpec, Usage, Verdict};
use rein_store::LedgerLine;

use crate::EngineError;
use crate::context::{ContextWindow, TokenCounter};
use crate::driver::budget::Hold;
use crate::driver::{Driver, ModelDecisionKey};
use crate::resilience::{Admission, Transition};

/// The conversation of a request, for estimating its tokens.
pub(super) enum Prompt<'a> {
    /// Already counted (the context window's total) by this counter.
    Counted(&'a [Message], u64, TokenCounter),
    /// These messages.
    Messages(&'a [Message]),
}

/// The most tokens a wrap-up turn may answer with.
pub(super) const WRAP_UP_OUTPUT_TOKENS: u64 = 256;

impl Driver<'_> {
    /// The system prompt (instructions and pinned constraints); brings the context window up to
    /// date with the conversation, compacted to the context budget, and notes newly elided outputs.
    async fn context(&mut self, step: u32) -> Result<String, EngineError> {
        let mut system = self
            .state
            .started()
            .map(|s| s.instructions.clone())
            .unwrap_or_default();
        if !self.agent.context.pinned.is_empty() {
            system.push_str("\n\nConstraints that always apply:\n");
            for c in &self.agent.context.pinned {
                system.push_str("- ");
                system.push_str(c);
                system.push('\n');
            }
        }
        let budget = self
            .agent
            .context
            .max_tokens
            .map(|max| max.saturating_sub(self.window.counter().count(&system)));
        let before = self.window.tokens();
        let newly = self.window.update(
            self.state.messages(),
            budget,
            self.agent.context.keep_recent,
            &self.pinned_tools,
        );
        if !newly.is_empty() {
            let detail = format!(
                "step {step}: elided the outputs of calls {}; the conversation is {} tokens (budget {}, {} before this step's new messages were elided)",
                newly.join(", "),
                self.window.tokens(),
                budget.unwrap_or_default(),
                before
            );
            self.notice("context_compacted", &self.run_id.clone(), detail, None)
                .await?;
        }
        Ok(system)
    }

    /// What a model call may cost at most: the prompt and the most the model may answer.
    pub(super) fn estimate(
        &self,
        provider: &dyn rein_model::Provider,
        system: &str,
        messages: Prompt<'_>,
        tools: &[ToolSpec],
        max_output: u64,
    ) -> (Spend, Option<Price>) {
        let counter = TokenCounter::for_model(provider.kind(), provider.model());
        let conversation = match messages {
            // Counted already, the same way: no need to count again.
            Prompt::Counted(_, tokens, by) if by.same_as(&counter) => tokens,
            Prompt::Counted(messages, ..) => {
                messages.iter().map(|m| counter.message(m)).sum::<u64>()
            }
            Prompt::Messages(messages) => messages.iter().map(|m| counter.message(m)).sum::<u64>(),
        };
        let prompt = counter.count(system)
            + conversation
            + tools
                .iter()
                .map(|t| {
                    counter.count(&t.name)
                        + counter.count(&t.description)
                        + counter.count(&t.parameters.to_string())
                })
                .sum::<u64>();
        let price = self
            .agent
            .prices
            .get(provider.model())
            .copied()
            .or_else(|| rein_core::budget::builtin_price(provider.model()));
        let usage = Usage {
            input_tokens: prompt,
            output_tokens: max_output,
        };
        (
            Spend {
                tokens: prompt + max_output,
                cost_micros: price.map(|p| p.cost_micros(&usage)).unwrap_or(0),
            },
            price,
        )
    }

    /// The gate's decision on calling `model` for `step`, recorded.
    pub(super) async fn judge_model(
        &mut self,
        step: u32,
        model: &str,
    ) -> Result<Decision, EngineError> {
        let labels = self.state.labels().to_vec();
        let key = (labels, model.to_owned(), self.budget_percent);
        let cached = self
            .model_decisions
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, d)| d.clone());
        let decision = match cached {
            Some(d) => d,
            None => self.decide_model(key, model),
        };
        self.record(Event::ModelJudged {
            step,
            model: model.to_owned(),
            verdict: decision.verdict,
            policies: decision.policies.clone(),
            reasons: decision.reasons.clone(),
        })
        .await?;
        Ok(decision)
    }

    /// The gate's decision on `model` for the run as it stands, remembered under `key`.
    fn decide_model(&mut self, key: ModelDecisionKey, model: &str) -> Decision {
        let span = tracing::info_span!(
            "gate",
            otel.name = %format!("gate {model}"),
            rein.gate.action = "use_model",
            gen_ai.request.model = %model,
            gen_ai.conversation.id = %self.run_id,
        );
        let _entered = span.enter();
        let facts = self.facts(None);
        let mut d = self.agent.gate.judge_model(model, &facts);
        if let Some(parent) = &self.agent.parent_gate {
            d = within_parent(d, parent.judge_model_as(&self.agent.name, model, &facts));
        }
        self.model_decisions.push((key, d.clone()));
        d
    }

    pub(super) async fn call_model(&mut self, step: u32) -> Result<(), EngineError> {
        if let Some(max) = self.agent.max_tool_calls
            && self.state.tool_executions() >= max
        {
            return self
                .wrap_up(step, format!("the run's tool-call budget ({max}) is spent"))
                .await;
        }
        if self.cancel_requested()? {
            return Ok(());
        }
        let lines = self.budget_lines();
        if !self.admit(&lines).await? {
            return Ok(());
        }
        self.check_budgets(&lines).await?;
        let system = self.context(step).await?;
        // The window is lent out for the call, so the conversation is not copied each step.
        let window =
            std::mem::replace(&mut self.window, ContextWindow::new(TokenCounter::Estimate));
        let result = self
            .call_candidates(
                step,
                &lines,
                &system,
                window.messages(),
                window.tokens(),
                window.counter(),
            )
            .await;
        self.window = window;
        result
    }

    /// Whether someone (in another process, through the store) asked for the run to be
    /// cancelled; the loop then ends it before its next action. Read before and after each model
    /// call; the lease's heartbeat reads it in between.
    pub(super) fn cancel_requested(&self) -> Result<bool, EngineError> {
        match self.engine.store.cancel_requested(&self.run_id)? {
            Some(by) => {
                self.beat.request_cancel(&by);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Tries the routed model, the primary and its fallbacks in turn for one step.
    pub(super) async fn call_candidates(
        &mut self,
        step: u32,
        lines: &[(rein_core::budget::Limit, LedgerLine)],
        system: &str,
        messages: &[Message],
        counted: u64,
        counted_by: TokenCounter,
    ) -> Result<(), EngineError> {
        // Candidates in order: the routed model for this kind of step, the primary, its fallbacks.
        let reads_tool_results = matches!(self.state.messages().last(), Some(Message::Tool { .. }));
        let mut candidates: Vec<(Arc<dyn rein_model::Provider>, &'static str)> = Vec::new();
        if let (Some(routed), true) = (&self.agent.route_tool_results, reads_tool_results) {
            candidates.push((routed.clone(), "routed: this step reads tool results"));
        }
        candidates.push((self.agent.provider.clone(), "primary"));
        for fallback in &self.agent.fallbacks {
            candidates.push((fallback.clone(), "fallback"));
        }
        let mut seen = Vec::new();
        candidates.retain(|(p, _)| {
            let fresh = !seen.contains(&p.model().to_owned());
            seen.push(p.model().to_owned());
            fresh
        });
        let mut failures: Vec<String> = Vec::new();
        // How many of those the provider refused for what the request held.
        let (mut malformed, mut no_account) = (0, 0);
        let count = candidates.len();
        for (index, (provider, why)) in candidates.into_iter().enumerate() {
            let model = provider.model().to_owned();
            let breaker = format!("model:{model}");
            let now = self.engine.clock.now_ms();
            match self.agent.breakers.admit(&breaker, now) {
                Admission::Refused { retry_in_ms } => {
                    failures.push(format!("{model}: circuit breaker open"));
                    self.notice(
                        "model_skipped",
                        &model,
                        format!("its circuit breaker is open for {retry_in_ms} ms more"),
                        None,
                    )
                    .await?;
                    continue;
                }
                Admission::Probe => {
                    self.notice(
                        "breaker_half_open",
                        &breaker,
                        "letting one call through to probe the model".into(),
                        None,
                    )
                    .await?
                }
                Admission::Pass => {}
            }
            if why != "primary" || !failures.is_empty() {
                let detail = if failures.is_empty() {
                    why.to_owned()
                } else {
                    format!("{why}, after: {}", failures.join("; "))
                };
                self.notice("model_chosen", &model, detail, None).await?;
            }
            let decision = self.judge_model(step, &model).await?;
            if decision.verdict != Verdict::Allow {
                failures.push(format!("{model}: not allowed by the policies"));
                if index + 1 < count {
                    continue;
                }
                return self
                    .record(Event::RunEnded {
                        status: EndState::Denied,
                        output: self.state.last_text().map(str::to_owned),
                        reason: Some(format!(
                            "the policies do not allow model `{model}`: {}",
                            decision.reasons.join("; ")
                        )),
                        call_id: None,
                    })
                    .await;
            }
            // Each model reserves its own reply cap, the one it is sent.
            let (estimate, price) = self.estimate(
                provider.as_ref(),
                system,
                Prompt::Counted(messages, counted, counted_by),
                &self.tool_specs,
                // The client's cap, where it lowers the operator's, is the one sent.
                self.settings
                    .as_ref()
                    .map_or(provider.max_output_tokens(), |s| {
                        s.max_tokens_within(provider.max_output_tokens())
                    }),
            );
            // Room is kept for the wrap-up turn, so a run stopped by its budget can still say
            // what it did.
            let headroom = if lines.is_empty() || self.is_gateway() {
                Spend::default()
            } else {
                let wrap_up = self.wrap_up_request("the budget is spent");
                self.estimate(
                    provider.as_ref(),
                    &wrap_up.0,
                    Prompt::Messages(&wrap_up.1),
                    &[],
                    WRAP_UP_OUTPUT_TOKENS,
                )
                .0
            };
            // A gateway run's start goes to the store with the ledger's hold of the call's cost,
            // in one commit: the request waits for both at once (`try_model`).
            let with_start = self.is_gateway() && step <= 1;
            let held = match self.hold(lines, estimate, headroom, 0, with_start).await? {
                Hold::Held(held) => held,
                Hold::Refused(why) => return self.wrap_up(step, why).await,
            };
            let tools = self.tool_specs.clone();
            let result = self
                .try_model(step, provider.as_ref(), system, messages, &tools)
                .await?;
            let now = self.engine.clock.now_ms();
            let (threshold, cooldown) = (5, Duration::from_secs(30));
            match result {
                Ok((reply, latency_us)) => {
                    let actual = Spend {
                        tokens: reply.usage.input_tokens + reply.usage.output_tokens,
                        cost_micros: price.map(|p| p.cost_micros(&reply.usage)).unwrap_or(0),
                    };
                    self.settle(held, actual, &model).await?;
                    if let Some(Transition::Closed) = self
                        .agent
                        .breakers
                        .record(&breaker, true, threshold, cooldown, now)
                    {
                        self.notice(
                            "breaker_closed",
                            &breaker,
                            "the probe succeeded".into(),
                            None,
                        )
                        .await?;
                    }
                    if let Some(target) = self.agent.model_latency_target
                        && latency_us > target.as_micros() as u64
                    {
                        self.notice(
                            "latency_target_missed",
                            &model,
                            format!(
                                "the call took {} ms; the target is {} ms",
                                latency_us / 1000,
                                target.as_millis()
                            ),
                            None,
                        )
                        .await?;
                    }
                    // rein owns call ids, and refuses what is too big or too many, before
                    // anything of the reply is recorded.
                    let sanitized = rein_core::reply::sanitize_calls(
                        step,
                        reply.tool_calls,
                        &self.agent.reply_limits,
                    );
                    self.record(Event::ModelReplied {
                        step,
                        text: reply.text,
                        tool_calls: sanitized.calls,
                        usage: reply.usage,
                        latency_us,
                        stop_reason: reply.stop_reason,
                        stop_sequence: reply.stop_sequence,
                        model: model.clone(),
                        cost_micros: actual.cost_micros,
                    })
                    .await?;
                    if sanitized.dropped > 0 {
                        self.notice(
                            "tool_calls_dropped",
                            &model,
                            format!(
                                "the reply proposed {} more tool calls than rein keeps ({}); they were dropped unread",
                                sanitized.dropped,
                                rein_core::reply::MAX_RECORDED_CALLS
                            ),
                            None,
                        )
                        .await?;
                    }
                    self.record_refusals(step, sanitized.refused).await?;
                    // Asked to stop while the model was thinking: none of its calls run.
                    self.cancel_requested()?;
                    return Ok(());
                }
                Err((error, tries)) => {
                    drop(held);
                    // A request the provider refused for what it holds (a gateway's client shapes
                    // much of it) leaves the breaker as it was: clients sending bad values must
                    // not open it for every other run. (As a probe, it says nothing either way:
                    // another call probes a cool-down later.)
                    no_account +=
                        usize::from(matches!(error, rein_model::ProviderError::Account { .. }));
                    let transition = if error.is_request_fault() {
                        malformed += 1;
                        None
                    } else {
                        self.agent
                            .breakers
                            .record(&breaker, false, threshold, cooldown, now)
                    };
                    if let Some(Transition::Opened {
                        failures: n,
                        cooldown_ms,
                    }) = transition
                    {
                        self.notice(
                            "breaker_opened",
                            &breaker,
                            format!(
                                "{n} failed calls in a row; calls are refused for {cooldown_ms} ms"
                            ),
                            None,
                        )
                        .await?;
                    }
                    let tries = if tries == 1 {
                        "1 try".to_owned()
                    } else {
                        format!("{tries} tries")
                    };
                    failures.push(format!("{model} failed after {tries}: {error}"));
                }
            }
        }
        // When every model failed the same way, the reason begins by saying which: the request
        // refused for what it held (a value out of range, a schema it cannot take), the client's
        // fault (a gateway answers 400); or every provider's account out of credit, which nothing
        // a client sends again changes (a gateway tells its SDK not to retry).
        let all = |n: usize| n == failures.len() && n > 0;
        let cause = if all(malformed) {
            Some(crate::gateway::REFUSED_AS_MALFORMED)
        } else if all(no_account) {
            Some(crate::gateway::OUT_OF_CREDIT)
        } else {
            None
        };
        let failed = format!(
            "the model call for step {step} failed with every model: {}",
            failures.join("; ")
        );
        let reason = match cause {
            Some(cause) => format!("{cause}: {failed}"),
            None => failed,
        };
        // Some work was done: say so, rather than a bare failure.
        let status = if self
            .state
            .history()
            .iter()
            .any(|(_, r)| *r == rein_core::state::CallResult::Done)
        {
            EndState::Partial
        } else {
            EndState::Failed
        };
        self.record(Event::RunEnded {
            status,
            output: self.state.last_text().map(str::to_owned),
            reason: Some(reason),
            call_id: None,
        })
        .await
    }

    /// Records the calls of a reply rein refused before judging them (what `sanitize_calls`
    /// found), so the model is told.
    pub(super) async fn record_refusals(
        &mut self,
        step: u32,
        refused: Vec<rein_core::reply::Refusal>,
    ) -> Result<(), EngineError> {
        for refusal in refused {
            self.record(Event::ToolRejected {
                step,
                call_id: refusal.call_id,
                tool: refusal.tool,
                reason: refusal.reason,
            })
            .await?;
        }
        Ok(())
    }
}
