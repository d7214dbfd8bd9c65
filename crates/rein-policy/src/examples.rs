//! Examples in policy files: `// example: deny bank.transfer {"to": "X"}; from: to=untrusted`
//! lines that must hold whenever the policies load, so a policy's intent is tested where it is
//! written. An example can set the task, the labels in play, an approver, where each argument
//! came from, whether grants were fixed and cover the call, policy data and how many calls the
//! tool has made.

use std::collections::{BTreeMap, BTreeSet};

use rein_core::{Decision, Verdict};
use serde_json::{Value, json};

use crate::load::problem;
use crate::{Gate, GrantFacts, PolicyProblem, PolicySource, RequestFacts, answer_facts, arg_facts};

impl Gate {
    /// Checks the `// example:` lines of every source against the loaded policies.
    pub(crate) fn check_examples(&self, sources: &[PolicySource]) -> Vec<PolicyProblem> {
        let mut problems = Vec::new();
        for source in sources {
            let mut offset = 0;
            for line in source.text.split_inclusive('\n') {
                let at = offset;
                offset += line.len();
                let Some(rest) = line
                    .trim_start()
                    .strip_prefix("//")
                    .map(str::trim_start)
                    .and_then(|l| l.strip_prefix("example:"))
                else {
                    continue;
                };
                let column = line.len() - line.trim_start().len();
                match Example::parse(rest.trim()) {
                    Err(message) => problems.push(problem(
                        &source.file,
                        &source.text,
                        Some(at + column),
                        format!("bad example: {message}"),
                    )),
                    Ok(example) => {
                        let decision = self.judge_example(&example);
                        if decision.verdict != example.expect {
                            let by = if decision.policies.is_empty() {
                                "no policy matched (default deny)".to_owned()
                            } else {
                                format!("decided by {}", decision.policies.join(", "))
                            };
                            problems.push(problem(
                                &source.file,
                                &source.text,
                                Some(at + column),
                                format!(
                                    "example expects {} but the policies say {} ({by}): {}",
                                    example.expect,
                                    decision.verdict,
                                    decision.reasons.join("; ")
                                ),
                            ));
                        }
                    }
                }
            }
        }
        problems
    }

    fn judge_example(&self, example: &Example) -> Decision {
        self.judge_scenario(&example.target, &example.args, &example.scenario)
    }

    /// Judges a request outside a run, with the run's facts as given (an example line, `rein
    /// policy explain`): provenance, grants, data and counters are taken as stated, and the
    /// facts of string arguments are computed as in a run (against workspace `/workspace`).
    pub fn judge_scenario(&self, target: &Target, args: &Value, scenario: &Scenario) -> Decision {
        let mut facts = RequestFacts {
            user: scenario.user.clone(),
            tenant: scenario.tenant.clone(),
            task: scenario.task.clone(),
            labels: scenario.labels.clone(),
            approved_by: scenario.approved_by.clone(),
            from: scenario.from.clone(),
            grants: scenario.grants.clone(),
            data: std::sync::Arc::new(scenario.data.clone()),
            run_calls: scenario.calls,
            ..RequestFacts::default()
        };
        facts.counter.calls = scenario.calls;
        let nothing = rein_core::provenance::Sources::default();
        match target {
            Target::Tool(name) => {
                facts.facts = arg_facts(self.string_args(name), args, "/workspace", &nothing);
                self.judge_tool(name, args, &facts)
            }
            Target::Respond => {
                let text = args.get("text").and_then(Value::as_str).unwrap_or_default();
                self.judge_answer(&answer_facts(text, &nothing), &facts)
            }
            Target::Model(name) => self.judge_model(name, &facts),
            Target::Delegate(name) => self.judge_delegate(
                name,
                args.get("task").and_then(Value::as_str).unwrap_or_default(),
                &facts,
            ),
        }
    }
}

/// What a request outside a run is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A tool call.
    Tool(String),
    /// A model call.
    Model(String),
    /// A delegation to a sub-agent.
    Delegate(String),
    /// The run's answer (`{"text": ...}`).
    Respond,
}

impl Target {
    /// `model:NAME`, `delegate:AGENT`, `respond`, or a tool name.
    pub fn parse(text: &str) -> Option<Target> {
        Some(if text == "respond" {
            Target::Respond
        } else if let Some(m) = text.strip_prefix("model:") {
            Target::Model(m.to_owned())
        } else if let Some(a) = text.strip_prefix("delegate:") {
            Target::Delegate(a.to_owned())
        } else if text.is_empty() {
            return None;
        } else {
            Target::Tool(text.to_owned())
        })
    }
}

/// The facts of a run as stated for a request judged outside one.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// `context.user`.
    pub user: String,
    /// `context.tenant`.
    pub tenant: String,
    /// `context.task`.
    pub task: String,
    /// `context.labels`.
    pub labels: Vec<String>,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// `context.from`: each argument's origins.
    pub from: BTreeMap<String, Vec<String>>,
    /// `context.grants`.
    pub grants: GrantFacts,
    /// `context.data`.
    pub data: BTreeMap<String, BTreeSet<String>>,
    /// Calls of the tool (and of the run) so far.
    pub calls: u32,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            user: "example-user".into(),
            tenant: "default".into(),
            task: "example".into(),
            labels: vec![],
            approved_by: None,
            from: BTreeMap::new(),
            grants: GrantFacts::default(),
            data: BTreeMap::new(),
            calls: 0,
        }
    }
}

/// `<verdict> <target> [<json args>] [; labels: a, b] [; approved-by: name] [; task: text]
/// [; from: arg=origin|origin, ...] [; granted] [; grants-fixed] [; data: name=v|v, ...]
/// [; calls: n]`, where target is a tool name, `model:<name>`, `delegate:<agent>` or `respond`
/// (with `{"text": "..."}`).
struct Example {
    expect: Verdict,
    target: Target,
    args: Value,
    scenario: Scenario,
}

impl Example {
    fn parse(text: &str) -> Result<Example, String> {
        let usage = "write `// example: <allow|deny|ask> <tool | model:NAME | delegate:AGENT | respond> [{json args}] [; labels: a, b] [; approved-by: NAME] [; task: TEXT] [; from: arg=origin|origin] [; granted] [; grants-fixed] [; data: name=v|v] [; calls: N]`";
        let (verdict, rest) = text.split_once(char::is_whitespace).ok_or(usage)?;
        let expect = match verdict {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            "ask" => Verdict::Ask,
            other => return Err(format!("`{other}` is not a verdict; {usage}")),
        };
        let rest = rest.trim();
        let (target, mut rest) = rest
            .split_once(char::is_whitespace)
            .map(|(t, r)| (t, r.trim()))
            .unwrap_or((rest, ""));
        let target = Target::parse(target).ok_or(usage)?;
        let mut args = json!({});
        if rest.starts_with('{') {
            let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            args = stream
                .next()
                .ok_or(usage)?
                .map_err(|e| format!("the arguments are not JSON: {e}"))?;
            rest = rest[stream.byte_offset()..].trim();
        }
        let mut scenario = Scenario::default();
        let list = |text: &str| -> Vec<String> {
            text.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        for part in rest.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(l) = part.strip_prefix("labels:") {
                scenario.labels = list(l);
            } else if let Some(a) = part.strip_prefix("approved-by:") {
                scenario.approved_by = Some(a.trim().to_owned());
            } else if let Some(t) = part.strip_prefix("task:") {
                scenario.task = t.trim().to_owned();
            } else if let Some(f) = part.strip_prefix("from:") {
                for item in list(f) {
                    let (arg, origins) = item
                        .split_once('=')
                        .ok_or_else(|| format!("`from: {item}` needs `arg=origin|origin`"))?;
                    scenario.from.insert(
                        arg.trim().to_owned(),
                        origins.split('|').map(|o| o.trim().to_owned()).collect(),
                    );
                }
            } else if let Some(d) = part.strip_prefix("data:") {
                for item in list(d) {
                    let (name, values) = item
                        .split_once('=')
                        .ok_or_else(|| format!("`data: {item}` needs `name=value|value`"))?;
                    scenario.data.insert(
                        name.trim().to_owned(),
                        values.split('|').map(|v| v.trim().to_owned()).collect(),
                    );
                }
            } else if let Some(n) = part.strip_prefix("calls:") {
                scenario.calls = n
                    .trim()
                    .parse()
                    .map_err(|_| format!("`calls: {n}` needs a number"))?;
            } else if part == "granted" {
                scenario.grants.fixed = true;
                scenario.grants.covered = true;
            } else if part == "grants-fixed" {
                scenario.grants.fixed = true;
            } else {
                return Err(format!("cannot read `{part}`; {usage}"));
            }
        }
        Ok(Example {
            expect,
            target,
            args,
            scenario,
        })
    }
}
