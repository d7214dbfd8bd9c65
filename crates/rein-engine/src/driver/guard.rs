//! What holds a compromised model: the facts a tool call is judged with (where each argument's
//! values came from, what rein computes about them, the tool's counters, the run's grants and
//! the policy data), the rule that a call no grant covers is denied once untrusted data is in
//! the run, the planning call that fixes grants from the instructions and task alone, and the
//! text the run returns judged as the `respond` action.

use std::collections::BTreeMap;
use std::sync::Arc;

use rein_config::StripLinks;
use rein_core::budget::Spend;
use rein_core::grants::{self, Grant};
use rein_core::labels::UNTRUSTED;
use rein_core::{Decision, EndState, Event, Message, ToolCall, Verdict};
use rein_model::ChatRequest;
use rein_policy::{GrantFacts, RequestFacts};
use serde_json::json;

use crate::EngineError;
use crate::driver::Driver;
use crate::driver::budget::Hold;
use crate::driver::model_step::Prompt;
use crate::policy_data::Loaded;

/// The id under which rein's own grants rule appears in decisions.
pub(crate) const GRANTS_RULE: &str = "rein:grants";

/// The most a planner may answer, in tokens.
const PLANNER_OUTPUT_TOKENS: u64 = 1024;

impl Driver<'_> {
    /// The policy data as it is now; a file that changed is read again and the change noted.
    pub(super) async fn refresh_data(&mut self) -> Result<Arc<Loaded>, EngineError> {
        let (loaded, changes) = self.agent.policy_data.current();
        for (name, digest) in changes.reloaded {
            self.notice(
                "policy_data_reloaded",
                &name,
                format!("its file changed; decisions from now on use it (sha256 {digest})"),
                None,
            )
            .await?;
        }
        for (name, why) in changes.failed {
            self.notice(
                "policy_data_invalid",
                &name,
                format!("{why}; the last good content stays in use"),
                None,
            )
            .await?;
        }
        self.data = loaded.clone();
        Ok(loaded)
    }

    /// The run's grants as the policies see them, for a call of `tool` with `args`.
    fn grant_facts(&self, tool: &str, args: &serde_json::Value, calls: u32) -> GrantFacts {
        match self.state.grants() {
            None => GrantFacts::default(),
            Some(list) => {
                let mut tools: Vec<String> = list.iter().map(|g| g.tool.clone()).collect();
                tools.sort();
                tools.dedup();
                GrantFacts {
                    fixed: true,
                    covered: grants::covering(list, tool, args, calls).is_some(),
                    tools,
                }
            }
        }
    }

    /// Policy data: the operator's files and what trusted tools returned in this run (the
    /// files' sets are shared as they are when no tool has added to them).
    fn data_sets(&self) -> rein_policy::DataSets {
        if self.state.data().is_empty() {
            return self.data.sets.clone();
        }
        let mut sets = (*self.data.sets).clone();
        for (name, values) in self.state.data() {
            sets.entry(name.clone())
                .or_default()
                .extend(values.iter().cloned());
        }
        Arc::new(sets)
    }

    /// Everything the gate is told about a tool call.
    pub(super) fn call_facts(&self, call: &ToolCall, approved_by: Option<String>) -> RequestFacts {
        let mut facts = self.facts(approved_by);
        let sources = self.state.sources();
        facts.from =
            rein_core::provenance::of_args_in(&call.arguments, &[sources, &self.data.sources]);
        facts.facts = rein_policy::arg_facts(
            self.agent.gate.string_args(&call.name),
            &call.arguments,
            &self.workspace.display().to_string(),
            sources,
        );
        facts.counter = self.state.counter(&call.name, &call.id);
        // Judged ahead of dispatch (`refuse_whole_answer`), the answer's earlier calls count as
        // they will once dispatched: started ones everywhere, held ones against their tool.
        for (earlier, started) in &self.ahead {
            if earlier.name == call.name {
                facts.counter.add(&earlier.arguments);
            }
            facts.run_calls += u32::from(*started);
        }
        facts.grants = self.grant_facts(&call.name, &call.arguments, facts.counter.calls);
        facts.data = self.data_sets();
        facts
    }

    /// Once untrusted data is in a run whose grants are fixed, a call none of them covers is
    /// denied, whatever the policies say.
    pub(super) fn apply_grants(&self, facts: &RequestFacts, decision: Decision) -> Decision {
        let untrusted = self.state.labels().contains(UNTRUSTED);
        if !facts.grants.fixed || facts.grants.covered || !untrusted {
            return decision;
        }
        if decision.verdict == Verdict::Deny {
            return decision;
        }
        Decision {
            verdict: Verdict::Deny,
            policies: vec![GRANTS_RULE.to_owned()],
            reasons: vec![format!(
                "untrusted data is in the run and none of its grants covers this call (they cover: {})",
                if facts.grants.tools.is_empty() {
                    "nothing".to_owned()
                } else {
                    facts.grants.tools.join(", ")
                }
            )],
        }
    }

    /// The grants for a run that has none yet, from the agent's planner: a model call that sees
    /// the instructions, the task and the tools, never a tool's output. A planner that fails or
    /// answers something that is not grants fixes none (every call outside them is denied once
    /// untrusted data arrives), and the reason is noted.
    pub(super) async fn plan_grants(&mut self) -> Result<(), EngineError> {
        let Some(planner) = self.agent.planner.clone() else {
            return Ok(());
        };
        if self.state.grants().is_some()
            || self.state.tool_executions() > 0
            || self.state.ended().is_some()
        {
            return Ok(());
        }
        let started = self.state.started();
        let task = started.map(|s| s.task.clone()).unwrap_or_default();
        let instructions = started.map(|s| s.instructions.clone()).unwrap_or_default();
        let mut system = format!(
            "{instructions}\n\nrein: you are planning, not acting. From the user's task alone, list the tool calls it needs as grants: the tools, and for each argument whose value the task states, that value. Answer with JSON only: {{\"grants\": [{{\"tool\": \"<name>\", \"args\": {{\"<argument>\": <value> or {{\"one_of\": [...]}} or {{\"max\": <number>}} or {{\"min\": <number>}} or {{\"prefix\": \"...\"}} or {{\"any\": true}}}}, \"max_calls\": <number>}}]}}. Grant nothing the task does not ask for. The tools:"
        );
        for spec in &self.tool_specs {
            system.push_str(&format!(
                "\n- {}: {} Arguments: {}",
                spec.name, spec.description, spec.parameters
            ));
        }
        let messages = vec![Message::User { text: task }];
        let model = planner.model().to_owned();
        let (estimate, price) = self.estimate(
            planner.as_ref(),
            &system,
            Prompt::Messages(&messages),
            &[],
            PLANNER_OUTPUT_TOKENS,
        );
        let decision = self.judge_model(0, &model).await?;
        let mut why = None;
        let mut fixed: Vec<Grant> = vec![];
        let mut usage = rein_core::Usage::default();
        let mut cost_micros = 0;
        if decision.verdict != Verdict::Allow {
            why = Some(format!(
                "the policies do not allow the planner model: {}",
                decision.reasons.join("; ")
            ));
        } else {
            let lines = self.budget_lines();
            match self
                .hold(&lines, estimate, Spend::default(), 0, false)
                .await?
            {
                Hold::Refused(reason) => why = Some(format!("no budget for planning: {reason}")),
                Hold::Held(held) => {
                    let request = ChatRequest {
                        system: &system,
                        messages: &messages,
                        tools: &[],
                        settings: None,
                    };
                    let reply = planner.complete(&request).await;
                    let mut actual = Spend::default();
                    match reply {
                        Err(e) => why = Some(format!("the planner failed: {e}")),
                        Ok(reply) => {
                            usage = reply.usage;
                            cost_micros = price.map(|p| p.cost_micros(&reply.usage)).unwrap_or(0);
                            actual = Spend {
                                tokens: usage.input_tokens + usage.output_tokens,
                                cost_micros,
                            };
                            match grants::parse(reply.text.as_deref().unwrap_or_default()) {
                                Ok(list) => fixed = list,
                                Err(e) => {
                                    why = Some(format!("the planner's answer is not grants: {e}"))
                                }
                            }
                        }
                    }
                    self.settle(held, actual, &model).await?;
                }
            }
        }
        if let Some(why) = why {
            self.notice(
                "grants_not_planned",
                &model,
                format!("{why}; the run has no grants, so once untrusted data is in it every tool call is denied"),
                None,
            )
            .await?;
        }
        self.record(Event::GrantsFixed {
            grants: fixed,
            by: "planner".into(),
            model: Some(model),
            usage,
            cost_micros,
        })
        .await
    }

    /// Links to strip from text the run returns, and the text without them.
    fn strip_answer(&self, text: &str) -> (String, Vec<String>) {
        let sources = self.state.sources();
        let answer = &self.agent.answer;
        let carries = |url: &str| {
            let after_scheme = url.split_once(':').map_or(url, |(_, rest)| rest);
            sources.carries_tool_data(after_scheme)
        };
        let outside = |url: &str| {
            rein_core::facts::host_of(url)
                .is_none_or(|h| !rein_core::facts::host_allowed(&h, &answer.allow_hosts))
        };
        match answer.strip_links {
            StripLinks::None => (text.to_owned(), vec![]),
            StripLinks::CarryingData => rein_core::facts::strip_links(text, &carries),
            StripLinks::OutsideAllowlist => {
                rein_core::facts::strip_links(text, &|u| carries(u) || outside(u))
            }
            StripLinks::All => rein_core::facts::strip_links(text, &|_| true),
        }
    }

    /// Judges text the run returns as the `respond` action: links stripped as configured, then
    /// the policies. Returns the decision and the text as it would be returned.
    fn decide_answer(
        &self,
        text: &str,
        approved_by: Option<String>,
    ) -> (Decision, String, Vec<String>) {
        let span = tracing::info_span!(
            "gate",
            otel.name = "gate respond",
            rein.gate.action = "respond",
            gen_ai.conversation.id = %self.run_id,
        );
        let _entered = span.enter();
        let (clean, stripped) = self.strip_answer(text);
        let answer = rein_policy::answer_facts(&clean, self.state.sources());
        let mut facts = self.facts(approved_by.clone());
        facts.grants = match self.state.grants() {
            None => GrantFacts::default(),
            Some(_) => self.grant_facts("respond", &json!({}), 0),
        };
        facts.data = self.data_sets();
        let mut decision = self.agent.gate.judge_answer(&answer, &facts);
        if approved_by.is_some() && decision.verdict == Verdict::Ask {
            decision.verdict = Verdict::Allow;
        }
        (decision, clean, stripped)
    }

    /// The model answered without calls: judge its answer (again, after an approval).
    pub(super) async fn judge_answer(
        &mut self,
        step: u32,
        text: Option<String>,
        approved_by: Option<String>,
    ) -> Result<(), EngineError> {
        self.refresh_data().await?;
        let (decision, clean, stripped) =
            self.decide_answer(text.as_deref().unwrap_or_default(), approved_by.clone());
        let returned = text.is_some() && decision.verdict != Verdict::Deny;
        self.record(Event::AnswerJudged {
            step,
            verdict: decision.verdict,
            policies: decision.policies,
            reasons: decision.reasons,
            text: returned.then_some(clean),
            stripped,
            approved_by,
        })
        .await
    }

    /// The policies asked for a person to see the answer: request the approval.
    pub(super) async fn hold_answer(
        &mut self,
        step: u32,
        text: Option<String>,
    ) -> Result<(), EngineError> {
        let (decision, clean, _) = self.decide_answer(text.as_deref().unwrap_or_default(), None);
        let ttl = self.agent.approval_ttl.as_millis() as u64;
        let call_id = self
            .state
            .answer()
            .map(|a| a.call_id())
            .unwrap_or_else(|| format!("answer_{step}"));
        self.record(Event::ApprovalRequested {
            approval_id: uuid::Uuid::now_v7().simple().to_string(),
            call_id,
            tool: "respond".into(),
            args: json!({ "text": clean }),
            policies: decision.policies,
            reasons: decision.reasons,
            labels: self.state.labels().to_vec(),
            expires_at_ms: Some(self.engine.clock.now_ms().saturating_add(ttl)),
            provenance: BTreeMap::new(),
        })
        .await
    }

    /// A run ends with text the answer path did not judge (a partial output, the last thing
    /// the model said before a limit): it is judged as `respond` too, and withheld unless the
    /// policies allow it outright (nobody can approve it once the run has ended). Returns the
    /// judgement to record and the ending as it will be recorded.
    pub(super) fn judge_ending(&self, ending: Event) -> (Option<Event>, Event) {
        let Event::RunEnded {
            status,
            output: Some(output),
            reason,
            call_id,
        } = ending
        else {
            return (None, ending);
        };
        let released = self
            .state
            .answer()
            .is_some_and(|a| matches!(a.status, rein_core::state::AnswerStatus::Released(_)));
        if status == EndState::Completed && released {
            let ending = Event::RunEnded {
                status,
                output: Some(output),
                reason,
                call_id,
            };
            return (None, ending);
        }
        let (decision, clean, stripped) = self.decide_answer(&output, None);
        let allowed = decision.verdict == Verdict::Allow;
        let reason = if allowed {
            reason
        } else {
            Some(format!(
                "{}the output was withheld by the policies: {}",
                reason.map(|r| format!("{r}; ")).unwrap_or_default(),
                decision.reasons.join("; ")
            ))
        };
        let judged = Event::AnswerJudged {
            step: self.state.steps(),
            verdict: if allowed {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            policies: decision.policies,
            reasons: decision.reasons,
            text: allowed.then(|| clean.clone()),
            stripped,
            approved_by: None,
        };
        let ending = Event::RunEnded {
            status,
            output: allowed.then_some(clean),
            reason,
            call_id,
        };
        (Some(judged), ending)
    }
}
