//! The gate's commands: approvals (list, show, approve, deny), policy check and explain, the
//! policy schema, and the gate benchmark.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use rein_core::{Durability, Event};
use rein_engine::Engine;
use rein_policy::{Gate, GateSetup, RequestFacts};
use rein_store::{ApprovalSummary, Store};
use serde_json::Value;

use crate::{SecretsAt, open_store, render};

/// Who is deciding: `--as`, else the login name.
pub(crate) fn approver(as_name: Option<String>) -> String {
    as_name
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn expiry(a: &ApprovalSummary) -> String {
    match a.expires_ms {
        None => "never expires".into(),
        Some(at) if at <= now_ms() => "expired".into(),
        Some(at) => format!("expires in {}", render::fmt_ms(at - now_ms())),
    }
}

pub(crate) fn approvals_list(state_dir: &Path, all: bool, json: bool) -> anyhow::Result<u8> {
    let store = open_store(state_dir, Durability::Normal)?;
    let approvals = store.list_approvals(!all, 200)?;
    if json {
        println!("{}", serde_json::to_string(&approvals)?);
        return Ok(0);
    }
    if approvals.is_empty() {
        println!(
            "{}",
            if all {
                "no approval requests"
            } else {
                "no pending approvals"
            }
        );
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<32}  {:<9}  {:<20}  {:<32}  when",
        "approval", "status", "tool", "run"
    );
    for a in approvals {
        let when = if a.status == "pending" {
            expiry(&a)
        } else {
            a.decided_by
                .clone()
                .map(|b| format!("by {b}"))
                .unwrap_or_default()
        };
        let _ = writeln!(
            out,
            "{:<32}  {:<9}  {:<20}  {:<32}  {when}",
            a.id,
            a.status,
            render::one_line(&a.tool, 20),
            a.run_id
        );
    }
    Ok(0)
}

/// The approval card: rendered by rein from the recorded request (the real arguments, JSON
/// encoded so no text can pose as part of the card), never from anything the model wrote.
pub(crate) fn approvals_show(state_dir: &Path, id: &str, json: bool) -> anyhow::Result<u8> {
    let store = open_store(state_dir, Durability::Normal)?;
    let summary = store.approval(id)?;
    let events = store.events(&summary.run_id)?;
    let request = events.iter().find_map(|e| match &e.event {
        Event::ApprovalRequested {
            approval_id,
            args,
            policies,
            reasons,
            labels,
            ..
        } if *approval_id == summary.id => Some((
            args.clone(),
            policies.clone(),
            reasons.clone(),
            labels.clone(),
        )),
        _ => None,
    });
    let Some((args, policies, reasons, labels)) = request else {
        bail!(
            "approval {} has no request in run {}'s log",
            summary.id,
            summary.run_id
        );
    };
    let started = events.iter().find_map(|e| match &e.event {
        Event::RunStarted(s) => Some(s.clone()),
        _ => None,
    });
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "approval": summary, "arguments": args, "policies": policies, "reasons": reasons, "labels": labels,
                "agent": started.as_ref().map(|s| &s.agent), "task": started.as_ref().map(|s| &s.task),
                "user": started.as_ref().map(|s| &s.user), "tenant": started.as_ref().map(|s| &s.tenant),
            }))?
        );
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let status = if summary.status == "pending" {
        expiry(&summary)
    } else {
        format!(
            "{} by {}",
            summary.status,
            summary.decided_by.clone().unwrap_or_default()
        )
    };
    let _ = writeln!(out, "Approval {}  ({status})", summary.id);
    if let Some(s) = &started {
        let _ = writeln!(
            out,
            "  run        {} · agent {} · for user {} in tenant {}",
            summary.run_id, s.agent, s.user, s.tenant
        );
        let _ = writeln!(out, "  task       {}", serde_json::to_string(&s.task)?);
    }
    let _ = writeln!(out, "  tool       {}", summary.tool);
    let _ = writeln!(out, "  arguments");
    match &args {
        Value::Object(map) => {
            let width = map.keys().map(|k| k.chars().count()).max().unwrap_or(0);
            for (k, v) in map {
                let _ = writeln!(
                    out,
                    "    {:<width$}  {}",
                    serde_json::to_string(k)?.trim_matches('"'),
                    serde_json::to_string(v)?
                );
            }
        }
        other => {
            let _ = writeln!(out, "    {}", serde_json::to_string(other)?);
        }
    }
    let _ = writeln!(out, "  why        {}", reasons.join("; "));
    let _ = writeln!(out, "  policies   {}", policies.join(", "));
    let _ = writeln!(
        out,
        "  labels     {}",
        if labels.is_empty() {
            "none".into()
        } else {
            labels.join(", ")
        }
    );
    if summary.status == "pending" {
        let _ = writeln!(
            out,
            "  decide     rein approvals approve {} [--note TEXT]  |  rein approvals deny {} [--note TEXT]",
            summary.id, summary.id
        );
    }
    Ok(0)
}

pub(crate) async fn approvals_decide(
    state_dir: &Path,
    id: &str,
    approved: bool,
    by: String,
    note: Option<String>,
    json: bool,
    checkpoint_dir: Option<&Path>,
) -> anyhow::Result<u8> {
    let store = open_store(state_dir, Durability::Normal)?;
    let log = crate::audit_cmds::open_log(state_dir, checkpoint_dir, false)?;
    let engine = Engine::new(store, state_dir).with_audit(std::sync::Arc::new(log));
    let decided = engine.decide(id, approved, &by, note).await?;
    if json {
        println!("{}", serde_json::to_string(&decided)?);
    } else {
        println!(
            "{} {} by {}; continue the run with: rein runs resume {}",
            decided.id, decided.status, by, decided.run_id
        );
    }
    Ok(0)
}

async fn gate_for(agent_dir: &Path, secrets: &SecretsAt<'_>) -> anyhow::Result<(Gate, usize)> {
    let spec = rein_config::load(agent_dir)?;
    let mcp = crate::tools_cmds::connect_mcp(&spec, secrets, false).await?;
    let gate = rein_engine::load_gate(&spec, &mcp);
    mcp.shutdown().await;
    let gate = gate?;
    let examples = std::fs::read_dir(spec.dir.join("policies"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "cedar"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| {
                    t.lines()
                        .filter(|l| {
                            l.trim_start()
                                .trim_start_matches('/')
                                .trim_start()
                                .starts_with("example:")
                        })
                        .count()
                })
                .sum()
        })
        .unwrap_or(0);
    Ok((gate, examples))
}

pub(crate) async fn policy_check(agent_dir: &Path, secrets: &SecretsAt<'_>) -> anyhow::Result<u8> {
    let (gate, examples) = gate_for(agent_dir, secrets).await?;
    println!(
        "ok: {} policies valid against the agent's schema; {examples} examples hold",
        gate.policy_count()
    );
    Ok(0)
}

pub(crate) struct Explain {
    pub(crate) tool: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) args: String,
    pub(crate) labels: Vec<String>,
    pub(crate) user: String,
    pub(crate) tenant: String,
    pub(crate) approved_by: Option<String>,
    pub(crate) json: bool,
}

pub(crate) async fn policy_explain(
    agent_dir: &Path,
    secrets: &SecretsAt<'_>,
    e: Explain,
) -> anyhow::Result<u8> {
    let (gate, _) = gate_for(agent_dir, secrets).await?;
    let args: Value =
        serde_json::from_str(&e.args).with_context(|| format!("--args is not JSON: {}", e.args))?;
    let facts = RequestFacts {
        budget_percent: 0,
        user: e.user,
        tenant: e.tenant,
        task: "explain".into(),
        labels: e.labels.clone(),
        approved_by: e.approved_by,
    };
    let (target, decision) = match (&e.tool, &e.model) {
        (Some(tool), None) => (format!("tool {tool}"), gate.judge_tool(tool, &args, &facts)),
        (None, Some(model)) => (format!("model {model}"), gate.judge_model(model, &facts)),
        _ => bail!("give --tool NAME or --model NAME"),
    };
    if e.json {
        println!("{}", serde_json::to_string(&decision)?);
    } else {
        println!("{}: {}", target, decision.verdict);
        println!(
            "  decided by  {}",
            if decision.policies.is_empty() {
                "no policy (default deny)".into()
            } else {
                decision.policies.join(", ")
            }
        );
        for reason in &decision.reasons {
            println!("  because     {reason}");
        }
        if !e.labels.is_empty() {
            println!("  labels      {}", e.labels.join(", "));
        }
    }
    Ok(0)
}

pub(crate) async fn schema_policy(
    agent_dir: Option<&Path>,
    secrets: &SecretsAt<'_>,
) -> anyhow::Result<u8> {
    let setup = match agent_dir {
        Some(dir) => {
            let spec = rein_config::load(dir)?;
            let mcp = crate::tools_cmds::connect_mcp(&spec, secrets, false).await?;
            let tools = rein_engine::build_tools(&spec, &mcp);
            mcp.shutdown().await;
            tools?.setup
        }
        None => GateSetup {
            agent: "<agent>".into(),
            ..GateSetup::default()
        },
    };
    print!("{}", rein_policy::schema_text(&setup));
    Ok(0)
}

pub(crate) fn bench_gate(policies: usize, decisions: usize, json: bool) -> anyhow::Result<u8> {
    let report = rein_engine::bench::bench_gate(policies, decisions)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} policies, {} decisions\n  p50 {:.1} µs · p99 {:.1} µs · {:.0} decisions/s on one thread",
            report.policies, report.decisions, report.p50_us, report.p99_us, report.decisions_per_s
        );
    }
    Ok(0)
}
