//! `rein bench serve`: a `rein serve` process under load from this one, on loopback, with the
//! scripted model: how many runs it starts a second, how long `POST /v1/runs` takes, and how
//! much memory it holds idle and with many runs suspended waiting for approval.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::out::{self, outln};

/// What was measured.
#[derive(Debug, Serialize)]
struct Report {
    runs: usize,
    concurrency: usize,
    runs_started_per_s: f64,
    post_p50_ms: f64,
    post_p99_ms: f64,
    rss_idle_kb: u64,
    rss_after_runs_kb: u64,
    suspended: usize,
    rss_suspended_kb: u64,
    suspend_s: f64,
}

const SCRIPT: &str =
    "[[turns]]\ncalls = [{ tool = \"pay\", args = { amount = 5 } }]\n[[turns]]\ntext = \"paid\"\n";

/// An agent paying through a tool; `ask` makes every payment wait for a person.
fn write_agent(root: &std::path::Path, name: &str, ask: bool) -> anyhow::Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("policies"))?;
    std::fs::create_dir_all(dir.join("workspace"))?;
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "name = \"{name}\"\ninstructions = \"Pay.\"\ndefault_task = \"pay\"\n[model]\nprovider = \"scripted\"\nname = \"bench\"\nscript = \"script.toml\"\n[[tools]]\nname = \"pay\"\ndescription = \"Pay\"\ncommand = [\"true\"]\nargs_schema = {{ type = \"object\" }}\non_timeout = \"failed\"\n"
        ),
    )?;
    std::fs::write(dir.join("script.toml"), SCRIPT)?;
    let policy = if ask {
        "@ask(\"a person pays\")\npermit(principal, action == Action::\"pay\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n"
    } else {
        "permit(principal, action, resource);\n"
    };
    std::fs::write(dir.join("policies/all.cedar"), policy)?;
    Ok(())
}

/// The server process, stopped (SIGTERM, then waited for) however the bench ends.
pub(crate) struct Server(pub(crate) std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// A process's resident memory now, in KiB.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn post_run(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    agent: &str,
) -> anyhow::Result<()> {
    let r = client
        .post(format!("{base}/v1/runs"))
        .bearer_auth(token)
        .json(&serde_json::json!({"agent": agent}))
        .send()
        .await?;
    if r.status() != 202 {
        let status = r.status();
        anyhow::bail!(
            "POST /v1/runs answered {status}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

pub(crate) async fn serve(
    runs: usize,
    concurrency: usize,
    suspended: usize,
    json: bool,
) -> anyhow::Result<u8> {
    let scratch = tempfile::tempdir()?;
    let (state, agents) = (scratch.path().join("state"), scratch.path().join("agents"));
    write_agent(&agents, "quick", false)?;
    write_agent(&agents, "wait", true)?;
    let rein = rein_api::Rein::new(rein_api::Options::new(&state))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let scopes = ["runs:write".to_owned()];
    let (token, _) = rein.create_token("bench", "bench", &scopes, None, now)?;
    drop(rein);
    let (child, base) = start_server(&state, &agents, &[])?;
    let pid = child.0.id();
    let client = reqwest::Client::new();
    // One run first, so the agents are loaded and the database is warm.
    post_run(&client, &base, &token, "quick").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle_kb = rss_kb(pid);

    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let began = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (client, base, token, next) =
            (client.clone(), base.clone(), token.clone(), next.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                let t = Instant::now();
                post_run(&client, &base, &token, "quick").await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(runs);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = began.elapsed().as_secs_f64();
    let rss_after_runs_kb = rss_kb(pid);
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&latencies, p);

    // Runs that wait for a person: started, then counted until every one is suspended.
    let began = Instant::now();
    for chunk in (0..suspended)
        .collect::<Vec<_>>()
        .chunks(concurrency.max(1))
    {
        let mut set = tokio::task::JoinSet::new();
        for _ in chunk {
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            set.spawn(async move { post_run(&client, &base, &token, "wait").await });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
    }
    loop {
        if suspended_runs(&state)? >= suspended {
            break;
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "runs did not suspend"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let suspend_s = began.elapsed().as_secs_f64();
    // Let the runs' drivers finish and memory settle before reading it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_suspended_kb = rss_kb(pid);
    drop(child);
    let report = Report {
        runs,
        concurrency,
        runs_started_per_s: runs as f64 / elapsed,
        post_p50_ms: pct(0.50),
        post_p99_ms: pct(0.99),
        rss_idle_kb,
        rss_after_runs_kb,
        suspended,
        rss_suspended_kb,
        suspend_s,
    };
    if json {
        out::json(&report)?;
    } else {
        outln!(
            "{} runs, {} requests at once: {:.0} runs started/s · POST /v1/runs p50 {:.2} ms · p99 {:.2} ms\n  rein serve RSS: idle {} KiB · after the runs {} KiB · with {} runs suspended waiting for approval {} KiB (suspended in {:.1} s)",
            report.runs,
            report.concurrency,
            report.runs_started_per_s,
            report.post_p50_ms,
            report.post_p99_ms,
            report.rss_idle_kb,
            report.rss_after_runs_kb,
            report.suspended,
            report.rss_suspended_kb,
            report.suspend_s
        );
    }
    Ok(0)
}

/// Starts `rein serve` (this binary) on a free loopback port for `agents`, with no request rate
/// limit and these environment variables; answers with the process and its base URL.
pub(crate) fn start_server(
    state: &std::path::Path,
    agents: &std::path::Path,
    envs: &[(&str, &str)],
) -> anyhow::Result<(Server, String)> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .envs(envs.iter().copied())
        .arg("--state-dir")
        .arg(state)
        .args(["serve", "--listen", "127.0.0.1:0", "--agents"])
        .arg(agents)
        .args(["--rate", "1000000", "--burst", "1000000"]);
    start_listening(command, "rein serve: listening on ")
}

/// Starts a process of this binary that announces its address on its first line of output
/// (`announce` followed by the address), and answers with it.
pub(crate) fn start_listening(
    mut command: Command,
    announce: &str,
) -> anyhow::Result<(Server, String)> {
    let mut child = Server(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?,
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let base = line
        .trim()
        .strip_prefix(announce)
        .with_context(|| format!("{command:?} did not start: it printed {line:?}"))?
        .to_owned();
    Ok((child, base))
}

/// The value at fraction `p` of sorted `values`.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// Runs of the `wait` agent suspended waiting for approval, counted from the store.
fn suspended_runs(state: &std::path::Path) -> anyhow::Result<usize> {
    let rein = rein_api::Rein::new(rein_api::Options::new(state))?;
    Ok(rein
        .list_runs(&rein_api::RunQuery {
            limit: usize::MAX >> 1,
            agent: Some("wait".into()),
            ..Default::default()
        })?
        .iter()
        .filter(|r| {
            r.status == rein_api::v1::RunStatus::Ended(rein_api::v1::EndState::AwaitingApproval)
        })
        .count())
}
