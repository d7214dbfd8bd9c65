//! `rein bench gateway`: a `rein serve` gateway under load from this process on loopback, in
//! front of the mock upstream the project keeps (`rein_server::mock_upstream`), with a policy, a
//! budget and the audit trail on every request. The same requests go to the mock directly first,
//! so the latency rein adds is the difference; the server's CPU time comes from `/proc`. The mock
//! runs in a process of its own (`rein bench mock-upstream`), as a provider does: served from
//! inside this process, its direct calls never crossed a process (no thread had to be woken to
//! answer them), which made the direct figure lower than any real client's, and the difference
//! larger than what rein adds.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::commands::bench_serve::{percentile, rss_kb, start_listening, start_server};
use crate::out::{self, outln};

/// What was measured.
#[derive(Debug, Serialize)]
struct Report {
    requests: usize,
    concurrency: usize,
    requests_per_s: f64,
    cpu_us_per_request: f64,
    /// The server's threads' context switches per request (voluntary and not): on a shared or
    /// virtual machine, whose CPU figures drift between runs, this one holds still.
    context_switches_per_request: f64,
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    gateway_p50_ms: f64,
    gateway_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
    rss_idle_kb: u64,
    rss_under_load_kb: u64,
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

/// CPU time a process has used, user and system, in microseconds.
fn cpu_us(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("unreadable /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    // In USER_HZ ticks, which Linux fixes at 100 a second for user space.
    Ok(ticks * 10_000)
}

/// Context switches, voluntary and not, of the threads a process has now (a thread that has
/// exited no longer counts).
fn context_switches(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

pub(crate) async fn gateway(requests: usize, concurrency: usize, json: bool) -> anyhow::Result<u8> {
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
    let (child, base) = start_server(&state, &agents, &[("REIN_BENCH_MOCK_KEY", "mock-key")])?;
    let pid = child.0.id();
    let gateway_url = format!("{base}/v1/chat/completions");
    let direct_url = format!("{upstream}/v1/chat/completions");

    // Warm both paths (connections, the loaded agent, the database), then measure.
    load(&gateway_url, &token, 50, concurrency).await?;
    load(&direct_url, &token, 50, concurrency).await?;
    let rss_idle_kb = rss_kb(pid);
    let (direct, _) = load(&direct_url, &token, requests, concurrency).await?;
    let (cpu_before, switches_before) = (cpu_us(pid)?, context_switches(pid)?);
    let (through, elapsed) = load(&gateway_url, &token, requests, concurrency).await?;
    let cpu = cpu_us(pid)? - cpu_before;
    let switches = context_switches(pid)?.saturating_sub(switches_before);
    let rss_under_load_kb = rss_kb(pid);

    let report = Report {
        requests,
        concurrency,
        requests_per_s: requests as f64 / elapsed,
        cpu_us_per_request: cpu as f64 / requests as f64,
        context_switches_per_request: switches as f64 / requests as f64,
        direct_p50_ms: percentile(&direct, 0.50),
        direct_p99_ms: percentile(&direct, 0.99),
        gateway_p50_ms: percentile(&through, 0.50),
        gateway_p99_ms: percentile(&through, 0.99),
        added_p50_ms: percentile(&through, 0.50) - percentile(&direct, 0.50),
        added_p99_ms: percentile(&through, 0.99) - percentile(&direct, 0.99),
        rss_idle_kb,
        rss_under_load_kb,
    };
    if json {
        out::json(&report)?;
    } else {
        outln!(
            "{} requests, {} at once, through the gateway (policy, budget and audit on each): {:.0} requests/s · {:.0} µs of rein's CPU and {:.1} context switches per request\n  latency added to the mock upstream: p50 {:.2} ms · p99 {:.2} ms (direct p50 {:.2} ms · p99 {:.2} ms; through rein p50 {:.2} ms · p99 {:.2} ms)\n  rein serve RSS: idle {} KiB · under load {} KiB",
            report.requests,
            report.concurrency,
            report.requests_per_s,
            report.cpu_us_per_request,
            report.context_switches_per_request,
            report.added_p50_ms,
            report.added_p99_ms,
            report.direct_p50_ms,
            report.direct_p99_ms,
            report.gateway_p50_ms,
            report.gateway_p99_ms,
            report.rss_idle_kb,
            report.rss_under_load_kb
        );
    }
    drop(child);
    drop(mock);
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
