//! rein's own costs, measured on this machine: durable steps, gate decisions, budget and context
//! accounting, and the audit log. Each benchmark works in a scratch directory of its own.

pub use rein_engine::bench::{AuditBenchReport, BenchReport, ControlsBenchReport, GateBenchReport};

use crate::Error;

fn scratch() -> Result<tempfile::TempDir, Error> {
    tempfile::tempdir().map_err(|e| {
        Error::Internal(format!(
            "creating a scratch directory for the benchmark: {e}"
        ))
    })
}

/// The runtime's cost per durable tool step: `runs` runs of `steps` no-op tool steps, `concurrency`
/// at once, every step judged and audited.
pub async fn steps(
    runs: usize,
    concurrency: usize,
    steps: u32,
    fsync: bool,
) -> Result<BenchReport, Error> {
    let dir = scratch()?;
    let options = rein_engine::bench::BenchOptions {
        runs,
        concurrency,
        steps,
        durability: if fsync {
            rein_core::Durability::Fsync
        } else {
            rein_core::Durability::Normal
        },
    };
    Ok(rein_engine::bench::bench_steps(dir.path(), options).await?)
}

/// Gate decision latency with `policies` generated policies.
pub fn gate(policies: usize, decisions: usize, guards: bool) -> Result<GateBenchReport, Error> {
    Ok(rein_engine::bench::bench_gate(policies, decisions, guards)?)
}

/// What budget accounting and context building cost per model step.
pub async fn controls(steps: usize) -> Result<ControlsBenchReport, Error> {
    let dir = scratch()?;
    Ok(rein_engine::bench::bench_controls(dir.path(), steps).await?)
}

/// Audit log append and verification rates.
pub fn audit(records: u64) -> Result<AuditBenchReport, Error> {
    Ok(rein_engine::bench::bench_audit(records)?)
}
