//! `rein bench steps`: the runtime's own cost per durable tool step.
//!
//! Each run plays a script in which every turn calls a no-op tool, so what is measured is rein
//! itself: building the model request, recording the request, reply, intent and outcome, waiting
//! for the intent and outcome to be durable, and deciding the next step. A step's latency runs
//! from one model request to the next, so it includes the outcome's commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rein_core::{Durability, Event, Limits, StoredEvent};
use rein_model::{ScriptedCall, ScriptedProvider, ScriptedTurn};
use rein_store::{SqliteStore, Store};
use rein_tools::{Noop, ToolRegistry};
use serde::Serialize;

use crate::{Agent, Engine, EngineError, Observer};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Runs in all.
    pub runs: usize,
    /// Runs at once.
    pub concurrency: usize,
    /// Tool steps per run.
    pub steps: u32,
    /// Commit durability.
    pub durability: Durability,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Runs completed.
    pub runs: usize,
    /// Runs at once.
    pub concurrency: usize,
    /// Tool steps per run.
    pub steps_per_run: u32,
    /// `normal` or `fsync`.
    pub durability: Durability,
    /// Durable tool steps per second, over all runs.
    pub steps_per_s: f64,
    /// Median step latency.
    pub p50_us: u64,
    /// 99th percentile step latency.
    pub p99_us: u64,
    /// Slowest step.
    pub max_us: u64,
    /// Bytes on disk per step (database after checkpoint, divided by all steps).
    pub bytes_per_step: u64,
    /// Peak resident memory of the process, in KiB.
    pub peak_rss_kb: u64,
    /// Wall-clock time of the whole benchmark.
    pub elapsed_ms: u64,
}

/// Times steps from one model request to the next, per run.
#[derive(Default)]
struct StepTimer {
    last_request: Mutex<HashMap<String, Instant>>,
    samples: Mutex<Vec<u64>>,
}

impl Observer for StepTimer {
    fn on_event(&self, run_id: &str, event: &StoredEvent) {
        if let Event::ModelRequested { step, .. } = &event.event {
            let now = Instant::now();
            let previous = self
                .last_request
                .lock()
                .ok()
                .and_then(|mut m| m.insert(run_id.to_owned(), now));
            if let (Some(previous), true) = (previous, *step > 1)
                && let Ok(mut samples) = self.samples.lock()
            {
                samples.push(now.duration_since(previous).as_micros() as u64);
            }
        }
    }
}

/// Runs the benchmark with its store in `dir` (which should be empty and is left behind).
pub async fn bench_steps(dir: &Path, options: BenchOptions) -> Result<BenchReport, EngineError> {
    let store = Arc::new(SqliteStore::open(dir, options.durability)?);
    let engine = Arc::new(Engine::new(store.clone(), dir));
    let mut turns: Vec<ScriptedTurn> = (0..options.steps)
        .map(|_| ScriptedTurn {
            text: None,
            calls: vec![ScriptedCall {
                tool: "noop".into(),
                args: None,
                raw_args: None,
            }],
        })
        .collect();
    turns.push(ScriptedTurn {
        text: Some("done".into()),
        calls: vec![],
    });
    let mut tools = ToolRegistry::new();
    tools
        .register(Arc::new(Noop::default()))
        .map_err(|e| EngineError::Agent(e.to_string()))?;
    let agent = Arc::new(Agent {
        name: "bench".into(),
        dir: None,
        digest: "bench".into(),
        instructions: "Call the no-op tool until the script ends.".into(),
        provider: Arc::new(ScriptedProvider::new("bench-script", turns)),
        max_attempts: 1,
        max_backoff: Duration::ZERO,
        tools,
        limits: Limits {
            max_steps: options.steps + 1,
            wall_clock_ms: u64::MAX / 2,
        },
        workspace: dir.to_owned(),
        isolate_workspace: false,
    });
    let timer = Arc::new(StepTimer::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(options.runs);
    for _ in 0..options.runs {
        let (engine, agent, timer, permits) = (
            engine.clone(),
            agent.clone(),
            timer.clone(),
            permits.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|e| EngineError::Agent(e.to_string()))?;
            engine.start(&agent, "benchmark", timer.as_ref()).await
        }));
    }
    for task in tasks {
        let report = task
            .await
            .map_err(|e| EngineError::Agent(format!("a benchmark run panicked: {e}")))??;
        if report.status != rein_core::EndState::Completed {
            return Err(EngineError::Agent(format!(
                "benchmark run {} ended {}: {:?}",
                report.run_id, report.status, report.reason
            )));
        }
    }
    let elapsed = began.elapsed();
    let mut samples = timer.samples.lock().map(|s| s.clone()).unwrap_or_default();
    samples.sort_unstable();
    let pct = |p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let total_steps = (options.runs as u64 * u64::from(options.steps)).max(1);
    Ok(BenchReport {
        runs: options.runs,
        concurrency: options.concurrency,
        steps_per_run: options.steps,
        durability: options.durability,
        steps_per_s: total_steps as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: samples.last().copied().unwrap_or(0),
        bytes_per_step: store.disk_bytes()? / total_steps,
        peak_rss_kb: peak_rss_kb(),
        elapsed_ms: elapsed.as_millis() as u64,
    })
}

/// The process's peak resident set (VmHWM), or 0 where /proc is not available.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
