//! `rein run`, `rein runs ...` and `rein usage`.

use std::io::IsTerminal;

use anyhow::Context;
use rein_api::{Rein, RunQuery, StartRun, v1};

use crate::live::{color_for, live_view};
use crate::out::{self, outln};
use crate::render::{self, Renderer};

/// Prints a run's report (one JSON object with `--json`) and returns its exit code.
pub(crate) fn finish(report: &v1::RunReport, json: bool) -> anyhow::Result<u8> {
    if json {
        out::json(report)?;
    } else {
        outln!(
            "  {} steps · {} tool calls · {} in / {} out tokens · ${:.6} · {}",
            report.steps,
            report.tool_calls,
            report.usage.input_tokens,
            report.usage.output_tokens,
            report.cost_usd,
            render::fmt_ms(report.active_ms)
        );
        if report.status != v1::EndState::Completed
            && (!report.completed.is_empty() || !report.not_completed.is_empty())
        {
            let list = |items: &[String]| {
                if items.is_empty() {
                    "none".to_owned()
                } else {
                    items.join(", ")
                }
            };
            outln!("  completed: {}", list(&report.completed));
            outln!("  not completed: {}", list(&report.not_completed));
        }
        outln!("  details: rein runs show {}", report.run_id);
    }
    Ok(report.status.exit_code())
}

pub(crate) async fn run(rein: &Rein, request: StartRun, json: bool) -> anyhow::Result<u8> {
    let view = live_view(json);
    let report = rein
        .start_run(request, view.as_ref().map(|v| v as &dyn rein_api::Watch))
        .await?;
    finish(&report, json)
}

pub(crate) async fn resume(rein: &Rein, id: &str, json: bool) -> anyhow::Result<u8> {
    let view = live_view(json);
    let report = rein
        .resume_run(id, view.as_ref().map(|v| v as &dyn rein_api::Watch))
        .await?;
    finish(&report, json)
}

pub(crate) fn list(rein: &Rein, query: RunQuery, json: bool) -> anyhow::Result<u8> {
    let runs = rein.list_runs(&query)?;
    if json {
        out::json(&runs)?;
        return Ok(0);
    }
    if runs.is_empty() {
        outln!("no runs yet in {}", rein.state_dir().root.display());
        return Ok(0);
    }
    outln!(
        "{:<32}  {:<16}  {:<20}  {:>5}  {:>6}  {:>9}  task",
        "run",
        "agent",
        "status",
        "steps",
        "events",
        "duration"
    );
    for r in runs {
        outln!(
            "{:<32}  {:<16}  {:<20}  {:>5}  {:>6}  {:>9}  {}",
            r.id,
            render::one_line(&r.agent, 16),
            r.status.as_str(),
            r.steps,
            r.events,
            render::fmt_ms(r.updated_ms.saturating_sub(r.created_ms)),
            render::one_line(&r.task, 60)
        );
    }
    Ok(0)
}

pub(crate) fn show(rein: &Rein, id: &str, json: bool) -> anyhow::Result<u8> {
    let detail = rein.show_run(id)?;
    if json {
        out::json(&detail)?;
        return Ok(0);
    }
    let mut renderer = Renderer::new(color_for(std::io::stdout().is_terminal()), true);
    for event in &detail.events {
        out::write(|w| {
            renderer.write(w, &detail.run.id, event);
            Ok(())
        });
    }
    if let Some(t) = &detail.totals {
        let status = match detail.run.status {
            v1::RunStatus::Ended(s) => s.as_str().to_owned(),
            v1::RunStatus::Running => "running (driven by a live process)".into(),
            v1::RunStatus::Interrupted => "unfinished (resume it with `rein runs resume`)".into(),
        };
        outln!(
            "\n{status} · {} steps · {} tool calls · {} in / {} out tokens · ${:.6} · active {} · {} events",
            t.steps,
            t.tool_calls,
            t.usage.input_tokens,
            t.usage.output_tokens,
            t.cost_usd,
            render::fmt_ms(t.active_ms),
            detail.events.len()
        );
    }
    Ok(0)
}

pub(crate) async fn reconcile(
    rein: &Rein,
    id: &str,
    call: &str,
    happened: bool,
    output: &str,
    note: Option<String>,
    by: &str,
) -> anyhow::Result<u8> {
    let output: serde_json::Value =
        serde_json::from_str(output).with_context(|| format!("--output is not JSON: {output}"))?;
    let run_id = rein.reconcile(id, call, happened, output, by, note).await?;
    outln!("call {call} of run {run_id} settled by {by}; continue with: rein runs resume {run_id}");
    Ok(0)
}

pub(crate) async fn cancel(rein: &Rein, id: &str, by: &str, json: bool) -> anyhow::Result<u8> {
    let outcome = rein.cancel_run(id, by).await?;
    if json {
        out::json(&outcome)?;
        return Ok(0);
    }
    match outcome {
        v1::CancelOutcome::Cancelled { report } => {
            outln!("run {} cancelled by {by}", report.run_id)
        }
        v1::CancelOutcome::Requested { run_id } => outln!(
            "run {run_id} is being driven by another process; it was asked to stop and ends cancelled at its next step"
        ),
    }
    Ok(0)
}

pub(crate) fn usage(
    rein: &Rein,
    agent: Option<String>,
    user: Option<String>,
    tenant: Option<String>,
    since: Option<String>,
    json: bool,
) -> anyhow::Result<u8> {
    let rows = rein.usage(
        agent.as_deref(),
        user.as_deref(),
        tenant.as_deref(),
        since.as_deref(),
    )?;
    if json {
        out::json(&rows)?;
        return Ok(0);
    }
    if rows.is_empty() {
        outln!(
            "no spending recorded yet (budgets are kept when an agent declares [budget] or [[budgets]])"
        );
        return Ok(0);
    }
    outln!(
        "{:44} {:10} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "budget",
        "period",
        "calls",
        "tokens",
        "of tokens",
        "usd",
        "of usd"
    );
    for r in rows {
        let of = |v: Option<u64>, money: bool| match v {
            Some(v) if money => format!("{:.6}", v as f64 / 1e6),
            Some(v) => v.to_string(),
            None => "-".into(),
        };
        outln!(
            "{:44} {:10} {:>6} {:>12} {:>12} {:>12.6} {:>12}",
            r.key,
            r.period,
            r.calls,
            r.tokens,
            of(r.max_tokens, false),
            r.cost_micros as f64 / 1e6,
            of(r.max_cost_micros, true)
        );
    }
    Ok(0)
}
