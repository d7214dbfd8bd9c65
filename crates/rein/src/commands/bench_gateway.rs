//! `rein bench gateway`: a `rein serve` gateway under load from this process on loopback, in
//! front of the mock upstream the project keeps (`rein_server::mock_upstream`), with a policy, a
//! budget and the audit trail on every request. The same requests go to the mock directly first,
//! so the latency rein adds is the difference; the server's CPU time comes from `/proc`. The mock
//! runs in a process of its own (`rein bench mock-upstream`), as a provider does: served from
//! inside this process, its direct calls never crossed a process (no thread had to be woken to
//! answer them), which made the direct figure lower than any real client's, and the difference
//! larger than what rein adds.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::commands::bench_serve::{percentile, rss_kb, start_listening, start_server};
use crate::out::{self, outln};

/// What was measured: each figure the median of the rounds', and each round's own.
#[derive(Debug, Serialize)]
struct Report {
    /// Whether a bare relay was measured in rein serve's place (`--floor`).
    floor: bool,
    requests: usize,
    concurrency: usize,
    rounds: usize,
    #[serde(flatten)]
    median: Figures,
    rss_idle_kb: u64,
    per_round: Vec<Figures>,
}

/// One round's figures: `requests` straight to the mock, then through the gateway.
#[derive(Debug, Serialize)]
struct Figures {
    requests_per_s: f64,
    cpu_us_per_request: f64,
    /// The same, by the server's thread (by name, as the kernel cuts it to 15 bytes: the request
    /// threads `tokio-rt-worker`, the store's writer `rein-store-writ`, its checkpointer
    /// `rein-store-chec`), of the threads alive at the end: where the time goes, without a
    /// profiler.
    cpu_us_per_request_by_thread: BTreeMap<String, f64>,
    /// The server's threads' context switches per request (voluntary and not): on a shared or
    /// virtual machine, whose CPU figures drift between runs, this one holds still.
    context_switches_per_request: f64,
    /// The server's write system calls per request (to files and sockets alike) and the KiB
    /// they wrote: a figure that, like context switches, holds still while CPU figures drift.
    /// What it adds over the floor's (`--floor`: the sockets alone) is the store's: one call a
    /// commit to the database's write-ahead log (its frames written at once, see
    /// `rein_store`'s log VFS), and one a page when the checkpointer copies it into the
    /// database (once per pass however often it was written); the bytes are mostly the pages.
    write_calls_per_request: f64,
    kib_written_per_request: f64,
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    gateway_p50_ms: f64,
    gateway_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
    rss_under_load_kb: u64,
}

impl Figures {
    /// Each figure's median over `rounds` (of an even number, the mean of the middle two).
    fn median(rounds: &[Figures]) -> Figures {
        let of = |f: &dyn Fn(&Figures) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => 0.0,
                n if n % 2 == 1 => v[n / 2],
                n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            }
        };
        let names: std::collections::BTreeSet<&String> = rounds
            .iter()
            .flat_map(|r| r.cpu_us_per_request_by_thread.keys())
            .collect();
        Figures {
            requests_per_s: of(&|r| r.requests_per_s),
            cpu_us_per_request: of(&|r| r.cpu_us_per_request),
            cpu_us_per_request_by_thread: names
                .into_iter()
                .map(|name| {
                    let us = of(&|r| {
                        r.cpu_us_per_request_by_thread
                            .get(name)
                            .copied()
                            .unwrap_or(0.0)
                    });
                    (name.clone(), us)
                })
                .collect(),
            context_switches_per_request: of(&|r| r.context_switches_per_request),
            write_calls_per_request: of(&|r| r.write_calls_per_request),
            kib_written_per_request: of(&|r| r.kib_written_per_request),
            direct_p50_ms: of(&|r| r.direct_p50_ms),
            direct_p99_ms: of(&|r| r.direct_p99_ms),
            gateway_p50_ms: of(&|r| r.gateway_p50_ms),
            gateway_p99_ms: of(&|r| r.gateway_p99_ms),
            added_p50_ms: of(&|r| r.added_p50_ms),
            added_p99_ms: of(&|r| r.added_p99_ms),
            rss_under_load_kb: of(&|r| r.rss_under_load_kb as f64).round() as u64,
        }
    }
}

/// The gateway: the mock as its model, a policy on the model and on each tool call, a tenant
/// budget per day and one per request, priced, so every request is judged, reserved and settled.
fn write_gateway(root: &std::path::Path, upstream: &str) -> anyhow::Result<()> {
    let dir = root.join("bench");
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "name = \"bench\"\n[gateway]\n[model]\nprovider = \"openai\"\nname = \"mock\"\nbase_url = \"{upstream}/v1\"\napi_key_env = \"REIN_BENCH_MOCK_KEY\"\nmax_tokens = 64\nmax_attempts = 1\n[budget]\ntokens = 100000\n[[budgets]]\nscope = \"tenant\"\nperiod = \"day\"\ncost_usd = 1000000.0\n[prices.mock]\ninput = 1.0\noutput = 4.0\n[[tools]]\nclient = true\nname = \"orders_lookup\"\ngroups = [\"support\"]\nargs_schema = {{ type = \"object\", properties = {{ order_id = {{ type = \"string\" }} }} }}\n[[tools]]\nclient = true\nname = \"send_email\"\nsink = true\ngroups = [\"support\"]\n"
        ),
    )?;
    std::fs::write(
        dir.join("policies/gateway.cedar"),
        "permit(principal, action == Action::\"use_model\", resource == Model::\"mock\");\npermit(principal, action in Action::\"call_tool\", resource in ToolGroup::\"support\");\n@ask(\"mail after untrusted input waits for a person\")\npermit(principal, action == Action::\"send_email\", resource) when { context.labels.contains(\"untrusted\") };\n",
    )?;
    Ok(())
}

/// The request every client sends: a user message and two declared tools.
fn body() -> serde_json::Value {
    let tool = |name: &str| {
        serde_json::json!({"type": "function", "function": {"name": name, "description": name,
            "parameters": {"type": "object", "properties": {}}}})
    };
    serde_json::json!({
        "model": "bench",
        "messages": [
            {"role": "system", "content": "You are a support agent."},
            {"role": "user", "content": "Where is my order A-1001?"},
        ],
        "tools": [tool("orders_lookup"), tool("send_email")],
    })
}

/// Sends `requests` requests, `concurrency` at a time; answers with their latencies (ms) and
/// the seconds it took.
async fn load(
    url: &str,
    token: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let client = reqwest::Client::new();
    let body = Arc::new(body());
    let next = Arc::new(AtomicUsize::new(0));
    let began = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, token, body, next) = (
            client.clone(),
            url.to_owned(),
            token.to_owned(),
            body.clone(),
            next.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&*body)
                    .send()
                    .await?;
                let status = r.status();
                let text = r.text().await?;
                anyhow::ensure!(status == 200, "{url} answered {status}: {text}");
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(requests);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok((latencies, elapsed))
}

/// CPU time a process has used, user and system, in microseconds (its exited threads' too).
fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, ticks) = stat_ticks(&stat).context("unreadable /proc stat")?;
    Ok(ticks * TICK_US)
}

/// What a process has written so far (its exited threads too): write system calls and bytes,
/// whether to files or sockets (`/proc/<pid>/io`'s `syscw` and `wchar`).
fn written(pid: u32) -> anyhow::Result<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/io"))
    };
    Ok((field("syscw")?, field("wchar")?))
}

/// A `/proc` tick: Linux fixes USER_HZ at 100 a second for user space.
const TICK_US: u64 = 10_000;

/// A `/proc/.../stat` line's command name (a thread's name, cut to 15 bytes by the kernel) and
/// its CPU time, user and system, in ticks.
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    // The name is in parentheses and may hold spaces and parentheses of its own.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks))
}

/// The threads a process has now (one that has exited no longer counts), by id: name, CPU
/// ticks, and context switches, voluntary and not.
fn threads(pid: u32) -> anyhow::Result<BTreeMap<String, (String, u64, u64)>> {
    let mut threads = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(task.path().join("stat")),
            std::fs::read_to_string(task.path().join("status")),
        ) else {
            continue;
        };
        let Some((name, ticks)) = stat_ticks(&stat) else {
            continue;
        };
        let switches = status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
        threads.insert(
            task.file_name().to_string_lossy().into_owned(),
            (name.to_owned(), ticks, switches),
        );
    }
    Ok(threads)
}

/// What the threads alive at `after` did since `before` (a thread started since counts from
/// nothing): CPU microseconds by thread name (threads of one name together), and context
/// switches.
fn threads_since(
    before: &BTreeMap<String, (String, u64, u64)>,
    after: &BTreeMap<String, (String, u64, u64)>,
) -> (BTreeMap<String, u64>, u64) {
    let (mut cpu, mut switches) = (BTreeMap::new(), 0);
    for (tid, (name, ticks, switched)) in after {
        let (was_ticks, was_switched) = before.get(tid).map_or((0, 0), |(_, t, s)| (*t, *s));
        *cpu.entry(name.clone()).or_insert(0) += ticks.saturating_sub(was_ticks) * TICK_US;
        switches += switched.saturating_sub(was_switched);
    }
    (cpu, switches)
}

pub(crate) async fn gateway(
    requests: usize,
    concurrency: usize,
    rounds: usize,
    json: bool,
    floor: bool,
) -> anyhow::Result<u8> {
    let mut mock = Command::new(std::env::current_exe()?);
    mock.args(["bench", "mock-upstream"]);
    let (mock, upstream) = start_listening(mock, MOCK_ANNOUNCE)?;

    let scratch = tempfile::tempdir()?;
    let (state, agents) = (scratch.path().join("state"), scratch.path().join("agents"));
    write_gateway(&agents, &upstream)?;
    let rein = rein_api::Rein::new(rein_api::Options::new(&state))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let (token, _) = rein.create_token("bench", "bench", &["gateway".to_owned()], None, now)?;
    drop(rein);
    let (child, base) = if floor {
        let mut relay = Command::new(std::env::current_exe()?);
        relay.args(["bench", "relay", &upstream]);
        start_listening(relay, RELAY_ANNOUNCE)?
    } else {
        start_server(&state, &agents, &[("REIN_BENCH_MOCK_KEY", "mock-key")])?
    };
    let pid = child.0.id();
    let gateway_url = format!("{base}/v1/chat/completions");
    let direct_url = format!("{upstream}/v1/chat/completions");

    // Warm both paths (connections, the loaded agent, the database), then measure.
    load(&gateway_url, &token, 50, concurrency).await?;
    load(&direct_url, &token, 50, concurrency).await?;
    let rss_idle_kb = rss_kb(pid);
    let mut per_round = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        per_round.push(
            round(
                pid,
                &direct_url,
                &gateway_url,
                &token,
                requests,
                concurrency,
            )
            .await?,
        );
    }
    let report = Report {
        floor,
        requests,
        concurrency,
        rounds: per_round.len(),
        median: Figures::median(&per_round),
        rss_idle_kb,
        per_round,
    };
    if json {
        out::json(&report)?;
    } else {
        let m = &report.median;
        // With more than one round, each figure is followed by its range over the rounds.
        let range = |f: &dyn Fn(&Figures) -> f64, digits: usize| {
            if report.rounds < 2 {
                return String::new();
            }
            let v = report.per_round.iter().map(f);
            let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
            format!(" ({lo:.digits$}–{hi:.digits$})")
        };
        outln!(
            "{} requests, {} at once, {}{}: {:.0}{} requests/s · {:.0}{} µs of {} CPU and {:.1}{} context switches per request\n  writes per request: {:.1}{} system calls, {:.1}{} KiB · CPU per request by thread: {}\n  latency added to the mock upstream: p50 {:.2}{} ms · p99 {:.2}{} ms (direct p50 {:.2} ms · p99 {:.2} ms; through {} p50 {:.2} ms · p99 {:.2} ms)\n  {} RSS: idle {} KiB · under load {}{} KiB",
            report.requests,
            report.concurrency,
            if floor {
                "through a bare relay (nothing judged, reserved or recorded: the floor)"
            } else {
                "through the gateway (policy, budget and audit on each)"
            },
            if report.rounds > 1 {
                format!(", median of {} rounds (range)", report.rounds)
            } else {
                String::new()
            },
            m.requests_per_s,
            range(&|r| r.requests_per_s, 0),
            m.cpu_us_per_request,
            range(&|r| r.cpu_us_per_request, 0),
            if floor { "the relay's" } else { "rein's" },
            m.context_switches_per_request,
            range(&|r| r.context_switches_per_request, 1),
            m.write_calls_per_request,
            range(&|r| r.write_calls_per_request, 1),
            m.kib_written_per_request,
            range(&|r| r.kib_written_per_request, 1),
            m.cpu_us_per_request_by_thread
                .iter()
                .filter(|(_, us)| **us >= 0.5)
                .map(|(name, us)| format!("{name} {us:.0} µs"))
                .collect::<Vec<_>>()
                .join(" · "),
            m.added_p50_ms,
            range(&|r| r.added_p50_ms, 2),
            m.added_p99_ms,
            range(&|r| r.added_p99_ms, 2),
            m.direct_p50_ms,
            m.direct_p99_ms,
            if floor { "the relay" } else { "rein" },
            m.gateway_p50_ms,
            m.gateway_p99_ms,
            if floor { "relay" } else { "rein serve" },
            report.rss_idle_kb,
            m.rss_under_load_kb,
            range(&|r| r.rss_under_load_kb as f64, 0),
        );
    }
    drop(child);
    drop(mock);
    Ok(0)
}

/// One round: `requests` straight to the mock, then as many through the gateway (served by
/// process `pid`), `concurrency` at a time.
async fn round(
    pid: u32,
    direct_url: &str,
    gateway_url: &str,
    token: &str,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Figures> {
    let (direct, _) = load(direct_url, token, requests, concurrency).await?;
    let (cpu_before, threads_before, io_before) = (cpu_us(pid)?, threads(pid)?, written(pid)?);
    let (through, elapsed) = load(gateway_url, token, requests, concurrency).await?;
    let cpu = cpu_us(pid)? - cpu_before;
    let io = written(pid)?;
    let (calls, bytes) = (io.0 - io_before.0, io.1 - io_before.1);
    let (by_thread, switches) = threads_since(&threads_before, &threads(pid)?);
    let per_request = |total: u64| total as f64 / requests as f64;
    Ok(Figures {
        requests_per_s: requests as f64 / elapsed,
        cpu_us_per_request: per_request(cpu),
        cpu_us_per_request_by_thread: by_thread
            .into_iter()
            .map(|(name, us)| (name, per_request(us)))
            .collect(),
        context_switches_per_request: per_request(switches),
        write_calls_per_request: per_request(calls),
        kib_written_per_request: per_request(bytes) / 1024.0,
        direct_p50_ms: percentile(&direct, 0.50),
        direct_p99_ms: percentile(&direct, 0.99),
        gateway_p50_ms: percentile(&through, 0.50),
        gateway_p99_ms: percentile(&through, 0.99),
        added_p50_ms: percentile(&through, 0.50) - percentile(&direct, 0.50),
        added_p99_ms: percentile(&through, 0.99) - percentile(&direct, 0.99),
        rss_under_load_kb: rss_kb(pid),
    })
}

/// The first line `rein bench relay` prints, before its address.
const RELAY_ANNOUNCE: &str = "rein relay: listening on ";

/// `rein bench relay <upstream>`: serves the bare relay on a port of loopback until stopped.
pub(crate) async fn relay(upstream: &str) -> anyhow::Result<u8> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    outln!("{RELAY_ANNOUNCE}http://{}", listener.local_addr()?);
    rein_server::mock_upstream::relay(listener, upstream).await?;
    Ok(0)
}

/// The first line `rein bench mock-upstream` prints, before its address.
const MOCK_ANNOUNCE: &str = "rein mock upstream: listening on ";

/// `rein bench mock-upstream`: serves the mock on a port of loopback until stopped.
pub(crate) async fn mock_upstream() -> anyhow::Result<u8> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    outln!("{MOCK_ANNOUNCE}http://{}", listener.local_addr()?);
    rein_server::mock_upstream::serve(listener).await?;
    Ok(0)
}
