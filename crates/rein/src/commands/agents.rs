//! An agent's policies and tools: `rein policy check|explain`, `rein tools list`, `rein schema`.

use std::path::Path;

use std::collections::BTreeMap;

use anyhow::Context;
use rein_api::{Rein, v1};

use crate::cli::ExplainArgs;

use crate::out::{self, outln};

pub(crate) async fn policy_check(rein: &Rein, agent_dir: &Path) -> anyhow::Result<u8> {
    let check = rein.policy_check(agent_dir).await?;
    outln!(
        "ok: {} policies valid against the agent's schema; {} examples hold",
        check.policies,
        check.examples
    );
    Ok(0)
}

/// Grants given with `--grant` (each a grant or a list of them); none given: `None`.
pub(crate) fn grants_flag(flags: &[String]) -> anyhow::Result<Option<Vec<v1::Grant>>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for flag in flags {
        let value: serde_json::Value =
            serde_json::from_str(flag).with_context(|| format!("--grant is not JSON: {flag}"))?;
        let list = match value {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        for item in list {
            let grant: v1::Grant = serde_json::from_value(item).with_context(|| {
                format!("--grant {flag}: a grant is {{\"tool\": NAME, \"args\": {{..}}, \"max_calls\": N}}")
            })?;
            out.push(grant);
        }
    }
    Ok(Some(out))
}

/// `NAME=A|B` pairs of a repeated flag.
fn pairs(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (name, values) = item
            .split_once('=')
            .with_context(|| format!("--{flag} {item}: write NAME=VALUE|VALUE"))?;
        out.insert(
            name.trim().to_owned(),
            values.split('|').map(|v| v.trim().to_owned()).collect(),
        );
    }
    Ok(out)
}

pub(crate) async fn policy_explain(
    rein: &Rein,
    agent_dir: &Path,
    e: ExplainArgs,
) -> anyhow::Result<u8> {
    let args: serde_json::Value =
        serde_json::from_str(&e.args).with_context(|| format!("--args is not JSON: {}", e.args))?;
    let target = match (&e.tool, &e.model, &e.answer) {
        (Some(tool), None, None) => format!("tool {tool}"),
        (None, Some(model), None) => format!("model {model}"),
        (None, None, Some(_)) => "answer".to_owned(),
        _ => anyhow::bail!("give --tool NAME, --model NAME or --answer TEXT"),
    };
    let request = v1::ExplainRequest {
        tool: e.tool,
        model: e.model,
        args,
        labels: e.labels.clone(),
        user: e.user,
        tenant: e.tenant,
        approved_by: e.approved_by,
        task: e.task,
        grants: grants_flag(&e.grants)?,
        from: pairs("from", &e.from)?,
        data: pairs("data", &e.data)?,
        calls: e.calls,
        answer: e.answer,
    };
    let decision = rein.policy_explain(agent_dir, &request).await?;
    if e.json {
        out::json(&decision)?;
        return Ok(0);
    }
    outln!("{target}: {}", decision.verdict);
    outln!(
        "  decided by  {}",
        if decision.policies.is_empty() {
            "no policy (default deny)".into()
        } else {
            decision.policies.join(", ")
        }
    );
    for reason in &decision.reasons {
        outln!("  because     {reason}");
    }
    if !e.labels.is_empty() {
        outln!("  labels      {}", e.labels.join(", "));
    }
    Ok(0)
}

pub(crate) async fn schema_policy(rein: &Rein, agent_dir: Option<&Path>) -> anyhow::Result<u8> {
    out::text(&rein.policy_schema(agent_dir).await?);
    Ok(0)
}

pub(crate) async fn tools_list(
    rein: &Rein,
    agent_dir: &Path,
    json: bool,
    accept_changes: bool,
) -> anyhow::Result<u8> {
    let list = rein.tools_list(agent_dir, accept_changes).await?;
    if json {
        out::json(&list.tools)?;
        return Ok(0);
    }
    let rows = &list.tools;
    let width = |f: fn(&v1::ToolRow) -> &str, title: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let (wn, ws, wv) = (
        width(|r| &r.name, "name"),
        width(|r| &r.source, "source"),
        width(|r| &r.verdict, "verdict"),
    );
    outln!(
        "{:wn$}  {:ws$}  {:wv$}  {:20}  arguments",
        "name",
        "source",
        "verdict",
        "labels"
    );
    for r in rows {
        let mut flags = String::new();
        if r.changed {
            flags.push_str("  [CHANGED since pinned: refused]");
        }
        if !r.operator_manifest {
            flags.push_str("  [no operator entry: restrictive defaults]");
        }
        let labels = if r.labels.is_empty() {
            "-".into()
        } else {
            r.labels.join(",")
        };
        outln!(
            "{:wn$}  {:ws$}  {:wv$}  {:20}  {}{flags}",
            r.name,
            r.source,
            r.verdict,
            labels,
            r.arguments
        );
    }
    for note in &list.notes {
        outln!("note: {note}");
    }
    if accept_changes {
        outln!(
            "pinned the current definitions of {} MCP tools",
            list.pinned
        );
    }
    Ok(0)
}
