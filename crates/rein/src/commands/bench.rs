//! `rein bench ...`: rein's own costs on this machine. Its subcommands' shape is here beside
//! the handlers (the gateway's and the server's in `bench_gateway` and `bench_serve`).

use clap::Subcommand;
use rein_api::bench;

use crate::cli::DurabilityArg;
use crate::commands::{bench_gateway, bench_serve};
use crate::out::{self, outln};

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// The gateway under load from this process on loopback, in front of a mock upstream, with a
    /// policy, a budget and the audit trail on every request: requests per second, rein's CPU
    /// time per request, the latency it adds to calling the mock directly, and its memory.
    Gateway {
        /// Requests to send.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Rounds to measure, one after another against the same server: each figure is their
        /// median (on a shared or virtual machine, where one round's CPU and latency drift, take
        /// three or more), with each round's own in `per_round`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        rounds: u16,
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Measure a bare relay in rein serve's place: each request forwarded to the mock and
        /// its reply returned, through the same HTTP server and client, with nothing judged,
        /// reserved or recorded. Its figures are the floor under any gateway's on this machine.
        #[arg(long)]
        floor: bool,
    },
    /// The mock upstream `rein bench gateway` measures against, as a process of its own (as a
    /// provider is to its clients): prints the address it listens on, then serves until stopped.
    #[command(hide = true)]
    MockUpstream,
    /// The bare relay `rein bench gateway --floor` measures: prints the address it listens on,
    /// then relays to the upstream at this base URL until stopped.
    #[command(hide = true)]
    Relay {
        /// The upstream's base URL.
        upstream: String,
    },
    /// `rein serve` under load from this process on loopback: runs started per second, the
    /// latency of `POST /v1/runs`, and the server's memory idle and with runs suspended.
    Serve {
        /// Runs to start.
        #[arg(long, default_value_t = 2000)]
        runs: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Runs left suspended waiting for approval, for the memory figure.
        #[arg(long, default_value_t = 1000)]
        suspended: usize,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Audit log append rate (durable) and verification rate.
    Audit {
        /// Records to append and verify.
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// What budget accounting and context building cost per model step.
    Controls {
        /// Steps to measure (the conversation grows by one tool output each).
        #[arg(long, default_value_t = 500)]
        steps: usize,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Gate decision latency with N generated policies.
    Gate {
        /// Policies to generate.
        #[arg(long, default_value_t = 100)]
        policies: usize,
        /// Decisions to time.
        #[arg(long, default_value_t = 20_000)]
        decisions: usize,
        /// Let a fifth of the policies read provenance, facts, data, counters and grants.
        #[arg(long)]
        guards: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The runtime's cost per durable tool step (scripted model, no-op tool).
    Steps {
        /// Runs in all.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Runs at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Tool steps per run.
        #[arg(long, default_value_t = 50)]
        steps: u32,
        /// Commit durability.
        #[arg(long, value_enum, default_value_t = DurabilityArg::Normal)]
        durability: DurabilityArg,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `rein bench` subcommand.
pub(crate) async fn run(command: &BenchCommand) -> anyhow::Result<u8> {
    match *command {
        BenchCommand::Steps {
            runs,
            concurrency,
            steps,
            durability,
            json,
        } => self::steps(runs, concurrency, steps, durability.fsync(), json).await,
        BenchCommand::Gate {
            policies,
            decisions,
            guards,
            json,
        } => gate(policies, decisions, guards, json),
        BenchCommand::Controls { steps, json } => controls(steps, json).await,
        BenchCommand::Audit { records, json } => audit(records, json),
        BenchCommand::Serve {
            runs,
            concurrency,
            suspended,
            json,
        } => bench_serve::serve(runs, concurrency, suspended, json).await,
        BenchCommand::Gateway {
            requests,
            concurrency,
            rounds,
            json,
            floor,
        } => bench_gateway::gateway(requests, concurrency, usize::from(rounds), json, floor).await,
        BenchCommand::MockUpstream => bench_gateway::mock_upstream().await,
        BenchCommand::Relay { ref upstream } => bench_gateway::relay(upstream).await,
    }
}

async fn steps(
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

fn gate(policies: usize, decisions: usize, guards: bool, json: bool) -> anyhow::Result<u8> {
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

async fn controls(steps: usize, json: bool) -> anyhow::Result<u8> {
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

fn audit(records: u64, json: bool) -> anyhow::Result<u8> {
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
