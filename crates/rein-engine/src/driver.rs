//! Driving one run: ask the core what to do, do it, record what happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rein_core::gate::within_parent;
use rein_core::labels::{UNTRUSTED, UNTRUSTED_NOTICE};
use rein_core::text::one_line;
use std::sync::Arc;

use rein_core::budget::{Price, Spend, Spender};
use rein_core::{
    Action, Decision, EndState, Event, Message, RunStarted, RunState, StoredEvent, ToolCall,
    ToolSpec, Usage, Verdict,
};
use rein_store::LedgerLine;

use crate::context::{ContextWindow, TokenCounter};
use crate::resilience::{Admission, Transition};
use rein_model::ChatRequest;
use rein_policy::RequestFacts;
use rein_store::Commit;
use rein_tools::ToolContext;
use serde_json::json;
use tracing::{Instrument, field};

use crate::{Agent, Engine, EngineError, Observer, RunReport, RunRequest};

/// The memory tools' view of the notes, bound to one run's scopes.
struct RunMemory {
    notes: Arc<rein_store::NoteStore>,
    session: String,
    agent: String,
    user: String,
    run_id: String,
    clock: Arc<dyn rein_core::Clock>,
}

impl RunMemory {
    fn scope(&self, scope: rein_tools::MemoryScope) -> &str {
        match scope {
            rein_tools::MemoryScope::Session => &self.session,
            rein_tools::MemoryScope::Agent => &self.agent,
            rein_tools::MemoryScope::User => &self.user,
        }
    }
}

impl rein_tools::Memory for RunMemory {
    fn read(&self, scope: rein_tools::MemoryScope, key: &str) -> Result<Option<String>, String> {
        self.notes
            .read(self.scope(scope), key)
            .map_err(|e| e.to_string())
    }
    fn list(
        &self,
        scope: rein_tools::MemoryScope,
        limit: usize,
    ) -> Result<Vec<(String, String)>, String> {
        self.notes
            .list(self.scope(scope), limit)
            .map_err(|e| e.to_string())
    }
    fn write(&self, scope: rein_tools::MemoryScope, key: &str, note: &str) -> Result<(), String> {
        self.notes
            .write(
                self.scope(scope),
                key,
                note,
                &self.run_id,
                self.clock.now_ms(),
            )
            .map_err(|e| e.to_string())
    }
}

/// The conversation of a request, for estimating its tokens.
enum Prompt<'a> {
    /// Already counted (the context window's total) by this counter.
    Counted(&'a [Message], u64, TokenCounter),
    /// These messages.
    Messages(&'a [Message]),
}

/// The most tokens a wrap-up turn may answer with.
const WRAP_UP_OUTPUT_TOKENS: u64 = 256;

/// Extra time the engine allows a tool beyond its own timeout before giving up on it (tools stop
/// themselves at their timeout; this is the backstop for one that does not).
const TOOL_TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// What a model decision depends on: the labels in play, the model, the budget share.
type ModelDecisionKey = (Vec<String>, String, u64);

pub(crate) struct Driver<'a> {
    engine: &'a Engine,
    agent: &'a Agent,
    run_id: String,
    state: RunState,
    workspace: PathBuf,
    observer: &'a dyn Observer,
    tool_specs: Vec<ToolSpec>,
    pending: Vec<Commit>,
    audit_pending: Vec<rein_audit::Entry>,
    effects: u32,
    /// Model-call decisions of this run, by the labels in play, the model and the budget share.
    model_decisions: Vec<(ModelDecisionKey, Decision)>,
    /// The largest share of a budget spent, as the policies see it.
    budget_percent: u64,
    /// Budgets whose warning level this run has already noted.
    warned: Vec<String>,
    /// The conversation as the model is sent it, compacted to the context budget.
    window: ContextWindow,
    /// Tools whose outputs are never elided (sub-agent results).
    pinned_tools: std::collections::HashSet<String>,
}

impl<'a> Driver<'a> {
    pub(crate) fn new(
        engine: &'a Engine,
        agent: &'a Agent,
        run_id: String,
        state: RunState,
        workspace: PathBuf,
        observer: &'a dyn Observer,
    ) -> Driver<'a> {
        Driver {
            engine,
            agent,
            run_id,
            state,
            workspace,
            observer,
            // Tools the policies deny outright are not offered; every call is still judged.
            tool_specs: agent
                .tools
                .specs()
                .into_iter()
                .filter(|t| !agent.gate.denied_outright(&t.name))
                .collect(),
            pending: Vec::new(),
            audit_pending: Vec::new(),
            effects: 0,
            model_decisions: Vec::new(),
            budget_percent: 0,
            warned: Vec::new(),
            window: ContextWindow::new(TokenCounter::for_model(
                agent.provider.kind(),
                agent.provider.model(),
            )),
            pinned_tools: agent.delegates.keys().cloned().collect(),
        }
    }

    pub(crate) async fn start(mut self, request: &RunRequest) -> Result<RunReport, EngineError> {
        let untrusted = self
            .agent
            .output_labels
            .values()
            .any(|l| l.iter().any(|l| l == UNTRUSTED));
        let instructions = if untrusted {
            format!(
                "{}\n\n{UNTRUSTED_NOTICE}",
                self.agent.instructions.trim_end()
            )
        } else {
            self.agent.instructions.clone()
        };
        let started = RunStarted {
            agent: self.agent.name.clone(),
            agent_dir: self.agent.dir.as_ref().map(|d| d.display().to_string()),
            agent_digest: self.agent.digest.clone(),
            workspace: self.workspace.display().to_string(),
            task: request.task.clone(),
            instructions,
            provider: self.agent.provider.kind().to_owned(),
            model: self.agent.provider.model().to_owned(),
            limits: self.agent.limits,
            tools: self.agent.tools.names(),
            user: request.user.clone(),
            tenant: request.tenant.clone(),
            parent: request.parent.clone(),
        };
        self.record(Event::RunStarted(started)).await?;
        for notice in &self.agent.load_notices {
            self.record(Event::Notice {
                kind: notice.kind.clone(),
                subject: notice.subject.clone(),
                detail: notice.detail.clone(),
                call_id: None,
            })
            .await?;
        }
        self.drive().await
    }

    pub(crate) async fn resume(mut self) -> Result<RunReport, EngineError> {
        let agent_changed = self
            .state
            .started()
            .map(|s| s.agent_digest != self.agent.digest)
            .unwrap_or(false);
        let attempt = self.state.attempt() + 1;
        self.record(Event::RunResumed {
            attempt,
            agent_changed,
        })
        .await?;
        self.drive().await
    }

    async fn drive(mut self) -> Result<RunReport, EngineError> {
        let span = tracing::info_span!(
            "invoke_agent",
            otel.name = %format!("invoke_agent {}", self.agent.name),
            gen_ai.operation.name = "invoke_agent",
            gen_ai.agent.name = %self.agent.name,
            gen_ai.conversation.id = %self.run_id,
            gen_ai.provider.name = self.agent.provider.kind(),
            gen_ai.request.model = %self.agent.provider.model(),
            rein.run.status = field::Empty,
        );
        let result = async {
            loop {
                match self.state.next_action(self.engine.clock.now_ms()) {
                    Action::Finished(status) => {
                        tracing::Span::current().record("rein.run.status", status.as_str());
                        break;
                    }
                    Action::End(ended) => {
                        self.record(Event::RunEnded {
                            status: ended.status,
                            output: ended.output,
                            reason: ended.reason,
                            call_id: ended.call_id,
                        })
                        .await?;
                    }
                    Action::Suspended => {
                        tracing::Span::current()
                            .record("rein.run.status", EndState::AwaitingApproval.as_str());
                        break;
                    }
                    Action::Suspend { approvals } => {
                        self.record(Event::RunSuspended { approvals }).await?
                    }
                    Action::Expire { approval_id } => {
                        self.record(Event::ApprovalDecided {
                            approval_id,
                            approved: false,
                            by: "rein".into(),
                            note: None,
                            expired: true,
                        })
                        .await?
                    }
                    Action::CallModel { step } => self.call_model(step).await?,
                    Action::Dispatch { call } => self.dispatch(call).await?,
                    Action::ExecuteApproved { call, approved_by } => {
                        self.run_approved(call, approved_by).await?
                    }
                    Action::Reexecute { call, attempt } => self.execute(call, attempt).await?,
                }
            }
            self.flush().await
        }
        .instrument(span)
        .await;
        result?;
        RunReport::from_state(&self.run_id, &self.state).ok_or_else(|| {
            EngineError::Agent(format!("run {} stopped without an end state", self.run_id))
        })
    }

    /// Applies an event to the run's state and queues it for commit. Every event passes here, so
    /// the state the engine decides from is always exactly the log.
    async fn record(&mut self, event: Event) -> Result<(), EngineError> {
        // Secret values never reach the log, the context or the live view, whoever produced them.
        let event = if self.agent.redactor.is_empty() {
            event
        } else {
            redact(&self.agent.redactor, event)
        };
        let stored = StoredEvent {
            seq: self.state.last_seq() + 1,
            at_ms: self.engine.clock.now_ms(),
            event,
        };
        self.state
            .apply(&stored)
            .map_err(|source| EngineError::State {
                run_id: self.run_id.clone(),
                source,
            })?;
        self.pending.push(
            self.engine
                .store
                .append(&self.run_id, std::slice::from_ref(&stored)),
        );
        self.observer.on_event(&self.run_id, &stored);
        let redact = |tool: &str, args| {
            self.engine
                .redact_args(self.agent.sensitive.get(tool), args)
        };
        if let Some(entry) = crate::audit::entry_for(&self.run_id, &stored, &self.state, &redact) {
            self.audit_pending.push(entry);
        }
        // Intents, outcomes and endings are waited for; other events ride along with them.
        if matches!(
            stored.event,
            Event::ToolIntent { .. }
                | Event::ToolOutcome { .. }
                | Event::RunEnded { .. }
                | Event::RunSuspended { .. }
        ) {
            self.flush().await?;
        }
        if self.engine.faults.after_event == Some(stored.seq) {
            self.stop_for_fault().await?;
        }
        Ok(())
    }

    /// Waits until everything recorded so far is committed, then writes its audit records (and
    /// signs a checkpoint if the run just ended or suspended).
    async fn flush(&mut self) -> Result<(), EngineError> {
        for commit in self.pending.drain(..) {
            commit.await?;
        }
        if !self.audit_pending.is_empty() {
            let closing = self
                .audit_pending
                .iter()
                .any(|e| e.kind == "run_ended" || e.kind == "run_suspended");
            let entries = std::mem::take(&mut self.audit_pending);
            self.engine.audit(entries, closing).await?;
        }
        Ok(())
    }

    async fn stop_for_fault(&mut self) -> Result<(), EngineError> {
        self.flush().await?;
        if let Some(stop) = &self.engine.faults.stop {
            stop();
        }
        // The stop returned (in-process tests): abandon the run as a dead process would.
        Err(EngineError::Interrupted {
            run_id: self.run_id.clone(),
            seq: self.state.last_seq(),
        })
    }

    /// The run's memory: its session (shared with its sub-agents through the root run's id), its
    /// agent's, and its user's with this agent.
    fn memory(&self) -> Result<Arc<dyn rein_tools::Memory>, EngineError> {
        let started = self.state.started();
        let root = started
            .and_then(|s| s.parent.as_ref())
            .map(|p| p.run_id.clone())
            .unwrap_or_else(|| self.run_id.clone());
        let agent = started.map(|s| s.agent.clone()).unwrap_or_default();
        let user = started.map(|s| s.user.clone()).unwrap_or_default();
        Ok(Arc::new(RunMemory {
            notes: self.engine.notes()?,
            session: format!("session:{root}"),
            agent: format!("agent:{agent}"),
            user: format!("user:{agent}/{user}"),
            run_id: self.run_id.clone(),
            clock: self.engine.clock.clone(),
        }))
    }

    /// Notes something that does not change the run's state.
    async fn notice(
        &mut self,
        kind: &str,
        subject: &str,
        detail: String,
        call_id: Option<String>,
    ) -> Result<(), EngineError> {
        self.record(Event::Notice {
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            detail,
            call_id,
        })
        .await
    }

    /// The ledger lines this run spends from now: its own (shared with its sub-agents through
    /// the root run's id) and its agent's, user's and tenant's.
    fn budget_lines(&self) -> Vec<(rein_core::budget::Limit, LedgerLine)> {
        let Some(started) = self.state.started() else {
            return vec![];
        };
        let root = started
            .parent
            .as_ref()
            .map(|p| p.run_id.as_str())
            .unwrap_or(&self.run_id);
        let who = Spender {
            root_run: root,
            agent: &started.agent,
            user: &started.user,
            tenant: &started.tenant,
        };
        let now = self.engine.clock.now_ms();
        self.agent
            .budgets
            .iter()
            .map(|limit| {
                let (key, period) = rein_core::budget::ledger_line(limit, &who, now);
                (
                    *limit,
                    LedgerLine {
                        key,
                        period,
                        max_tokens: limit.tokens,
                        max_cost_micros: limit.cost_micros,
                    },
                )
            })
            .collect()
    }

    /// Reads what each budget has spent, sets the share the policies see
    /// (`context.budget_percent`), and notes each budget's first pass of its warning level.
    async fn check_budgets(
        &mut self,
        lines: &[(rein_core::budget::Limit, LedgerLine)],
    ) -> Result<(), EngineError> {
        if lines.is_empty() {
            return Ok(());
        }
        let ledger = self.engine.ledger()?;
        let mut highest = 0;
        for (limit, line) in lines {
            let spent = ledger.spent(line)?;
            let percent = spent.percent_of(limit);
            highest = highest.max(percent);
            let id = format!("{} {}", line.key, line.period);
            if percent >= u64::from(limit.warn_percent) && !self.warned.contains(&id) {
                self.warned.push(id.clone());
                self.notice(
                    "budget_warning",
                    &id,
                    format!(
                        "{percent}% spent ({} tokens, ${:.6}); warning level {}%",
                        spent.tokens,
                        spent.cost_micros as f64 / 1e6,
                        limit.warn_percent
                    ),
                    None,
                )
                .await?;
            }
        }
        self.budget_percent = highest;
        Ok(())
    }

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
    fn estimate(
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

    fn judge_model(&mut self, model: &str) -> Decision {
        let labels = self.state.labels().to_vec();
        let key = (labels, model.to_owned(), self.budget_percent);
        if let Some((_, d)) = self.model_decisions.iter().find(|(k, _)| *k == key) {
            return d.clone();
        }
        let facts = self.facts(None);
        let mut d = self.agent.gate.judge_model(model, &facts);
        if let Some(parent) = &self.agent.parent_gate {
            d = within_parent(d, parent.judge_model_as(&self.agent.name, model, &facts));
        }
        self.model_decisions.push((key, d.clone()));
        d
    }

    async fn call_model(&mut self, step: u32) -> Result<(), EngineError> {
        if let Some(max) = self.agent.max_tool_calls
            && self.state.tool_executions() >= max
        {
            return self
                .wrap_up(step, format!("the run's tool-call budget ({max}) is spent"))
                .await;
        }
        let lines = self.budget_lines();
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

    /// Tries the routed model, the primary and its fallbacks in turn for one step.
    async fn call_candidates(
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
            let decision = self.judge_model(&model);
            self.record(Event::ModelJudged {
                step,
                model: model.clone(),
                verdict: decision.verdict,
                policies: decision.policies.clone(),
                reasons: decision.reasons.clone(),
            })
            .await?;
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
            let (estimate, price) = self.estimate(
                provider.as_ref(),
                system,
                Prompt::Counted(messages, counted, counted_by),
                &self.tool_specs,
                self.agent.max_output_tokens,
            );
            let reservation = if lines.is_empty() {
                None
            } else {
                let ledger_lines: Vec<LedgerLine> = lines.iter().map(|(_, l)| l.clone()).collect();
                // Room is kept for the wrap-up turn, so a run stopped by its budget can still
                // say what it did.
                let wrap_up = self.wrap_up_request("the budget is spent");
                let (headroom, _) = self.estimate(
                    provider.as_ref(),
                    &wrap_up.0,
                    Prompt::Messages(&wrap_up.1),
                    &[],
                    WRAP_UP_OUTPUT_TOKENS,
                );
                match self.engine.ledger()?.reserve(
                    &self.run_id,
                    &ledger_lines,
                    estimate,
                    headroom,
                    self.engine.clock.now_ms(),
                )? {
                    Ok(r) => Some(r),
                    Err(exhausted) => return self.wrap_up(step, exhausted.to_string()).await,
                }
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
                    if let Some(r) = &reservation {
                        self.engine.ledger()?.settle(r, actual)?;
                    }
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
                    return self
                        .record(Event::ModelReplied {
                            step,
                            text: reply.text,
                            tool_calls: reply.tool_calls,
                            usage: reply.usage,
                            latency_us,
                            stop_reason: reply.stop_reason,
                            model: model.clone(),
                            cost_micros: actual.cost_micros,
                        })
                        .await;
                }
                Err((error, tries)) => {
                    if let Some(r) = &reservation {
                        self.engine.ledger()?.settle(r, Spend::default())?;
                    }
                    if let Some(Transition::Opened {
                        failures: n,
                        cooldown_ms,
                    }) = self
                        .agent
                        .breakers
                        .record(&breaker, false, threshold, cooldown, now)
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
        let reason = format!(
            "the model call for step {step} failed with every model: {}",
            failures.join("; ")
        );
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

    /// Calls one model, retrying errors that may pass. The outer error is the engine's; the inner
    /// one is the model's last error once no retry is left.
    async fn try_model(
        &mut self,
        step: u32,
        provider: &dyn rein_model::Provider,
        system: &str,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<
        Result<(rein_model::ChatResponse, u64), (rein_model::ProviderError, u32)>,
        EngineError,
    > {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.record(Event::ModelRequested {
                step,
                attempt,
                model: provider.model().to_owned(),
                messages: messages.len() as u32,
                tools: tools.len() as u32,
            })
            .await?;
            let span = tracing::info_span!(
                "chat",
                otel.name = %format!("chat {}", provider.model()),
                gen_ai.operation.name = "chat",
                gen_ai.provider.name = provider.kind(),
                gen_ai.request.model = %provider.model(),
                gen_ai.conversation.id = %self.run_id,
                gen_ai.usage.input_tokens = field::Empty,
                gen_ai.usage.output_tokens = field::Empty,
                gen_ai.response.finish_reasons = field::Empty,
                error.r#type = field::Empty,
            );
            let began = Instant::now();
            let result = {
                let request = ChatRequest {
                    system,
                    messages,
                    tools,
                };
                provider.complete(&request).instrument(span.clone()).await
            };
            let latency_us = began.elapsed().as_micros() as u64;
            match result {
                Ok(reply) => {
                    span.record("gen_ai.usage.input_tokens", reply.usage.input_tokens);
                    span.record("gen_ai.usage.output_tokens", reply.usage.output_tokens);
                    if let Some(reason) = &reply.stop_reason {
                        span.record("gen_ai.response.finish_reasons", reason.as_str());
                    }
                    return Ok(Ok((reply, latency_us)));
                }
                Err(error) => {
                    span.record("error.type", error_type(&error));
                    let will_retry = error.is_retryable() && attempt < self.agent.max_attempts;
                    let wait = will_retry.then(|| {
                        backoff(
                            &self.run_id,
                            step,
                            attempt,
                            error.retry_after(),
                            self.agent.max_backoff,
                        )
                    });
                    self.record(Event::ModelFailed {
                        step,
                        attempt,
                        error: error.to_string(),
                        will_retry,
                        retry_in_ms: wait.map(|w| w.as_millis() as u64),
                    })
                    .await?;
                    match wait {
                        Some(wait) => {
                            self.flush().await?;
                            tokio::time::sleep(wait).await;
                        }
                        None => return Ok(Err((error, attempt))),
                    }
                }
            }
        }
    }

    /// A budget ran out: ask the model once more, without tools, to sum up what it completed and
    /// what it did not (if that still fits), then end the run as `budget_exhausted` with that
    /// summary as its partial output.
    /// The short request of a wrap-up turn: the instructions, the task, and a list of the calls
    /// made and how each went (not their outputs).
    fn wrap_up_request(&self, why: &str) -> (String, Vec<Message>) {
        let started = self.state.started();
        let system = started.map(|s| s.instructions.clone()).unwrap_or_default();
        let task = started.map(|s| s.task.clone()).unwrap_or_default();
        let mut done = String::new();
        for slot in self.state.calls() {
            done.push_str(&format!(
                "\n- {} {}: {:?}",
                slot.call.name,
                one_line(&slot.call.arguments.to_string(), 120),
                slot.status
            ));
        }
        if done.is_empty() {
            done.push_str(" none");
        }
        let text = format!(
            "rein: the run must stop now ({why}). You cannot call tools any more. The tool calls so far:{done}\nIn a few sentences, say what you completed, what you did not, and why."
        );
        (
            system,
            vec![Message::User { text: task }, Message::User { text }],
        )
    }

    async fn wrap_up(&mut self, step: u32, why: String) -> Result<(), EngineError> {
        let provider = self
            .agent
            .route_wrap_up
            .clone()
            .unwrap_or_else(|| self.agent.provider.clone());
        let (system, messages) = self.wrap_up_request(&why);
        let (estimate, price) = self.estimate(
            provider.as_ref(),
            &system,
            Prompt::Messages(&messages),
            &[],
            WRAP_UP_OUTPUT_TOKENS,
        );
        let lines = self.budget_lines();
        let reservation = if lines.is_empty() {
            Some(None)
        } else {
            let ledger_lines: Vec<LedgerLine> = lines.iter().map(|(_, l)| l.clone()).collect();
            self.engine
                .ledger()?
                .reserve(
                    &self.run_id,
                    &ledger_lines,
                    estimate,
                    Spend::default(),
                    self.engine.clock.now_ms(),
                )?
                .ok()
                .map(Some)
        };
        let model = provider.model().to_owned();
        let mut output = self.state.last_text().map(str::to_owned);
        let mut note = "no wrap-up turn: it would not fit in the budget either".to_owned();
        if let Some(reservation) = reservation {
            let decision = self.judge_model(&model);
            self.record(Event::ModelJudged {
                step,
                model: model.clone(),
                verdict: decision.verdict,
                policies: decision.policies.clone(),
                reasons: decision.reasons.clone(),
            })
            .await?;
            let mut actual = Spend::default();
            if decision.verdict == Verdict::Allow
                && let Ok((reply, latency_us)) = self
                    .try_model(step, provider.as_ref(), &system, &messages, &[])
                    .await?
            {
                actual = Spend {
                    tokens: reply.usage.input_tokens + reply.usage.output_tokens,
                    cost_micros: price.map(|p| p.cost_micros(&reply.usage)).unwrap_or(0),
                };
                note = "after a wrap-up turn".to_owned();
                if reply.text.is_some() {
                    output = reply.text.clone();
                }
                self.record(Event::ModelReplied {
                    step,
                    text: reply.text,
                    // No tools were offered: any call in a wrap-up is ignored.
                    tool_calls: vec![],
                    usage: reply.usage,
                    latency_us,
                    stop_reason: reply.stop_reason,
                    model: model.clone(),
                    cost_micros: actual.cost_micros,
                })
                .await?;
            }
            if let Some(r) = &reservation {
                self.engine.ledger()?.settle(r, actual)?;
            }
        }
        self.record(Event::RunEnded {
            status: EndState::BudgetExhausted,
            output,
            reason: Some(format!("{why}; ended {note}")),
            call_id: None,
        })
        .await
    }

    async fn dispatch(&mut self, call: ToolCall) -> Result<(), EngineError> {
        let step = self.state.steps();
        let checked = self
            .agent
            .tools
            .check(
                &call.name,
                &call.arguments,
                call.invalid_arguments.as_deref(),
            )
            .map_err(|r| r.to_string())
            .and_then(|_| match self.agent.max_tool_calls {
                Some(max) if self.state.tool_executions() >= max => Err(format!(
                    "the run's tool-call budget ({max}) is spent; the run is ending"
                )),
                _ => Ok(()),
            });
        // A tool whose circuit breaker is open is not called: the model is told why.
        let breaker = format!("tool:{}", call.name);
        let checked = checked.and_then(|()| {
            match self.agent.breakers.admit(&breaker, self.engine.clock.now_ms()) {
                Admission::Refused { retry_in_ms } => Err(format!(
                    "`{}` is failing: its circuit breaker is open and it will not be called for {} s; do without it or try later",
                    call.name,
                    retry_in_ms.div_ceil(1000)
                )),
                Admission::Probe => Ok(true),
                Admission::Pass => Ok(false),
            }
        });
        match checked {
            Err(reason) => {
                self.record(Event::ToolRejected {
                    step,
                    call_id: call.id,
                    tool: call.name,
                    reason,
                })
                .await
            }
            Ok(probe) => {
                if probe {
                    self.notice(
                        "breaker_half_open",
                        &breaker,
                        "the cool-down is over: this call probes the tool".into(),
                        Some(call.id.clone()),
                    )
                    .await?;
                }
                self.dispatch_checked(call).await
            }
        }
    }

    /// Judges a call that passed the checks, then runs it, asks for approval, or leaves it denied.
    async fn dispatch_checked(&mut self, call: ToolCall) -> Result<(), EngineError> {
        let decision = self.judge_tool(&call, None);
        self.record_judgement(&call, &decision, None).await?;
        match decision.verdict {
            Verdict::Deny => Ok(()),
            Verdict::Allow => self.execute(call, 1).await,
            Verdict::Ask => {
                let ttl = self.agent.approval_ttl.as_millis() as u64;
                self.record(Event::ApprovalRequested {
                    approval_id: uuid::Uuid::now_v7().simple().to_string(),
                    call_id: call.id,
                    tool: call.name,
                    args: call.arguments,
                    policies: decision.policies,
                    reasons: decision.reasons,
                    labels: self.state.labels().to_vec(),
                    expires_at_ms: Some(self.engine.clock.now_ms().saturating_add(ttl)),
                })
                .await
            }
        }
    }

    /// A person approved the call: judge it again knowing who approved (a forbid may require a
    /// particular approver), then run it unless that judgement denies.
    async fn run_approved(
        &mut self,
        call: ToolCall,
        approved_by: String,
    ) -> Result<(), EngineError> {
        let decision = self.judge_tool(&call, Some(approved_by.clone()));
        self.record_judgement(&call, &decision, Some(approved_by))
            .await?;
        match decision.verdict {
            Verdict::Deny => Ok(()),
            Verdict::Allow | Verdict::Ask => self.execute(call, 1).await,
        }
    }

    /// Runs a delegated task as the sub-agent's own run, a child of this one, and returns what
    /// the model is told.
    /// An interruption of the child (a crash point) interrupts this run too, rather than being
    /// recorded as the delegation failing.
    async fn delegate(
        &self,
        child: std::sync::Arc<Agent>,
        call: &ToolCall,
    ) -> Result<Result<serde_json::Value, rein_tools::ToolError>, EngineError> {
        let started = self.state.started();
        let request = RunRequest {
            task: call
                .arguments
                .get("task")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            user: started.map(|s| s.user.clone()).unwrap_or_default(),
            tenant: started.map(|s| s.tenant.clone()).unwrap_or_default(),
            parent: Some(rein_core::ParentRef {
                run_id: self.run_id.clone(),
                call_id: call.id.clone(),
            }),
        };
        let report = match self.engine.run_child(child, request, self.observer).await {
            Ok(report) => report,
            Err(e @ EngineError::Interrupted { .. }) => return Err(e),
            Err(e) => {
                return Ok(Err(rein_tools::ToolError::Failed(format!(
                    "the sub-agent could not run: {e}"
                ))));
            }
        };
        let summary = serde_json::json!({
            "run_id": report.run_id,
            "status": report.status,
            "output": report.output,
            "reason": report.reason,
        });
        Ok(match report.status {
            rein_core::EndState::Completed => Ok(summary),
            _ => Err(rein_tools::ToolError::Failed(format!(
                "the sub-agent's run {} ended {}: {}",
                report.run_id,
                report.status,
                report.reason.unwrap_or_default()
            ))),
        })
    }

    async fn record_judgement(
        &mut self,
        call: &ToolCall,
        decision: &Decision,
        approved_by: Option<String>,
    ) -> Result<(), EngineError> {
        self.record(Event::ToolJudged {
            step: self.state.steps(),
            call_id: call.id.clone(),
            tool: call.name.clone(),
            verdict: decision.verdict,
            policies: decision.policies.clone(),
            reasons: decision.reasons.clone(),
            labels: self.state.labels().to_vec(),
            approved_by,
        })
        .await
    }

    /// The gate's decision on a call: a delegation is judged as `delegate` on the sub-agent; a
    /// sub-agent's own calls must also be allowed by its parent's policies.
    fn judge_tool(&self, call: &ToolCall, approved_by: Option<String>) -> Decision {
        let facts = self.facts(approved_by);
        if let Some(child) = self.agent.delegates.get(&call.name) {
            let task = call
                .arguments
                .get("task")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            return self.agent.gate.judge_delegate(&child.name, task, &facts);
        }
        let own = self
            .agent
            .gate
            .judge_tool(&call.name, &call.arguments, &facts);
        match &self.agent.parent_gate {
            Some(parent) => within_parent(
                own,
                parent.judge_tool_as(&self.agent.name, &call.name, &call.arguments, &facts),
            ),
            None => own,
        }
    }

    /// What the gate knows about the run for a request.
    fn facts(&self, approved_by: Option<String>) -> RequestFacts {
        let started = self.state.started();
        RequestFacts {
            budget_percent: self.budget_percent,
            user: started.map(|s| s.user.clone()).unwrap_or_default(),
            tenant: started.map(|s| s.tenant.clone()).unwrap_or_default(),
            task: started.map(|s| s.task.clone()).unwrap_or_default(),
            labels: self.state.labels().to_vec(),
            approved_by,
        }
    }

    /// Runs a tool, trying again (for idempotent tools configured to) after failures, and keeps
    /// its circuit breaker: each retry and each change of the breaker is noted.
    async fn call_with_retries(
        &mut self,
        tool: &Arc<dyn rein_tools::Tool>,
        ctx: &ToolContext,
        call: &ToolCall,
        limit: Duration,
    ) -> Result<
        Result<Result<serde_json::Value, rein_tools::ToolError>, tokio::time::error::Elapsed>,
        EngineError,
    > {
        let settings = self
            .agent
            .resilience
            .get(&call.name)
            .copied()
            .unwrap_or_default();
        let breaker = format!("tool:{}", call.name);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout(limit, tool.call(ctx, call.arguments.clone())).await;
            let error = match &result {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("timed out after {} ms", limit.as_millis())),
            };
            let now = self.engine.clock.now_ms();
            let transition = self.agent.breakers.record(
                &breaker,
                error.is_none(),
                settings.breaker_failures,
                settings.breaker_cooldown,
                now,
            );
            let opened = matches!(transition, Some(Transition::Opened { .. }));
            match transition {
                Some(Transition::Opened {
                    failures,
                    cooldown_ms,
                }) => {
                    self.notice(
                        "breaker_opened",
                        &breaker,
                        format!(
                            "{failures} failures in a row; calls are refused for {cooldown_ms} ms"
                        ),
                        Some(call.id.clone()),
                    )
                    .await?
                }
                Some(Transition::Closed) => {
                    self.notice(
                        "breaker_closed",
                        &breaker,
                        "the probe succeeded".into(),
                        Some(call.id.clone()),
                    )
                    .await?
                }
                None => {}
            }
            let Some(error) = error else {
                return Ok(result);
            };
            if attempt >= settings.max_attempts || opened {
                return Ok(result);
            }
            let base = settings.backoff.as_millis() as u64;
            let wait = backoff(&call.id, 0, attempt, None, Duration::from_secs(30)).as_millis()
                as u64
                * base
                / 250;
            let wait = Duration::from_millis(wait.max(1));
            self.notice(
                "tool_retry",
                &call.name,
                format!(
                    "try {attempt} failed ({error}); trying again in {} ms",
                    wait.as_millis()
                ),
                Some(call.id.clone()),
            )
            .await?;
            self.flush().await?;
            tokio::time::sleep(wait).await;
        }
    }

    async fn execute(&mut self, call: ToolCall, attempt: u32) -> Result<(), EngineError> {
        let step = self.state.steps();
        let Some(tool) = self.agent.tools.get(&call.name).cloned() else {
            // Only reachable on resume when the agent lost a tool since the intent was recorded.
            return self
                .record(Event::RunEnded {
                    status: EndState::Failed,
                    output: self.state.last_text().map(str::to_owned),
                    reason: Some(format!(
                        "tool `{}` of call {} is no longer in the agent's configuration",
                        call.name, call.id
                    )),
                    call_id: Some(call.id),
                })
                .await;
        };
        let manifest = tool.manifest();
        self.record(Event::ToolIntent {
            step,
            call_id: call.id.clone(),
            tool: call.name.clone(),
            args: call.arguments.clone(),
            idempotent: manifest.idempotent,
            attempt,
            labels: self
                .agent
                .output_labels
                .get(&call.name)
                .cloned()
                .unwrap_or_default(),
        })
        .await?;
        let span = tracing::info_span!(
            "execute_tool",
            otel.name = %format!("execute_tool {}", call.name),
            gen_ai.operation.name = "execute_tool",
            gen_ai.tool.name = %call.name,
            gen_ai.tool.call.id = %call.id,
            gen_ai.conversation.id = %self.run_id,
            error.r#type = field::Empty,
        );
        let ctx = ToolContext {
            workspace: self.workspace.clone(),
            run_id: self.run_id.clone(),
            call_id: call.id.clone(),
            secrets: self.agent.secrets.clone(),
            notices: Default::default(),
            memory: if call.name.starts_with("memory.") {
                Some(self.memory()?)
            } else {
                None
            },
        };
        let began = Instant::now();
        let limit = manifest.timeout + TOOL_TIMEOUT_GRACE;
        let result = match self.agent.delegates.get(&call.name) {
            // A delegation: the sub-agent's run, started or (after a crash) resumed by its id.
            Some(child) => Ok(self
                .delegate(child.clone(), &call)
                .instrument(span.clone())
                .await?),
            None => {
                self.call_with_retries(&tool, &ctx, &call, limit)
                    .instrument(span.clone())
                    .await?
            }
        };
        let duration_us = began.elapsed().as_micros() as u64;
        self.effects += 1;
        if self.engine.faults.after_effect == Some(self.effects) {
            self.stop_for_fault().await?;
        }
        let (ok, output) = match result {
            Ok(Ok(value)) => (true, value),
            Ok(Err(error)) => {
                span.record("error.type", "tool_error");
                (false, json!({ "error": error.to_string() }))
            }
            Err(_) => {
                span.record("error.type", "timeout");
                (
                    false,
                    json!({ "error": format!("timed out after {} ms", limit.as_millis()) }),
                )
            }
        };
        if let Some(target) = self.agent.tool_latency_target
            && duration_us > target.as_micros() as u64
        {
            self.notice(
                "latency_target_missed",
                &call.name,
                format!(
                    "the call took {} ms; the target is {} ms",
                    duration_us / 1000,
                    target.as_millis()
                ),
                Some(call.id.clone()),
            )
            .await?;
        }
        for notice in ctx.notices.take() {
            self.record(Event::Notice {
                kind: notice.kind,
                subject: notice.subject,
                detail: notice.detail,
                call_id: Some(call.id.clone()),
            })
            .await?;
        }
        self.record(Event::ToolOutcome {
            call_id: call.id,
            ok,
            output,
            duration_us,
        })
        .await
    }
}

fn error_type(error: &rein_model::ProviderError) -> &'static str {
    use rein_model::ProviderError as E;
    match error {
        E::RateLimited { .. } => "rate_limited",
        E::Server { .. } => "server_error",
        E::Timeout { .. } => "timeout",
        E::Rejected { .. } => "rejected",
        E::Malformed { .. } => "malformed_response",
        E::Transport { .. } => "transport",
        E::Script(_) => "script",
    }
}

/// How long to wait before try `attempt + 1`: what the provider asked for if it did, otherwise
/// exponential backoff from 250 ms with ±25% jitter; never more than `max`. The jitter is derived
/// from the run, step and attempt, so concurrent runs spread out while each run stays replayable.
pub(crate) fn backoff(
    run_id: &str,
    step: u32,
    attempt: u32,
    asked: Option<Duration>,
    max: Duration,
) -> Duration {
    if let Some(asked) = asked {
        return asked.min(max);
    }
    let base = 250u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run_id
        .bytes()
        .chain(step.to_le_bytes())
        .chain(attempt.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let jitter = (h % 501) as i64 - 250; // -250..=250 per mille of a quarter
    let ms = (base as i64 + base as i64 * jitter / 1000).max(1) as u64;
    Duration::from_millis(ms).min(max)
}

/// The event with every secret value replaced by its name.
fn redact(redactor: &rein_core::secrets::Redactor, event: Event) -> Event {
    let Ok(mut value) = serde_json::to_value(&event) else {
        return event;
    };
    redactor.json(&mut value);
    serde_json::from_value(value).unwrap_or(event)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_honours_retry_after_grows_and_is_capped() {
        let max = Duration::from_secs(10);
        assert_eq!(
            backoff("r", 1, 1, Some(Duration::from_secs(7)), max),
            Duration::from_secs(7)
        );
        assert_eq!(backoff("r", 1, 1, Some(Duration::from_secs(70)), max), max);
        let waits: Vec<Duration> = (1..=4).map(|a| backoff("r", 1, a, None, max)).collect();
        for (i, w) in waits.iter().enumerate() {
            let base = 250u64 << i;
            assert!(
                w.as_millis() as u64 >= base * 3 / 4 && w.as_millis() as u64 <= base * 5 / 4,
                "{w:?} for attempt {}",
                i + 1
            );
        }
        assert_eq!(backoff("r", 1, 30, None, max), max);
        // Same inputs, same wait; other runs spread out.
        assert_eq!(backoff("r", 1, 2, None, max), backoff("r", 1, 2, None, max));
        let spread: std::collections::BTreeSet<Duration> = (0..20)
            .map(|i| backoff(&format!("run{i}"), 1, 2, None, max))
            .collect();
        assert!(spread.len() > 5);
    }
}
