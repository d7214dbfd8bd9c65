//! The tool step: a proposed call is checked (schema, budget, breaker), judged, and then run,
//! held for a person, or left denied; a run call's outcome is recorded, or, for a tool that is not
//! idempotent and stopped without a known outcome, the call is recorded as in doubt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rein_core::gate::within_parent;
use rein_core::{Decision, EndState, Event, ToolCall, Verdict};
use rein_tools::ToolContext;
use serde_json::json;
use tracing::{Instrument, field};

use crate::driver::Driver;
use crate::driver::model_call::backoff;
use crate::resilience::{Admission, Transition};
use crate::{Agent, EngineError, RunRequest};

/// Extra time the engine allows a tool beyond its own timeout before giving up on it (tools stop
/// themselves at their timeout; this is the backstop for one that does not).
const TOOL_TIMEOUT_GRACE: Duration = Duration::from_secs(2);

impl Driver<'_> {
    pub(super) async fn dispatch(&mut self, call: ToolCall) -> Result<(), EngineError> {
        if self.refuse_whole_answer().await? {
            return Ok(());
        }
        let step = self.state.steps();
        let checked = match self.refused_unjudged(&call) {
            Some(why) => Err(why),
            None => Ok(()),
        };
        let checked = checked.and_then(|()| match self.agent.max_tool_calls {
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

    /// Why `call` is refused before it is judged, if it is: a tool this gateway request may not
    /// call, or arguments that do not fit the tool's schema.
    pub(super) fn refused_unjudged(&self, call: &ToolCall) -> Option<String> {
        self.gateway_refusal(&call.name).or_else(|| {
            self.agent
                .tools
                .check(
                    &call.name,
                    &call.arguments,
                    call.invalid_arguments.as_deref(),
                )
                .err()
                .map(|r| r.to_string())
        })
    }

    /// Judges a call that passed the checks, then runs it, asks for approval, or leaves it denied.
    async fn dispatch_checked(&mut self, call: ToolCall) -> Result<(), EngineError> {
        self.refresh_data().await?;
        let (decision, provenance) = self.judge_tool(&call, None);
        self.record_judgement(&call, &decision, None, provenance.clone())
            .await?;
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
                    provenance,
                })
                .await
            }
        }
    }

    /// A person approved the call: judge it again knowing who approved (a forbid may require a
    /// particular approver), then run it unless that judgement denies. The approval settles
    /// the policies' ask, so the judgement is recorded as `allow`, with the approver.
    pub(super) async fn run_approved(
        &mut self,
        call: ToolCall,
        approved_by: String,
    ) -> Result<(), EngineError> {
        self.refresh_data().await?;
        let (mut decision, provenance) = self.judge_tool(&call, Some(approved_by.clone()));
        if decision.verdict == Verdict::Ask {
            decision.verdict = Verdict::Allow;
        }
        self.record_judgement(&call, &decision, Some(approved_by), provenance)
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
            // A sub-agent spends from its parent's token's budgets too.
            token: started.and_then(|s| s.token.clone()),
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
            // The parent's grants bound the sub-agent through its parent's gate; the sub-agent
            // plans its own, if it has a planner.
            grants: None,
        };
        let report = match self.engine.run_child(child, request, self.observer).await {
            Ok(report) => report,
            Err(e @ (EngineError::Interrupted { .. } | EngineError::Stopped { .. })) => {
                return Err(e);
            }
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

    pub(super) async fn record_judgement(
        &mut self,
        call: &ToolCall,
        decision: &Decision,
        approved_by: Option<String>,
        provenance: std::collections::BTreeMap<String, Vec<String>>,
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
            provenance,
        })
        .await
    }

    /// The gate's decision on a call, with where its arguments' values came from: a delegation
    /// is judged as `delegate` on the sub-agent; a sub-agent's own calls must also be allowed by
    /// its parent's policies; and once untrusted data is in a run with grants, a call none of
    /// them covers is denied.
    pub(super) fn judge_tool(
        &self,
        call: &ToolCall,
        approved_by: Option<String>,
    ) -> (Decision, std::collections::BTreeMap<String, Vec<String>>) {
        let span = tracing::info_span!(
            "gate",
            otel.name = %format!("gate {}", call.name),
            rein.gate.action = "call_tool",
            gen_ai.tool.name = %call.name,
            gen_ai.tool.call.id = %call.id,
            gen_ai.conversation.id = %self.run_id,
            rein.gate.verdict = field::Empty,
        );
        let _entered = span.enter();
        let facts = self.call_facts(call, approved_by);
        let decision = if let Some(child) = self.agent.delegates.get(&call.name) {
            let task = call
                .arguments
                .get("task")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            self.agent.gate.judge_delegate(&child.name, task, &facts)
        } else {
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
        };
        let decision = self.apply_grants(&facts, decision);
        span.record("rein.gate.verdict", decision.verdict.as_str());
        (decision, facts.from)
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

    pub(super) async fn execute(
        &mut self,
        call: ToolCall,
        attempt: u32,
    ) -> Result<(), EngineError> {
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
        // A gateway run resumed without a request (after a crash) has nobody to hand a call to.
        if self.runs_at_client(&call.name) && !self.turn {
            return self
                .record(Event::RunEnded {
                    status: EndState::Failed,
                    output: None,
                    reason: Some(format!(
                        "the gateway request was interrupted before call {} reached its client",
                        call.id
                    )),
                    call_id: Some(call.id),
                })
                .await;
        }
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
            field_labels: self
                .agent
                .output_fields
                .get(&call.name)
                .cloned()
                .unwrap_or_default(),
            data: self.agent.data_feeds.get(&call.name).cloned(),
        })
        .await?;
        if self.runs_at_client(&call.name) {
            return self.hand_off(call.id).await;
        }
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
        if self.engine.fault_after_effect(self.effects) {
            self.stop_for_fault().await?;
        }
        // A call that timed out or was killed may have had its effect. For a tool that is not
        // idempotent that is in doubt, not failed, unless its owner says a timeout means it did
        // not happen.
        let may_have_happened = match &result {
            Ok(Ok(_)) => false,
            Ok(Err(error)) => error.outcome_unknown(),
            Err(_) => true,
        };
        let timeout_is_failure = self
            .agent
            .resilience
            .get(&call.name)
            .is_some_and(|r| r.timeout_is_failure);
        let in_doubt = may_have_happened && !manifest.idempotent && !timeout_is_failure;
        let mut returned_labels = std::collections::BTreeMap::new();
        let (ok, output) = match result {
            Ok(Ok(mut value)) => {
                returned_labels = rein_core::provenance::take_returned_labels(&mut value);
                (true, value)
            }
            Ok(Err(error)) => {
                span.record(
                    "error.type",
                    if in_doubt { "in_doubt" } else { "tool_error" },
                );
                (false, json!({ "error": error.to_string() }))
            }
            Err(_) => {
                span.record("error.type", if in_doubt { "in_doubt" } else { "timeout" });
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
        if in_doubt {
            let reason = output
                .get("error")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("it stopped without an outcome")
                .to_owned();
            return self
                .record(Event::ToolInDoubt {
                    call_id: call.id,
                    reason,
                    duration_us,
                })
                .await;
        }
        self.record(Event::ToolOutcome {
            call_id: call.id,
            ok,
            output,
            duration_us,
            labels: returned_labels,
        })
        .await
    }
}
