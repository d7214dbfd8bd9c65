//! The gate: Cedar policies that judge every tool call, model call and delegation before it
//! happens.
//!
//! The request model, published by `rein schema policy`: the principal is `Agent::"<name>"`; each
//! tool is an action of its own, named after the tool and a member of the `call_tool` action
//! group, so that `action in Action::"call_tool"` covers every tool while `action ==
//! Action::"refunds.issue"` gives typed access to that tool's arguments in `context.args`; the
//! resource is `Tool::"<name>"` (in its `ToolGroup`s, with attributes `sink`, `risk`, `idempotent`
//! and `labels`). Model calls are `use_model` on `Model::"<name>"`, delegations `delegate` on
//! `Agent::"<child>"`. Every context has `user`, `tenant`, `task`, `labels` (what the run has
//! read so far) and `approval` (`granted`, `by`).
//!
//! Default deny; forbid wins; a permit annotated `@ask("why")` turns allow into ask. Policy files
//! carry examples in comments (`// example: ask refunds.issue {"amount": 250.0}`) that must hold
//! when the policies load.

mod context;
mod examples;
mod load;
mod schema;

use std::collections::HashMap;
use std::path::PathBuf;

use cedar_policy::{
    Authorizer, Context, Entities, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint,
    Request, RestrictedExpression,
};
use rein_core::gate::{Effect, Matched, compose};
use rein_core::{Decision, Verdict};
use serde_json::{Value, json};

pub use context::{AnswerFacts, DataSets, GrantFacts, RequestFacts, answer_facts, arg_facts};
pub use examples::{Scenario, Target};
pub use schema::{CedarType, ToolFacts, cedar_type, schema_text};

/// What the gate knows about the agent it guards.
#[derive(Debug, Clone, Default)]
pub struct GateSetup {
    /// The agent's name.
    pub agent: String,
    /// The agents above it (for a sub-agent, its parent and theirs).
    pub parents: Vec<String>,
    /// Its tools.
    pub tools: Vec<ToolFacts>,
    /// The models it may be configured with.
    pub models: Vec<String>,
    /// The agents it can delegate to.
    pub delegates: Vec<String>,
    /// The names of its policy data sets (`context.data.<name>`): data files and trusted tools'
    /// outputs.
    pub data: Vec<String>,
}

/// One problem in the policies, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The file.
    pub file: PathBuf,
    /// Line and column, when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some((l, c)) => write!(f, "{}:{l}:{c}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Everything wrong with a set of policies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<PolicyProblem>);

/// A policy file's text.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// Where it came from.
    pub file: PathBuf,
    /// Its text.
    pub text: String,
}

struct PolicyMeta {
    effect: Effect,
    ask: Option<String>,
    reason: Option<String>,
}

/// What a request about one target (a tool, a model, a sub-agent) needs, prepared once: its
/// action and resource, and only the policies whose scope can match them.
struct TargetSlice {
    action: EntityUid,
    resource: EntityUid,
    args_type: Option<CedarType>,
    kinds: schema::ArgKinds,
    /// Which costlier context attributes its policies read.
    uses: context::Uses,
    policies: PolicySet,
    /// The decision for the gate's own agent when none of the policies has a `when` or
    /// `unless` clause: it cannot depend on the request's context, so it is made once, when the
    /// policies load, and every request of the agent gets it without building a context.
    constant: Option<Decision>,
}

/// rein's own permit on answers (the operator's forbids and `@ask` permits still decide).
const ANSWERS_ARE_RETURNED: &str = "permit(principal, action == Action::\"respond\", resource);";
const ANSWERS_ARE_RETURNED_ID: &str = "rein:answers-are-returned";

/// Loaded, validated policies for one agent, ready to judge.
pub struct Gate {
    entities: Entities,
    authorizer: Authorizer,
    meta: HashMap<PolicyId, PolicyMeta>,
    principal: EntityUid,
    tools: HashMap<String, TargetSlice>,
    models: HashMap<String, TargetSlice>,
    delegates: HashMap<String, TargetSlice>,
    /// `respond` on `Answer::"final"`: judging the text a run returns.
    respond: TargetSlice,
    /// The agent's data set names, for `context.data`.
    data: Vec<String>,
    schema_text: String,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("principal", &self.principal)
            .field("policies", &self.meta.len())
            .finish()
    }
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let literal = format!("{kind}::{}", json!(id));
    literal
        .parse()
        .map_err(|e| format!("`{literal}` is not a valid entity id: {e}"))
}

impl Gate {
    /// The decision made when the policies loaded, if `target`'s cannot depend on the request.
    fn constant(&self, principal: &EntityUid, target: &TargetSlice) -> Option<Decision> {
        if *principal != self.principal {
            return None;
        }
        target.constant.clone()
    }

    /// The Cedar schema the policies were validated against.
    pub fn schema_text(&self) -> &str {
        &self.schema_text
    }

    /// How many of the operator's policies are loaded (rein's own permit on answers is not
    /// counted).
    pub fn policy_count(&self) -> usize {
        self.meta
            .keys()
            .filter(|id| id.to_string() != ANSWERS_ARE_RETURNED_ID)
            .count()
    }

    /// Judges a tool call with already schema-checked arguments.
    pub fn judge_tool(&self, tool: &str, args: &Value, facts: &RequestFacts) -> Decision {
        self.judge_tool_for(&self.principal, tool, args, facts)
    }

    /// Whether the policies deny `tool` whatever its arguments and the run: no permit's scope
    /// can match it, or a forbid's scope matches it with no condition. Such tools are left out
    /// of the model's tool list (every call is still judged).
    pub fn denied_outright(&self, tool: &str) -> bool {
        let Some(target) = self.tools.get(tool) else {
            return true;
        };
        let applies = |p: &Policy| match p.principal_constraint() {
            PrincipalConstraint::Eq(e) => e == self.principal,
            PrincipalConstraint::Is(t) => &t == self.principal.type_name(),
            PrincipalConstraint::IsIn(t, _) => &t == self.principal.type_name(),
            PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
        };
        let mut permits = target
            .policies
            .policies()
            .filter(|p| applies(p) && p.effect() == cedar_policy::Effect::Permit);
        let unconditional_forbid = target.policies.policies().any(|p| {
            applies(p)
                && p.effect() == cedar_policy::Effect::Forbid
                && !p.has_non_scope_constraint()
        });
        permits.next().is_none() || unconditional_forbid
    }

    /// Judges a tool call made by a sub-agent, `principal`, with this (the parent's) policies:
    /// the parent's grant that bounds what the child may do.
    pub fn judge_tool_as(
        &self,
        principal: &str,
        tool: &str,
        args: &Value,
        facts: &RequestFacts,
    ) -> Decision {
        match uid("Agent", principal) {
            Ok(p) => self.judge_tool_for(&p, tool, args, facts),
            Err(e) => deny(e),
        }
    }

    fn judge_tool_for(
        &self,
        principal: &EntityUid,
        tool: &str,
        args: &Value,
        facts: &RequestFacts,
    ) -> Decision {
        let Some(target) = self.tools.get(tool) else {
            return deny(format!("`{tool}` is not one of this agent's tools"));
        };
        let args =
            match target
                .args_type
                .as_ref()
                .map(|t| schema::cedar_expr(t, args))
            {
                Some(Some(v)) => v,
                Some(None) => return deny(
                    "the arguments cannot be expressed for the policies (a number out of range?)"
                        .into(),
                ),
                None => match RestrictedExpression::new_record(Vec::new()) {
                    Ok(empty) => empty,
                    Err(e) => return deny(format!("the arguments cannot be expressed: {e}")),
                },
            };
        if let Some(decided) = self.constant(principal, target) {
            return decided;
        }
        let mut context = context::base(facts);
        context.push(("args".into(), args));
        let uses = target.uses;
        let extras = (|| -> Result<Vec<(String, RestrictedExpression)>, String> {
            let mut extras = Vec::with_capacity(5);
            if uses.from {
                extras.push(("from".into(), context::from(&target.kinds.all, facts)?));
            }
            if uses.facts {
                extras.push((
                    "facts".into(),
                    context::facts_of(&target.kinds.strings, facts)?,
                ));
            }
            if uses.counters {
                extras.push((
                    "counters".into(),
                    context::counters(&target.kinds.numbers, facts)?,
                ));
            }
            if uses.grants {
                extras.push(("grants".into(), context::grants(&facts.grants)?));
            }
            if uses.data {
                extras.push(("data".into(), context::data(&self.data, facts)?));
            }
            Ok(extras)
        })();
        match extras {
            Ok(extras) => context.extend(extras),
            Err(e) => return deny(format!("the request cannot be expressed: {e}")),
        }
        self.judge(principal, target, context)
    }

    /// Judges text the run returns to the user (the `respond` action). Answers are returned
    /// unless a forbid or an `@ask` permit matches.
    pub fn judge_answer(&self, answer: &AnswerFacts, facts: &RequestFacts) -> Decision {
        if let Some(decided) = self.constant(&self.principal, &self.respond) {
            return decided;
        }
        let mut context = context::base(facts);
        let uses = self.respond.uses;
        let extras = (|| -> Result<Vec<(String, RestrictedExpression)>, String> {
            let mut extras = Vec::with_capacity(3);
            if uses.answer {
                extras.push(("answer".into(), context::answer(answer)?));
            }
            if uses.grants {
                extras.push(("grants".into(), context::grants(&facts.grants)?));
            }
            if uses.data {
                extras.push(("data".into(), context::data(&self.data, facts)?));
            }
            Ok(extras)
        })();
        match extras {
            Ok(extras) => context.extend(extras),
            Err(e) => return deny(format!("the answer cannot be expressed: {e}")),
        }
        self.judge(&self.principal, &self.respond, context)
    }

    /// The top-level arguments of a tool that are strings or lists of strings (those
    /// `context.facts` describes).
    pub fn string_args(&self, tool: &str) -> &[String] {
        self.tools
            .get(tool)
            .map(|t| t.kinds.strings.as_slice())
            .unwrap_or_default()
    }

    /// Judges a model call. An ask from the policies counts as deny: a model call cannot wait.
    pub fn judge_model(&self, model: &str, facts: &RequestFacts) -> Decision {
        self.judge_model_for(&self.principal, model, facts)
    }

    /// Judges a sub-agent's model call with this (the parent's) policies.
    pub fn judge_model_as(&self, principal: &str, model: &str, facts: &RequestFacts) -> Decision {
        match uid("Agent", principal) {
            Ok(p) => self.judge_model_for(&p, model, facts),
            Err(e) => deny(e),
        }
    }

    fn judge_model_for(
        &self,
        principal: &EntityUid,
        model: &str,
        facts: &RequestFacts,
    ) -> Decision {
        let Some(target) = self.models.get(model) else {
            return deny(format!(
                "model `{model}` is not one this agent is configured with"
            ));
        };
        let mut decision = match self.constant(principal, target) {
            Some(decided) => decided,
            None => self.judge(principal, target, context::base(facts)),
        };
        if decision.verdict == Verdict::Ask {
            decision.verdict = Verdict::Deny;
            decision
                .reasons
                .push("an ask policy matched a model call, which cannot wait for approval".into());
        }
        decision
    }

    /// Judges a delegation of `task` to the agent `child`.
    pub fn judge_delegate(&self, child: &str, child_task: &str, facts: &RequestFacts) -> Decision {
        let Some(target) = self.delegates.get(child) else {
            return deny(format!("`{child}` is not one of this agent's sub-agents"));
        };
        if let Some(decided) = self.constant(&self.principal, target) {
            return decided;
        }
        let mut context = context::base(facts);
        let args = RestrictedExpression::new_record([(
            "task".to_owned(),
            RestrictedExpression::new_string(child_task.to_owned()),
        )]);
        match args {
            Ok(args) => context.push(("args".into(), args)),
            Err(e) => return deny(format!("the delegation cannot be expressed: {e}")),
        }
        self.judge(&self.principal, target, context)
    }

    fn judge(
        &self,
        principal: &EntityUid,
        target: &TargetSlice,
        context: Vec<(String, RestrictedExpression)>,
    ) -> Decision {
        let context = match Context::from_pairs(context) {
            Ok(c) => c,
            Err(e) => return deny(format!("the request cannot be expressed: {e}")),
        };
        let request = match Request::new(
            principal.clone(),
            target.action.clone(),
            target.resource.clone(),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return deny(format!("the request is not valid: {e}")),
        };
        let response = self
            .authorizer
            .is_authorized(&request, &target.policies, &self.entities);
        let matched: Vec<Matched> = response
            .diagnostics()
            .reason()
            .filter_map(|id| {
                self.meta.get(id).map(|m| Matched {
                    id: id.to_string(),
                    effect: m.effect,
                    ask: m.ask.clone(),
                    reason: m.reason.clone(),
                })
            })
            .collect();
        let failed: Vec<(String, Effect)> = response
            .diagnostics()
            .errors()
            .map(|e| {
                let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
                let id = e.policy_id();
                (
                    id.to_string(),
                    self.meta
                        .get(id)
                        .map(|m| m.effect)
                        .unwrap_or(Effect::Forbid),
                )
            })
            .collect();
        compose(&matched, &failed)
    }
}

fn deny(reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        policies: vec![],
        reasons: vec![reason],
    }
}
