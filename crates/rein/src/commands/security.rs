//! Attacking agents: `rein attacks` (the catalogue of injected scenarios) and `rein redteam`
//! (a fully compromised model against one agent).

use std::path::PathBuf;

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
