//! Driving one run: ask the core what to do, do it, record what happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rein_core::gate::within_parent;
use rein_core::labels::{UNTRUSTED, UNTRUSTED_NOTICE};
use rein_core::{
    Action, Decision, EndState, Event, RunStarted, RunState, StoredEvent, ToolCall, ToolSpec,
    Verdict,
};
use rein_model::ChatRequest;
use rein_policy::RequestFacts;
use rein_store::Commit;
use rein_tools::ToolContext;
use serde_json::json;
use tracing::{Instrument, field};

use crate::{Agent, Engine, EngineError, Observer, RunReport, RunRequest};

/// Extra time the engine allows a tool beyond its own timeout before giving up on it (tools stop
/// themselves at their timeout; this is the backstop for one that does not).
const TOOL_TIMEOUT_GRACE: Duration = Duration::from_secs(2);

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
    /// Model-call decisions of this run, by the labels in play when they were made.
    model_decisions: Vec<(Vec<String>, Decision)>,
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

    async fn call_model(&mut self, step: u32) -> Result<(), EngineError> {
        let provider = &self.agent.provider;
        let instructions = self
            .state
            .started()
            .map(|s| s.instructions.clone())
            .unwrap_or_default();
        // The decision depends on the run's fixed facts and the labels in play, and the gate is
        // deterministic, so it is computed once per label set (it is still recorded every step).
        let labels = self.state.labels().to_vec();
        let decision = match self.model_decisions.iter().find(|(l, _)| *l == labels) {
            Some((_, d)) => d.clone(),
            None => {
                let facts = self.facts(None);
                let mut d = self.agent.gate.judge_model(provider.model(), &facts);
                if let Some(parent) = &self.agent.parent_gate {
                    d = within_parent(
                        d,
                        parent.judge_model_as(&self.agent.name, provider.model(), &facts),
                    );
                }
                self.model_decisions.push((labels, d.clone()));
                d
            }
        };
        self.record(Event::ModelJudged {
            step,
            model: provider.model().to_owned(),
            verdict: decision.verdict,
            policies: decision.policies.clone(),
            reasons: decision.reasons.clone(),
        })
        .await?;
        if decision.verdict != Verdict::Allow {
            return self
                .record(Event::RunEnded {
                    status: EndState::Denied,
                    output: self.state.last_text().map(str::to_owned),
                    reason: Some(format!(
                        "the policies do not allow model `{}`: {}",
                        provider.model(),
                        decision.reasons.join("; ")
                    )),
                    call_id: None,
                })
                .await;
        }
        for attempt in 1..=self.agent.max_attempts {
            self.record(Event::ModelRequested {
                step,
                attempt,
                model: provider.model().to_owned(),
                messages: self.state.messages().len() as u32,
                tools: self.tool_specs.len() as u32,
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
                    system: &instructions,
                    messages: self.state.messages(),
                    tools: &self.tool_specs,
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
                    return self
                        .record(Event::ModelReplied {
                            step,
                            text: reply.text,
                            tool_calls: reply.tool_calls,
                            usage: reply.usage,
                            latency_us,
                            stop_reason: reply.stop_reason,
                        })
                        .await;
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
                        None => {
                            let tries = if attempt == 1 {
                                "1 try".to_owned()
                            } else {
                                format!("{attempt} tries")
                            };
                            return self
                                .record(Event::RunEnded {
                                    status: EndState::Failed,
                                    output: self.state.last_text().map(str::to_owned),
                                    reason: Some(format!("the model call for step {step} failed after {tries}: {error}")),
                                    call_id: None,
                                })
                                .await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, call: ToolCall) -> Result<(), EngineError> {
        let step = self.state.steps();
        match self.agent.tools.check(
            &call.name,
            &call.arguments,
            call.invalid_arguments.as_deref(),
        ) {
            Err(rejection) => {
                self.record(Event::ToolRejected {
                    step,
                    call_id: call.id,
                    tool: call.name,
                    reason: rejection.to_string(),
                })
                .await
            }
            Ok(_) => {
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
            user: started.map(|s| s.user.clone()).unwrap_or_default(),
            tenant: started.map(|s| s.tenant.clone()).unwrap_or_default(),
            task: started.map(|s| s.task.clone()).unwrap_or_default(),
            labels: self.state.labels().to_vec(),
            approved_by,
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
                tokio::time::timeout(limit, tool.call(&ctx, call.arguments))
                    .instrument(span.clone())
                    .await
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
