//! `rein bench ...`: rein's own costs on this machine.

use rein_api::bench;

use crate::out::{self, outln};

pub(crate) async fn steps(
    runs: usize,
    concurrency: usize,
    steps: u32,
    fsync: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let report = bench::steps(runs, concurrency, steps, fsync).await?;
    if json {
        out::json(&report)?;
    } else {
        outln!(
            "{} runs × {} steps, {} at once, durability {:?}\n  {:.0} steps/s · p50 {} µs · p99 {} µs · max {} µs · {} bytes/step · peak RSS {} KiB · {} ms",
            report.runs,
            report.steps_per_run,
            report.concurrency,
            report.durability,
            report.steps_per_s,
            report.p50_us,
            report.p99_us,
            report.max_us,
            report.bytes_per_step,
            report.peak_rss_kb,
            report.elapsed_ms
        );
    }
    Ok(0)
}

pub(crate) fn gate(
    policies: usize,
    decisions: usize,
    guards: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let report = bench::gate(policies, decisions, guards)?;
    if json {
        out::json(&report)?;
    } else {
        outln!(
            "{} policies, {} decisions\n  p50 {:.1} µs · p99 {:.1} µs · {:.0} decisions/s on one thread\n  of which provenance, argument facts, counters and grants: p50 {:.1} µs",
            report.policies,
            report.decisions,
            report.p50_us,
            report.p99_us,
            report.decisions_per_s,
            report.facts_p50_us
        );
    }
    Ok(0)
}

pub(crate) async fn controls(steps: usize, json: bool) -> anyhow::Result<u8> {
    let r = bench::controls(steps).await?;
    if json {
        out::json(&r)?;
    } else {
        outln!(
            "{} steps\n  budget accounting (reserve + settle on {} ledger lines, durable): p50 {:.1} µs · p99 {:.1} µs\n  context building (tiktoken counts + compaction to 8,000 tokens; {} messages, {} outputs elided at the end): p50 {:.1} µs · p99 {:.1} µs",
            r.steps,
            r.budget_lines,
            r.budget_p50_us,
            r.budget_p99_us,
            r.final_messages,
            r.final_elided,
            r.context_p50_us,
            r.context_p99_us
        );
    }
    Ok(0)
}

pub(crate) fn audit(records: u64, json: bool) -> anyhow::Result<u8> {
    let report = bench::audit(records)?;
    if json {
        out::json(&report)?;
    } else {
        outln!(
            "{} records\n  append (durable, fsync per batch of {}): {:.0} records/s · verify: {:.0} records/s · {} bytes/record",
            report.records,
            report.batch,
            report.append_per_s,
            report.verify_per_s,
            report.bytes_per_record
        );
    }
    Ok(0)
}
