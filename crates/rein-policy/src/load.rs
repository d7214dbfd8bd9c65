//! Loading a gate: reading `policies/*.cedar`, parsing and validating them against the agent's
//! schema (each problem named by file, line and column), checking their `// example:` lines, the
//! entities (the agent, its tools and groups, models, delegates), and the per-target policy slices
//! and the decisions fixed at load time.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use cedar_policy::{
    ActionConstraint, Authorizer, Entities, EntityUid, Policy, PolicyId, PolicySet,
    ResourceConstraint, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use rein_core::gate::Effect;
use serde_json::{Value, json};

use crate::schema::{cedar_type, schema_text};
use crate::{
    ANSWERS_ARE_RETURNED, ANSWERS_ARE_RETURNED_ID, Gate, GateSetup, PolicyErrors, PolicyMeta,
    PolicyProblem, PolicySource, TargetSlice, context, schema, uid,
};

pub(crate) fn problem(
    file: &Path,
    text: &str,
    offset: Option<usize>,
    message: String,
) -> PolicyProblem {
    PolicyProblem {
        file: file.to_owned(),
        position: offset.map(|o| rein_core::text::line_col(text, o)),
        message,
    }
}

/// The first labelled offset of a diagnostic, if it has one.
fn first_offset(d: &dyn Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut l| l.next()).map(|l| l.offset())
}

impl Gate {
    /// Reads `policies/*.cedar` under `agent_dir` (in name order) and loads them.
    pub fn load_dir(agent_dir: &Path, setup: &GateSetup) -> Result<Gate, PolicyErrors> {
        let dir = agent_dir.join("policies");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
                .collect(),
            Err(e) => {
                return Err(PolicyErrors(vec![PolicyProblem {
                    file: dir,
                    position: None,
                    message: format!(
                        "cannot read the policies folder ({e}); rein denies everything by default, so an agent needs \
                         policies/*.cedar (see `rein schema policy <agent-dir>`)"
                    ),
                }]));
            }
        };
        files.sort();
        let mut sources = Vec::new();
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => sources.push(PolicySource { file, text }),
                Err(e) => {
                    return Err(PolicyErrors(vec![PolicyProblem {
                        file,
                        position: None,
                        message: format!("cannot read it: {e}"),
                    }]));
                }
            }
        }
        if sources.is_empty() {
            return Err(PolicyErrors(vec![PolicyProblem {
                file: dir,
                position: None,
                message:
                    "holds no .cedar files; rein denies everything by default, so nothing could run"
                        .into(),
            }]));
        }
        Gate::from_sources(&sources, setup)
    }

    /// Loads policies from texts: parses, names, validates against the agent's schema, checks every
    /// entity they name exists, and checks the examples in their comments.
    pub fn from_sources(sources: &[PolicySource], setup: &GateSetup) -> Result<Gate, PolicyErrors> {
        let schema_src = schema_text(setup);
        let internal = |message: String| {
            PolicyErrors(vec![PolicyProblem {
                file: PathBuf::from("<schema>"),
                position: None,
                message,
            }])
        };
        let (schema, _) = Schema::from_cedarschema_str(&schema_src)
            .map_err(|e| internal(format!("rein built an invalid schema: {e}")))?;

        let mut problems = Vec::new();
        let mut policies = PolicySet::new();
        let mut meta = HashMap::new();
        let mut origin: HashMap<PolicyId, usize> = HashMap::new();
        for (index, source) in sources.iter().enumerate() {
            let parsed: PolicySet = match source.text.parse() {
                Ok(set) => set,
                Err(e) => {
                    let e: cedar_policy::ParseErrors = e;
                    for err in e.iter() {
                        problems.push(problem(
                            &source.file,
                            &source.text,
                            first_offset(err),
                            err.to_string(),
                        ));
                    }
                    continue;
                }
            };
            let stem = source
                .file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            for (n, policy) in parsed.policies().enumerate() {
                let name = policy
                    .annotation("id")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{stem}#{}", n + 1));
                let id = PolicyId::new(&name);
                if meta.contains_key(&id) {
                    problems.push(problem(
                        &source.file,
                        &source.text,
                        None,
                        format!("two policies are named `{name}`; @id values must be unique"),
                    ));
                    continue;
                }
                let effect = match policy.effect() {
                    cedar_policy::Effect::Permit => Effect::Permit,
                    cedar_policy::Effect::Forbid => Effect::Forbid,
                };
                let ask = policy.annotation("ask").map(str::to_owned);
                if ask.is_some() && effect == Effect::Forbid {
                    problems.push(problem(
                        &source.file,
                        &source.text,
                        None,
                        format!("policy `{name}`: @ask applies to permit policies only"),
                    ));
                }
                meta.insert(
                    id.clone(),
                    PolicyMeta {
                        effect,
                        ask,
                        reason: policy.annotation("reason").map(str::to_owned),
                    },
                );
                origin.insert(id.clone(), index);
                if let Err(e) = policies.add(policy.new_id(id)) {
                    problems.push(problem(&source.file, &source.text, None, e.to_string()));
                }
            }
        }
        if !problems.is_empty() {
            return Err(PolicyErrors(problems));
        }

        let validation = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        for err in validation.validation_errors() {
            let source = origin.get(err.policy_id()).map(|i| &sources[*i]);
            match source {
                Some(s) => problems.push(problem(
                    &s.file,
                    &s.text,
                    first_offset(err),
                    format!("policy `{}`: {err}", err.policy_id()),
                )),
                None => problems.push(PolicyProblem {
                    file: PathBuf::from("<policies>"),
                    position: None,
                    message: err.to_string(),
                }),
            }
        }
        // A warning such as "this policy can never apply" means the policy does not do what its
        // author meant; rein refuses it like an error.
        for warning in validation.validation_warnings() {
            let id = warning.policy_id();
            match origin.get(id).map(|i| &sources[*i]) {
                Some(s) => problems.push(problem(
                    &s.file,
                    &s.text,
                    first_offset(warning),
                    format!("policy `{id}`: {warning}"),
                )),
                None => problems.push(PolicyProblem {
                    file: PathBuf::from("<policies>"),
                    position: None,
                    message: warning.to_string(),
                }),
            }
        }
        problems.extend(unknown_entities(&policies, &origin, sources, setup));
        if !problems.is_empty() {
            return Err(PolicyErrors(problems));
        }

        let entities = entities(setup, &schema).map_err(internal)?;
        let call_tool = uid("Action", "call_tool").map_err(internal)?;
        let mut tools = HashMap::new();
        for tool in &setup.tools {
            let action = uid("Action", &tool.name).map_err(internal)?;
            let resource = uid("Tool", &tool.name).map_err(internal)?;
            let groups = tool
                .groups
                .iter()
                .map(|g| uid("ToolGroup", g))
                .collect::<Result<Vec<_>, _>>()
                .map_err(internal)?;
            let policies = slice(
                &policies,
                &action,
                std::slice::from_ref(&call_tool),
                &resource,
                &groups,
            );
            tools.insert(
                tool.name.clone(),
                TargetSlice {
                    action,
                    resource,
                    args_type: cedar_type(&tool.args_schema),
                    kinds: schema::arg_kinds(&tool.args_schema),
                    uses: context::Uses::of(&policies),
                    policies,
                    constant: None,
                },
            );
        }
        let use_model = uid("Action", "use_model").map_err(internal)?;
        let mut models = HashMap::new();
        for model in &setup.models {
            let resource = uid("Model", model).map_err(internal)?;
            let policies = slice(&policies, &use_model, &[], &resource, &[]);
            models.insert(
                model.clone(),
                TargetSlice {
                    action: use_model.clone(),
                    resource,
                    args_type: None,
                    kinds: Default::default(),
                    uses: context::Uses::of(&policies),
                    policies,
                    constant: None,
                },
            );
        }
        let delegate = uid("Action", "delegate").map_err(internal)?;
        let this_agent = uid("Agent", &setup.agent).map_err(internal)?;
        let mut delegates = HashMap::new();
        for child in &setup.delegates {
            let resource = uid("Agent", child).map_err(internal)?;
            let policies = slice(
                &policies,
                &delegate,
                &[],
                &resource,
                std::slice::from_ref(&this_agent),
            );
            delegates.insert(
                child.clone(),
                TargetSlice {
                    action: delegate.clone(),
                    resource,
                    args_type: None,
                    kinds: Default::default(),
                    uses: context::Uses::of(&policies),
                    policies,
                    constant: None,
                },
            );
        }
        // Answers are returned unless a forbid or an @ask permit says otherwise: the respond
        // action carries a permit of rein's own beside the operator's policies.
        let respond_action = uid("Action", "respond").map_err(internal)?;
        let answer = uid("Answer", "final").map_err(internal)?;
        let mut respond_policies = slice(&policies, &respond_action, &[], &answer, &[]);
        let implicit: Policy = ANSWERS_ARE_RETURNED
            .parse()
            .map_err(|e| internal(format!("rein's own respond policy: {e}")))?;
        let implicit = implicit.new_id(PolicyId::new(ANSWERS_ARE_RETURNED_ID));
        respond_policies
            .add(implicit)
            .map_err(|e| internal(e.to_string()))?;
        meta.insert(
            PolicyId::new(ANSWERS_ARE_RETURNED_ID),
            PolicyMeta {
                effect: Effect::Permit,
                ask: None,
                reason: None,
            },
        );
        let mut gate = Gate {
            respond: TargetSlice {
                action: respond_action,
                resource: answer,
                args_type: None,
                kinds: Default::default(),
                uses: context::Uses::of(&respond_policies),
                policies: respond_policies,
                constant: None,
            },
            data: setup.data.clone(),
            principal: this_agent,
            entities,
            authorizer: Authorizer::new(),
            meta,
            tools,
            models,
            delegates,
            schema_text: schema_src,
        };
        gate.fix_constants();
        let example_problems = gate.check_examples(sources);
        if !example_problems.is_empty() {
            return Err(PolicyErrors(example_problems));
        }
        Ok(gate)
    }

    /// Makes the decisions that cannot depend on a request (see `TargetSlice::constant`).
    fn fix_constants(&mut self) {
        let decide = |gate: &Gate, target: &TargetSlice| {
            target
                .policies
                .policies()
                .all(|p| !p.has_non_scope_constraint())
                .then(|| gate.judge(&gate.principal, target, Vec::new()))
        };
        // Judging needs the gate but none of its targets: they are taken out while decided.
        let mut maps = [
            std::mem::take(&mut self.tools),
            std::mem::take(&mut self.models),
            std::mem::take(&mut self.delegates),
        ];
        for target in maps.iter_mut().flat_map(|m| m.values_mut()) {
            target.constant = decide(self, target);
        }
        [self.tools, self.models, self.delegates] = maps;
        self.respond.constant = decide(self, &self.respond);
    }
}

/// The policies whose scope can match requests for this action and resource: a policy whose
/// action or resource constraint excludes them can never apply, so leaving it out changes no
/// decision and saves evaluating it. `action_groups` are the action groups the action is in,
/// `resource_ancestors` the entities the resource is in.
fn slice(
    all: &PolicySet,
    action: &EntityUid,
    action_groups: &[EntityUid],
    resource: &EntityUid,
    resource_ancestors: &[EntityUid],
) -> PolicySet {
    let within = |e: &EntityUid| e == resource || resource_ancestors.contains(e);
    let mut set = PolicySet::new();
    for policy in all.policies() {
        let action_ok = match policy.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => &a == action,
            ActionConstraint::In(list) => list
                .iter()
                .any(|a| a == action || action_groups.contains(a)),
        };
        let resource_ok = match policy.resource_constraint() {
            ResourceConstraint::Any => true,
            ResourceConstraint::Eq(r) => &r == resource,
            ResourceConstraint::In(r) => within(&r),
            ResourceConstraint::Is(t) => &t == resource.type_name(),
            ResourceConstraint::IsIn(t, r) => &t == resource.type_name() && within(&r),
        };
        if action_ok && resource_ok {
            // Ids are unique in `all`, so adding cannot fail.
            let _ = set.add(policy.clone());
        }
    }
    set
}

fn entities(setup: &GateSetup, schema: &Schema) -> Result<Entities, String> {
    let e = |kind: &str, id: &str| json!({"type": kind, "id": id});
    let mut list = Vec::new();
    let mut agents: Vec<(String, Vec<Value>)> = vec![(
        setup.agent.clone(),
        setup.parents.iter().map(|p| e("Agent", p)).collect(),
    )];
    for (i, parent) in setup.parents.iter().enumerate() {
        agents.push((
            parent.clone(),
            setup.parents[i + 1..]
                .iter()
                .map(|p| e("Agent", p))
                .collect(),
        ));
    }
    for child in &setup.delegates {
        if !agents.iter().any(|(a, _)| a == child) {
            agents.push((child.clone(), vec![e("Agent", &setup.agent)]));
        }
    }
    for (agent, parents) in agents {
        list.push(json!({"uid": e("Agent", &agent), "attrs": {}, "parents": parents}));
    }
    let groups: BTreeSet<&String> = setup.tools.iter().flat_map(|t| t.groups.iter()).collect();
    for g in groups {
        list.push(json!({"uid": e("ToolGroup", g), "attrs": {}, "parents": []}));
    }
    for t in &setup.tools {
        list.push(json!({
            "uid": e("Tool", &t.name),
            "attrs": {"sink": t.sink, "risk": t.risk, "idempotent": t.idempotent, "labels": t.labels},
            "parents": t.groups.iter().map(|g| e("ToolGroup", g)).collect::<Vec<_>>(),
        }));
    }
    for m in &setup.models {
        list.push(json!({"uid": e("Model", m), "attrs": {}, "parents": []}));
    }
    list.push(json!({"uid": e("Answer", "final"), "attrs": {}, "parents": []}));
    Entities::from_json_value(Value::Array(list), Some(schema))
        .map_err(|e| format!("rein built invalid entities: {e}"))
}

/// Entity literals in policies must name things this agent has: a policy about `Tool::"refund"`
/// when the tool is `refunds.issue` would silently never match.
fn unknown_entities(
    policies: &PolicySet,
    origin: &HashMap<PolicyId, usize>,
    sources: &[PolicySource],
    setup: &GateSetup,
) -> Vec<PolicyProblem> {
    let mut known: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    known
        .entry("Tool")
        .or_default()
        .extend(setup.tools.iter().map(|t| t.name.as_str()));
    known.entry("ToolGroup").or_default().extend(
        setup
            .tools
            .iter()
            .flat_map(|t| t.groups.iter().map(String::as_str)),
    );
    known
        .entry("Model")
        .or_default()
        .extend(setup.models.iter().map(String::as_str));
    known.entry("Answer").or_default().insert("final");
    let agents = known.entry("Agent").or_default();
    agents.insert(setup.agent.as_str());
    agents.extend(setup.parents.iter().map(String::as_str));
    agents.extend(setup.delegates.iter().map(String::as_str));
    let mut problems = Vec::new();
    for policy in policies.policies() {
        let Ok(json) = policy.to_json() else { continue };
        let mut refs = Vec::new();
        collect_entity_refs(&json, &mut refs);
        for (kind, id) in refs {
            let Some(ids) = known.get(kind.as_str()) else {
                continue;
            };
            if ids.contains(id.as_str()) {
                continue;
            }
            let Some(source) = origin.get(policy.id()).map(|i| &sources[*i]) else {
                continue;
            };
            let literal = format!("{kind}::{}", json!(id));
            let offset = source.text.find(&literal);
            let have: Vec<&str> = ids.iter().copied().collect();
            problems.push(problem(
                &source.file,
                &source.text,
                offset,
                format!(
                    "policy `{}` names {literal}, which this agent does not have (it has: {})",
                    policy.id(),
                    if have.is_empty() {
                        "none".into()
                    } else {
                        have.join(", ")
                    }
                ),
            ));
        }
    }
    problems
}

fn collect_entity_refs(v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            if let (Some(Value::String(t)), Some(Value::String(id)), 2) =
                (map.get("type"), map.get("id"), map.len())
            {
                out.push((t.clone(), id.clone()));
            }
            for value in map.values() {
                collect_entity_refs(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_entity_refs(i, out)),
        _ => {}
    }
}
