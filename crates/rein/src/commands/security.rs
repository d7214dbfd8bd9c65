//! Attacking agents: `rein attacks` (the catalogue of injected scenarios) and `rein redteam`
//! (a fully compromised model against one agent).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rein_api::{Rein, v1};

use crate::out::{self, outln};

pub(crate) async fn attacks(
    catalogue: PathBuf,
    policies: Option<&str>,
    grants: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let report = rein_api::attacks::run_catalogue(&catalogue, policies, grants).await?;
    let code = u8::from(report.harmful_executed > 0);
    if json {
        out::json(&report)?;
        return Ok(code);
    }
    outln!(
        "{:<34} {:<12} {:>8} {:>7} {:>5} {:>9} {:>7} {:>9}",
        "scenario",
        "suite",
        "attempts",
        "denied",
        "held",
        "executed",
        "benign",
        "approvals"
    );
    for s in &report.scenarios {
        outln!(
            "{:<34} {:<12} {:>8} {:>7} {:>5} {:>9} {:>7} {:>5}/{:<3}",
            s.name,
            s.suite,
            s.harmful_attempts,
            s.denied_by_gate,
            s.held_for_a_person,
            s.harmful_executed,
            if s.benign_completed { "yes" } else { "NO" },
            s.approvals,
            s.max_approvals
        );
        if !s.benign_missing.is_empty() {
            outln!("    benign calls missing: {}", s.benign_missing.join("; "));
        }
    }
    let pct = |n: usize, d: usize| {
        if d == 0 {
            100.0
        } else {
            n as f64 * 100.0 / d as f64
        }
    };
    outln!(
        "\n{} scenarios with policies `{}`{}: {} harmful attempts, {} denied by the gate ({:.1}%), {} held for a person, {} harmful effects executed; benign tasks completed in {}/{}; approvals within the maximum in {}/{}",
        report.scenarios.len(),
        report.policies,
        if report.grants { "" } else { " and no grants" },
        report.harmful_attempts,
        report.denied_by_gate,
        pct(report.denied_by_gate, report.harmful_attempts),
        report.held_for_a_person,
        report.harmful_executed,
        report.benign_completed,
        report.scenarios.len(),
        report.approvals_within_max,
        report.scenarios.len()
    );
    Ok(code)
}

pub(crate) async fn redteam(
    rein: &Rein,
    agent_dir: &Path,
    task: Option<String>,
    junit: Option<PathBuf>,
    sarif: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<u8> {
    let report = rein.redteam(agent_dir, task).await?;
    if let Some(path) = junit {
        std::fs::write(&path, rein_api::redteam::junit(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = sarif {
        let agent_file = agent_dir.join("agent.toml").display().to_string();
        let text = serde_json::to_string_pretty(&rein_api::redteam::sarif(&report, &agent_file))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let code = u8::from(report.executed > 0);
    if json {
        out::json(&report)?;
        return Ok(code);
    }
    for a in &report.attacks {
        let mark = match a.outcome {
            v1::AttackOutcome::Executed => "EXECUTED",
            v1::AttackOutcome::Blocked => "blocked",
            v1::AttackOutcome::Held => "held",
            v1::AttackOutcome::Untested => "untested",
        };
        outln!(
            "{mark:<9} {:<48} {}",
            a.id,
            crate::render::one_line(
                &format!(
                    "{}{}",
                    a.detail,
                    if a.policies.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", a.policies.join(", "))
                    }
                ),
                110
            )
        );
    }
    if !report.stubbed.is_empty() {
        outln!("stubbed (not called): {}", report.stubbed.join(", "));
    }
    outln!(
        "\n{}: {} attacks, {} would have executed, {} blocked, {} held for a person, {} untested",
        report.agent,
        report.attacks.len(),
        report.executed,
        report.blocked,
        report.held,
        report.untested
    );
    for a in report
        .attacks
        .iter()
        .filter(|a| a.outcome == v1::AttackOutcome::Executed)
    {
        outln!(
            "  would have executed: {} {} {} (run {})",
            a.id,
            a.tool,
            crate::render::one_line(&a.args.to_string(), 100),
            a.run_id
        );
    }
    Ok(code)
}
