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
use rein_policy::{Gate, GateSetup, PolicySource, ToolFacts};
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
    // As in a real run, every step is judged by the gate and written to the audit trail.
    let audit_options = rein_audit::AuditOptions {
        fsync: options.durability == Durability::Fsync,
        ..rein_audit::AuditOptions::default()
    };
    let audit = rein_audit::AuditLog::open(&dir.join("audit"), audit_options)
        .map_err(|e| EngineError::Audit(e.to_string()))?;
    let engine = Arc::new(Engine::new(store.clone(), dir, Arc::new(audit)));
    let mut turns: Vec<ScriptedTurn> = (0..options.steps)
        .map(|_| ScriptedTurn {
            on_injection: None,
            text: None,
            calls: vec![ScriptedCall {
                tool: "noop".into(),
                args: None,
                raw_args: None,
            }],
        })
        .collect();
    turns.push(ScriptedTurn {
        on_injection: None,
        text: Some("done".into()),
        calls: vec![],
    });
    let mut tools = ToolRegistry::new();
    tools
        .register(Arc::new(Noop::default()))
        .map_err(|e| EngineError::Agent(e.to_string()))?;
    // The benchmark measures the runtime with its gate: every model and tool call is judged.
    let facts = ToolFacts {
        name: "noop".into(),
        args_schema: tools
            .specs()
            .first()
            .map(|s| s.parameters.clone())
            .unwrap_or_default(),
        risk: "low".into(),
        idempotent: true,
        ..ToolFacts::default()
    };
    let setup = GateSetup {
        agent: "bench".into(),
        tools: vec![facts],
        models: vec!["bench-script".into()],
        ..GateSetup::default()
    };
    let policy = PolicySource {
        file: "bench.cedar".into(),
        text: "permit(principal, action, resource);".into(),
    };
    let gate = Gate::from_sources(&[policy], &setup).map_err(EngineError::Policy)?;
    let agent = Arc::new(Agent {
        gate: Arc::new(gate),
        approval_ttl: Duration::from_secs(60),
        output_labels: Default::default(),
        client_tools: Default::default(),
        gateway: false,
        fails_on_denied: false,
        output_fields: Default::default(),
        data_feeds: Default::default(),
        policy_data: Arc::new(crate::policy_data::PolicyData::none()),
        planner: None,
        answer: Default::default(),
        tool_facts: vec![],
        secrets: Arc::new(rein_tools::NoSecrets),
        redactor: Default::default(),
        delegates: Default::default(),
        parent_gate: None,
        sensitive: Default::default(),
        mcp_servers: vec![],
        load_notices: vec![],
        reply_limits: Default::default(),
        durability: options.durability,
        fallbacks: vec![],
        route_tool_results: None,
        route_wrap_up: None,
        budgets: vec![],
        max_tool_calls: None,
        prices: Default::default(),
        context: Default::default(),
        model_latency_target: None,
        tool_latency_target: None,
        resilience: Default::default(),
        breakers: Default::default(),
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

/// What `rein bench gate` measured.
#[derive(Debug, Clone, Serialize)]
pub struct GateBenchReport {
    /// Policies loaded.
    pub policies: usize,
    /// Whether a fifth of them read provenance, facts, data, counters and grants.
    pub guards: bool,
    /// Decisions made.
    pub decisions: usize,
    /// Median decision latency.
    pub p50_us: f64,
    /// 99th percentile decision latency.
    pub p99_us: f64,
    /// Of the median decision, the time spent on provenance, argument facts, counters and
    /// grants before judging.
    pub facts_p50_us: f64,
    /// Decisions per second on one thread.
    pub decisions_per_s: f64,
}

/// Measures gate decisions with `policies` generated policies over 20 tools: permits with
/// argument conditions, `@ask` permits, forbids on labels and tool groups, judged against a mix of
/// requests that land on every verdict. Each decision's time includes what the engine computes
/// before judging: every argument's provenance (against a task, instructions, five tool outputs
/// and fifty data values), the facts of its string arguments, the tool's counters and whether a
/// grant covers the call.
///
/// With `guards`, the fifth of the policies that match argument text with `like` read the facts
/// rein computes instead: where a value came from, policy data with counters, e-mail domains
/// with grants, so their cost in the context is measured too.
pub fn bench_gate(
    policies: usize,
    decisions: usize,
    guards: bool,
) -> Result<GateBenchReport, EngineError> {
    let tools: Vec<ToolFacts> = (0..20)
        .map(|i| ToolFacts {
            name: format!("tool{i}.run"),
            args_schema: serde_json::json!({
                "type": "object",
                "required": ["amount", "to"],
                "properties": {"amount": {"type": "number"}, "to": {"type": "string"}, "count": {"type": "integer"}}
            }),
            labels: if i % 4 == 0 { vec!["untrusted".into()] } else { vec![] },
            sink: i % 3 == 0,
            risk: ["low", "medium", "high"][i % 3].into(),
            idempotent: i % 2 == 0,
            groups: vec![format!("group{}", i % 5)],
        })
        .collect();
    let setup = GateSetup {
        agent: "bench".into(),
        tools,
        models: vec!["m".into()],
        data: vec!["payees".into()],
        ..GateSetup::default()
    };
    let mut text = String::from("permit(principal, action == Action::\"use_model\", resource);\n");
    // Every kind of policy is spread over all tools and groups: policy p is of kind p % 5, about
    // tool (7p / 5) % 20 and group (p / 5) % 5, so no tool carries all policies of one kind.
    for p in 1..policies.max(1) {
        let tool = format!("tool{}.run", (7 * p / 5) % 20);
        let group = (p / 5) % 5;
        text.push_str(&match p % 5 {
            0 => format!("permit(principal, action == Action::\"{tool}\", resource) when {{ context.args.amount.lessThan(decimal(\"{}.0\")) }};\n", 50 + p),
            1 => format!("@ask(\"big\")\npermit(principal, action == Action::\"{tool}\", resource) when {{ context.args.amount.greaterThan(decimal(\"{}.0\")) }};\n", 500 + p),
            2 => format!("forbid(principal, action in Action::\"call_tool\", resource in ToolGroup::\"group{group}\") when {{ context.labels.contains(\"confidential\") && resource.sink }};\n"),
            3 if guards => match (p / 5) % 3 {
                0 => format!("forbid(principal, action == Action::\"{tool}\", resource) when {{ context.from.to.contains(\"untrusted\") }};\n"),
                1 => format!("permit(principal, action == Action::\"{tool}\", resource) when {{ context.data.payees.contains(context.args.to) && context.counters.calls < {p} }};\n"),
                _ => format!("forbid(principal, action == Action::\"{tool}\", resource) when {{ context.facts has to && context.facts.to.email_domains.contains(\"evil{p}.test\") && !context.grants.covered }};\n"),
            },
            3 => format!("permit(principal, action == Action::\"{tool}\", resource) when {{ context.args.to like \"*@example{p}.com\" }};\n"),
            _ => format!("forbid(principal, action == Action::\"{tool}\", resource) when {{ context.user == \"blocked{p}\" && context.args has count && context.args.count > {p} }};\n"),
        });
    }

    let gate = Gate::from_sources(
        &[PolicySource {
            file: "generated.cedar".into(),
            text,
        }],
        &setup,
    )
    .map_err(EngineError::Policy)?;
    let labels = [
        vec![],
        vec!["untrusted".to_string()],
        vec!["confidential".to_string(), "pii".to_string()],
    ];
    // What a run has seen by the time it proposes a call: the task, the instructions, five tool
    // outputs of twenty records each (one field of each labelled untrusted), and fifty saved
    // payees as operator data; the run's grants cover some calls.
    let mut sources = rein_core::provenance::Sources::default();
    sources.add_text(
        "Pay 120.50 to someone@example7.com for invoice INV-2231 and tell me the balance",
        &[rein_core::provenance::TASK],
    );
    sources.add_text(
        "You are the bank's assistant. Never pay anyone who is not a saved payee.",
        &[rein_core::provenance::OPERATOR],
    );
    let fields: std::collections::BTreeMap<String, Vec<String>> =
        [("/items/*/memo".to_owned(), vec!["untrusted".to_owned()])].into();
    for t in 0..5 {
        let items: Vec<serde_json::Value> = (0..20)
            .map(|r| serde_json::json!({"id": format!("TX-{t}-{r:04}"), "amount": r * 10 + t, "memo": format!("transfer for order {r} from shop{t}.example.com"), "iban": format!("DE{:020}", t * 1000 + r)}))
            .collect();
        sources.add_json(&serde_json::json!({"items": items}), &|p| {
            rein_core::provenance::output_origins("bank.history", &[], &fields, p)
        });
    }
    let mut operator = rein_core::provenance::Sources::default();
    let mut payees = std::collections::BTreeSet::new();
    for i in 0..50 {
        let payee = format!("someone@example{i}.com");
        operator.add_text(&payee, &[rein_core::provenance::OPERATOR]);
        payees.insert(payee);
    }
    let data: rein_policy::DataSets = Arc::new([("payees".to_owned(), payees)].into());
    let grants = rein_core::grants::parse(
        r#"[{"tool": "tool1.run", "args": {"to": "someone@example7.com", "amount": {"max": 200}}}, {"tool": "tool2.run"}]"#,
    )
    .map_err(EngineError::Agent)?;
    let mut counter = rein_core::state::Counter::default();
    let mut samples = Vec::with_capacity(decisions);
    let mut facts_samples = Vec::with_capacity(decisions);
    let began = Instant::now();
    for i in 0..decisions {
        let args = serde_json::json!({"amount": (i % 1000) as f64 + 0.5, "to": format!("someone@example{}.com", i % 40), "count": i % 7});
        let tool = format!("tool{}.run", i % 20);
        let t = Instant::now();
        // Everything the engine computes for a call besides the judgement itself is timed too.
        let from = rein_core::provenance::of_args_in(&args, &[&sources, &operator]);
        let arg_facts =
            rein_policy::arg_facts(gate.string_args(&tool), &args, "/workspace", &sources);
        let covered = rein_core::grants::covering(&grants, &tool, &args, counter.calls).is_some();
        let facts = rein_policy::RequestFacts {
            budget_percent: 0,
            user: format!("user{}", i % 3),
            tenant: "t".into(),
            task: "bench".into(),
            labels: labels[i % 3].clone(),
            approved_by: None,
            from,
            facts: arg_facts,
            counter: counter.clone(),
            run_calls: counter.calls,
            cost_micros: 0,
            grants: rein_policy::GrantFacts {
                fixed: true,
                covered,
                tools: vec!["tool1.run".into(), "tool2.run".into()],
            },
            data: data.clone(),
        };
        facts_samples.push(t.elapsed().as_nanos() as u64);
        let decision = gate.judge_tool(&tool, &args, &facts);
        samples.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(decision);
        counter.add(&args);
    }
    let elapsed = began.elapsed();
    samples.sort_unstable();
    facts_samples.sort_unstable();
    let pct = |samples: &[u64], p: f64| {
        samples
            .get(((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok(GateBenchReport {
        policies: gate.policy_count(),
        guards,
        decisions,
        p50_us: pct(&samples, 0.50),
        p99_us: pct(&samples, 0.99),
        facts_p50_us: pct(&facts_samples, 0.50),
        decisions_per_s: decisions as f64 / elapsed.as_secs_f64(),
    })
}

/// What `rein bench audit` measured.
#[derive(Debug, Clone, Serialize)]
pub struct AuditBenchReport {
    /// Records appended and verified.
    pub records: u64,
    /// Records per append (each append is flushed to disk).
    pub batch: u64,
    /// Durable appends per second.
    pub append_per_s: f64,
    /// Records verified per second (recomputing the tree and checking every checkpoint).
    pub verify_per_s: f64,
    /// Bytes per record on disk.
    pub bytes_per_record: u64,
}

/// Appends `records` audit records shaped like a run's decisions, durably (fsync per append of
/// 64, as concurrent runs' records are grouped), then verifies the whole log.
pub fn bench_audit(records: u64) -> Result<AuditBenchReport, EngineError> {
    let dir = std::env::temp_dir().join(format!(
        "rein-bench-audit-{}",
        uuid::Uuid::now_v7().simple()
    ));
    let fail = |e: rein_audit::AuditError| EngineError::Audit(e.to_string());
    let log = rein_audit::AuditLog::open(
        &dir,
        rein_audit::AuditOptions {
            fsync: true,
            ..rein_audit::AuditOptions::default()
        },
    )
    .map_err(fail)?;
    let batch = 64u64;
    let began = Instant::now();
    let mut written = 0u64;
    while written < records {
        let n = batch.min(records - written);
        let entries: Vec<rein_audit::Entry> = (0..n)
            .map(|i| rein_audit::Entry {
                event: None,
                at_ms: 1_700_000_000_000 + written + i,
                kind: "decision".into(),
                run_id: Some(format!("01a2{:028x}", (written + i) / 50)),
                data: serde_json::json!({
                    "action": "call_tool", "tool": "refunds.issue", "call_id": format!("call_{}_1", (written + i) % 50),
                    "verdict": "allow", "policies": ["support-tools"], "reasons": [], "labels": ["untrusted"],
                    "args": {"order_id": "A-1001", "amount": 42.5},
                }).into(),
            })
            .collect();
        log.append(&entries).map_err(fail)?;
        written += n;
    }
    log.checkpoint(1_800_000_000_000).map_err(fail)?;
    let append = began.elapsed();
    let bytes = std::fs::metadata(&log.paths().records)
        .map(|m| m.len())
        .unwrap_or(0);
    let began = Instant::now();
    let report = rein_audit::verify(&dir, &[log.public_key()]).map_err(fail)?;
    let verify = began.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    if report.records != records {
        return Err(EngineError::Audit(format!(
            "verified {} records, wrote {records}",
            report.records
        )));
    }
    Ok(AuditBenchReport {
        records,
        batch,
        append_per_s: records as f64 / append.as_secs_f64(),
        verify_per_s: records as f64 / verify.as_secs_f64(),
        bytes_per_record: bytes / records.max(1),
    })
}

/// What `rein bench controls` measured, per model step.
#[derive(Debug, Clone, Serialize)]
pub struct ControlsBenchReport {
    /// Steps measured.
    pub steps: usize,
    /// Budget lines each step reserves on and settles to (run, user per day, tenant per month).
    pub budget_lines: usize,
    /// Reserve + settle on the durable ledger, median.
    pub budget_p50_us: f64,
    /// Reserve + settle, 99th percentile.
    pub budget_p99_us: f64,
    /// Building the context (counting the new messages' tokens with tiktoken o200k, compacting
    /// to the budget), median.
    pub context_p50_us: f64,
    /// Building the context, 99th percentile.
    pub context_p99_us: f64,
    /// Messages in the conversation at the last step.
    pub final_messages: usize,
    /// Tool outputs elided at the last step.
    pub final_elided: usize,
}

/// Measures, per model step, what budgets and context control add: reserving and settling a
/// model call's spend on three ledger lines in `dir` (a real SQLite ledger, in the store's file),
/// and building the context for a conversation that grows by a 2 KB tool output each step,
/// compacted to 8,000 tokens, with tokens counted by tiktoken as for an OpenAI model.
pub async fn bench_controls(dir: &Path, steps: usize) -> Result<ControlsBenchReport, EngineError> {
    use crate::context::{ContextWindow, TokenCounter};
    use rein_core::Message;
    use rein_core::budget::Spend;
    use rein_store::LedgerLine;

    let store = SqliteStore::open(dir, Durability::Normal)?;
    let ledger = store.ledger()?;
    let lines: Vec<LedgerLine> = ["run:bench", "user:ann", "tenant:acme"]
        .iter()
        .map(|key| LedgerLine {
            key: (*key).into(),
            period: "2026-11-23".into(),
            max_tokens: Some(u64::MAX / 4),
            max_cost_micros: Some(u64::MAX / 4),
        })
        .collect();
    let mut window = ContextWindow::new(TokenCounter::for_model("openai", "gpt-4o"));
    let mut messages = vec![Message::User {
        text: "Reconcile the invoices for November and report the mismatches.".into(),
    }];
    let pinned = std::collections::HashSet::new();
    let output: String = (0..2048)
        .map(|i| (b'a' + (i * 7 % 26) as u8) as char)
        .collect();
    let (mut budget_us, mut context_us) = (Vec::new(), Vec::new());
    let mut last = (0, 0);
    for step in 0..steps {
        messages.push(Message::Assistant {
            text: None,
            tool_calls: vec![rein_core::ToolCall {
                id: format!("c{step}"),
                name: "invoices.read".into(),
                arguments: serde_json::json!({"page": step}),
                invalid_arguments: None,
            }],
        });
        messages.push(Message::Tool {
            call_id: format!("c{step}"),
            name: "invoices.read".into(),
            content: format!("page {step}: {output}"),
            is_error: false,
        });
        let began = Instant::now();
        window.update(&messages, Some(8_000), 4, &pinned);
        context_us.push(began.elapsed().as_secs_f64() * 1e6);
        last = (window.messages().len(), window.elided().len());

        let began = Instant::now();
        let estimate = Spend {
            tokens: window.tokens() + 1024,
            cost_micros: 30_000,
        };
        let reservation = ledger
            .reserve(
                "bench",
                "bench",
                &lines,
                estimate,
                Spend::default(),
                60_000,
                step as u64,
            )
            .await?
            .map_err(|e| EngineError::Agent(e.to_string()))?;
        ledger
            .settle(
                &reservation,
                Spend {
                    tokens: window.tokens() + 200,
                    cost_micros: 20_000,
                },
            )
            .await?;
        budget_us.push(began.elapsed().as_secs_f64() * 1e6);
    }
    let pct = |samples: &mut Vec<f64>, q: f64| {
        samples.sort_by(|a, b| a.total_cmp(b));
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Ok(ControlsBenchReport {
        steps,
        budget_lines: lines.len(),
        budget_p50_us: pct(&mut budget_us, 0.5),
        budget_p99_us: pct(&mut budget_us, 0.99),
        context_p50_us: pct(&mut context_us, 0.5),
        context_p99_us: pct(&mut context_us, 0.99),
        final_messages: last.0,
        final_elided: last.1,
    })
}
