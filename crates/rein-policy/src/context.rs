//! What the policies see about a request besides its target: the run (user, tenant, task,
//! labels, budget share, approval), and for a tool call its arguments' origins and facts, the
//! tool's counters, the run's grants and the policy data; for an answer, what it links to.

use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::RestrictedExpression;
use rein_core::facts::ArgFacts;
use rein_core::provenance::Sources;
use rein_core::state::Counter;
use serde_json::Value;

/// The facts of a call's string arguments (`context.facts`): `string_args` are the tool's
/// string and list-of-string arguments (`Gate::string_args`).
pub fn arg_facts(
    string_args: &[String],
    args: &Value,
    workspace: &str,
    sources: &Sources,
) -> BTreeMap<String, ArgFacts> {
    string_args
        .iter()
        .filter_map(|name| {
            let value = args.get(name)?;
            rein_core::facts::of(value, workspace, sources).map(|f| (name.clone(), f))
        })
        .collect()
}

/// What the policies see of an answer: its links and images, their hosts, whether they carry
/// data the run read, and where their values came from.
pub fn answer_facts(text: &str, sources: &Sources) -> AnswerFacts {
    let images: BTreeSet<String> = rein_core::facts::images_in(text).into_iter().collect();
    let urls: BTreeSet<String> = rein_core::facts::urls_in(text)
        .into_iter()
        .chain(images.iter().cloned())
        .collect();
    let hosts = urls
        .iter()
        .filter_map(|u| rein_core::facts::host_of(u))
        .collect();
    let carries_data = urls.iter().any(|u| {
        let after_scheme = u.split_once(':').map_or(u.as_str(), |(_, rest)| rest);
        sources.carries_tool_data(after_scheme)
    });
    let from = urls
        .iter()
        .flat_map(|u| sources.origins(&Value::String(u.clone())))
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    AnswerFacts {
        text: text.to_owned(),
        urls,
        hosts,
        images,
        carries_data,
        from,
    }
}

/// Which of the costlier context attributes a target's policies read. An attribute no policy of
/// the target names cannot change its decisions, so it is not built (requests are not checked
/// against the schema; the policies were, when they loaded). Found by the attribute's name
/// appearing as a word in a policy's text, which can only err towards building it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    pub(crate) from: bool,
    pub(crate) facts: bool,
    pub(crate) counters: bool,
    pub(crate) grants: bool,
    pub(crate) data: bool,
    pub(crate) answer: bool,
}

impl Uses {
    pub(crate) fn of(policies: &cedar_policy::PolicySet) -> Uses {
        let mut uses = Uses::default();
        for policy in policies.policies() {
            let text = policy.to_string();
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                match word {
                    "from" => uses.from = true,
                    "facts" => uses.facts = true,
                    "counters" => uses.counters = true,
                    "grants" => uses.grants = true,
                    "data" => uses.data = true,
                    "answer" => uses.answer = true,
                    _ => {}
                }
            }
        }
        uses
    }
}

/// Policy data sets by name, shared between decisions.
pub type DataSets = std::sync::Arc<BTreeMap<String, BTreeSet<String>>>;

/// The facts of one request besides its target.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// Who the run acts for.
    pub user: String,
    /// The tenant.
    pub tenant: String,
    /// The task.
    pub task: String,
    /// The labels in play.
    pub labels: Vec<String>,
    /// Who approved the action, when it was approved.
    pub approved_by: Option<String>,
    /// The largest share of any budget the run spends from, in percent (`context.budget_percent`).
    pub budget_percent: u64,
    /// Where each argument's values came from (`context.from.<arg>`).
    pub from: BTreeMap<String, Vec<String>>,
    /// Facts about string arguments (`context.facts.<arg>`).
    pub facts: BTreeMap<String, ArgFacts>,
    /// What this tool has done in the run so far (`context.counters`).
    pub counter: Counter,
    /// Calls started in the run, all tools (`context.counters.run_calls`).
    pub run_calls: u32,
    /// What the run's model calls cost so far, in millionths of a dollar.
    pub cost_micros: u64,
    /// The run's grants (`context.grants`).
    pub grants: GrantFacts,
    /// Policy data sets (`context.data.<name>`), shared: the same sets serve every decision
    /// until they change.
    pub data: DataSets,
}

/// What the policies see of the run's grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantFacts {
    /// Whether grants were fixed for the run.
    pub fixed: bool,
    /// Whether one of them covers this request.
    pub covered: bool,
    /// The tools they name.
    pub tools: Vec<String>,
}

/// What the policies see of an answer (`context.answer`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerFacts {
    /// The text.
    pub text: String,
    /// Its URLs (links and images).
    pub urls: BTreeSet<String>,
    /// Their hosts.
    pub hosts: BTreeSet<String>,
    /// Its images' URLs.
    pub images: BTreeSet<String>,
    /// Whether a URL in it carries data the run read.
    pub carries_data: bool,
    /// Where its URLs' values came from.
    pub from: Vec<String>,
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn set<'a>(items: impl IntoIterator<Item = &'a String>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.into_iter().map(|s| string(s)))
}

fn record(fields: Vec<(String, RestrictedExpression)>) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(fields).map_err(|e| e.to_string())
}

/// The context every request has: user, tenant, task, labels, budget share, approval.
pub(crate) fn base(facts: &RequestFacts) -> Vec<(String, RestrictedExpression)> {
    let mut pairs = vec![
        ("user".to_owned(), string(&facts.user)),
        ("tenant".to_owned(), string(&facts.tenant)),
        ("task".to_owned(), string(&facts.task)),
        (
            "budget_percent".to_owned(),
            RestrictedExpression::new_long(facts.budget_percent.min(i64::MAX as u64) as i64),
        ),
        ("labels".to_owned(), set(&facts.labels)),
    ];
    let approval = RestrictedExpression::new_record([
        (
            "granted".to_owned(),
            RestrictedExpression::new_bool(facts.approved_by.is_some()),
        ),
        (
            "by".to_owned(),
            string(facts.approved_by.as_deref().unwrap_or_default()),
        ),
    ]);
    if let Ok(approval) = approval {
        pairs.push(("approval".to_owned(), approval));
    }
    pairs
}

/// `context.grants`.
pub(crate) fn grants(g: &GrantFacts) -> Result<RestrictedExpression, String> {
    record(vec![
        ("fixed".into(), RestrictedExpression::new_bool(g.fixed)),
        ("covered".into(), RestrictedExpression::new_bool(g.covered)),
        ("tools".into(), set(&g.tools)),
    ])
}

/// `context.data`: every data set the agent's schema names, empty when the run has none yet.
pub(crate) fn data(names: &[String], facts: &RequestFacts) -> Result<RestrictedExpression, String> {
    let empty = BTreeSet::new();
    record(
        names
            .iter()
            .map(|n| (n.clone(), set(facts.data.get(n).unwrap_or(&empty))))
            .collect(),
    )
}

/// `context.from`: every top-level argument of the tool, with its origins (none when absent).
pub(crate) fn from(args: &[String], facts: &RequestFacts) -> Result<RestrictedExpression, String> {
    record(
        args.iter()
            .map(|a| {
                let origins = facts.from.get(a).map(Vec::as_slice).unwrap_or_default();
                (a.clone(), set(origins))
            })
            .collect(),
    )
}

/// One argument's facts, as a Cedar record.
fn arg_facts_record(f: &ArgFacts) -> Result<RestrictedExpression, String> {
    record(vec![
        ("lower".into(), string(&f.lower)),
        ("joined".into(), string(&f.joined)),
        ("length".into(), RestrictedExpression::new_long(f.length)),
        ("first".into(), string(&f.first)),
        ("urls".into(), set(&f.urls)),
        ("hosts".into(), set(&f.hosts)),
        (
            "carries_data".into(),
            RestrictedExpression::new_bool(f.carries_data),
        ),
        ("emails".into(), set(&f.emails)),
        ("email_domains".into(), set(&f.email_domains)),
        ("path".into(), string(&f.path)),
        (
            "in_workspace".into(),
            RestrictedExpression::new_bool(f.in_workspace),
        ),
    ])
}

/// `context.facts`: the facts of each string argument the call has.
pub(crate) fn facts_of(
    string_args: &[String],
    facts: &RequestFacts,
) -> Result<RestrictedExpression, String> {
    let mut fields = Vec::new();
    for name in string_args {
        if let Some(f) = facts.facts.get(name) {
            fields.push((name.clone(), arg_facts_record(f)?));
        }
    }
    record(fields)
}

/// `context.counters`: this tool's calls and the sums of its numeric arguments, the run's calls
/// and cost.
pub(crate) fn counters(
    numeric_args: &[String],
    facts: &RequestFacts,
) -> Result<RestrictedExpression, String> {
    let mut sums = Vec::with_capacity(numeric_args.len());
    for name in numeric_args {
        let total = facts.counter.sums.get(name).copied().unwrap_or(0.0);
        let clamped = total.clamp(-9.0e14, 9.0e14);
        sums.push((
            name.clone(),
            crate::schema::decimal(format!("{clamped:.4}")),
        ));
    }
    record(vec![
        (
            "calls".into(),
            RestrictedExpression::new_long(i64::from(facts.counter.calls)),
        ),
        (
            "run_calls".into(),
            RestrictedExpression::new_long(i64::from(facts.run_calls)),
        ),
        (
            "cost_micros".into(),
            RestrictedExpression::new_long(facts.cost_micros.min(i64::MAX as u64) as i64),
        ),
        ("sums".into(), record(sums)?),
    ])
}

/// `context.answer`.
pub(crate) fn answer(a: &AnswerFacts) -> Result<RestrictedExpression, String> {
    let image_hosts: BTreeSet<String> = a
        .images
        .iter()
        .filter_map(|u| rein_core::facts::host_of(u))
        .collect();
    record(vec![
        ("text".into(), string(&a.text)),
        ("lower".into(), string(&a.text.to_lowercase())),
        ("urls".into(), set(&a.urls)),
        ("hosts".into(), set(&a.hosts)),
        ("images".into(), set(&a.images)),
        ("image_hosts".into(), set(&image_hosts)),
        (
            "carries_data".into(),
            RestrictedExpression::new_bool(a.carries_data),
        ),
        ("from".into(), set(&a.from)),
    ])
}
