//! The rein binary, driven as a user would: the quick start, exit codes, readable output, bad
//! input, and the crash test, in which the example agent is killed with SIGKILL at every event
//! boundary and after every tool effect, then resumed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{REIN, assert_positive, bench_report, example, json_out, rein};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Refunds and emails the support-desk tools wrote in a run's workspace.
fn effects(workspace: &Path) -> (usize, usize) {
    let refunds = std::fs::read_to_string(workspace.join("refunds.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    let emails = std::fs::read_dir(workspace.join("outbox"))
        .map(|d| d.count())
        .unwrap_or(0);
    (refunds, emails)
}

#[test]
fn the_quick_start_completes_offline_and_shows_its_timeline() {
    let state = tempfile::tempdir().unwrap();
    let run = rein(
        state.path(),
        &["run", example().to_str().unwrap(), "--json"],
    );
    assert_eq!(
        run.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = json_out(&run);
    assert_eq!(report["status"], "completed");
    assert_eq!(report["steps"], 5);
    assert_eq!(report["tool_calls"], 4);
    assert!(
        report["output"]
            .as_str()
            .unwrap()
            .contains("refunded $42.50")
    );
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(
        effects(Path::new(report["workspace"].as_str().unwrap())),
        (1, 1)
    );
    // The example's own folder is never written to.
    assert!(!example().join("workspace/refunds.jsonl").exists());

    let show = rein(state.path(), &["runs", "show", &run_id[..10]]);
    let text = String::from_utf8(show.stdout).unwrap();
    for needle in [
        "▶ run",
        "task: Customer jane@example.com",
        "step 3",
        "✓ refunds.issue",
        "\"amount\":42.5",
        "■ completed",
        "5 steps · 4 tool calls",
        "support-script, ",
    ] {
        assert!(
            text.contains(needle),
            "`runs show` lacks {needle:?}:\n{text}"
        );
    }
    assert!(!text.contains("\u{1b}["), "no colour codes when piped");

    let list = json_out(&rein(state.path(), &["runs", "list", "--json"]));
    assert_eq!(list[0]["id"], run_id);
    assert_eq!(list[0]["status"], "completed");

    // Costs: per step and in total, from the example's prices, and in the budget ledger.
    let cost = report["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost < 0.5, "{cost}");
    let usage = json_out(&rein(
        state.path(),
        &["usage", "--tenant", "default", "--json"],
    ));
    assert_eq!(usage[0]["key"], "tenant:default");
    assert_eq!(usage[0]["calls"], 5);
    assert_eq!(usage[0]["max_cost_micros"], 25_000_000);
    assert_eq!(
        usage[0]["cost_micros"].as_f64().unwrap(),
        (cost * 1e6).round()
    );
    let table = String::from_utf8(rein(state.path(), &["usage"]).stdout).unwrap();
    assert!(
        table.contains("tenant:default") && table.contains("run:"),
        "{table}"
    );

    // Without --json a person sees each step as it happens, and the exit code is the same.
    let human = rein(
        state.path(),
        &[
            "run",
            example().to_str().unwrap(),
            "--task",
            "Customer jane@example.com: order A-1001 arrived damaged.",
        ],
    );
    assert_eq!(human.status.code(), Some(0));
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("step 1 “Let me look up order A-1001.” → orders.lookup"),
        "{text}"
    );
    assert!(text.contains("details: rein runs show"), "{text}");
}

/// Starts the example with a fault point, waits until rein reports it has stopped there, and
/// kills it with SIGKILL. Returns the run's id and workspace.
fn run_and_kill(state: &Path, fault: (&str, u64), resume: Option<&str>) -> (String, PathBuf) {
    let mut cmd = Command::new(REIN);
    cmd.arg("--state-dir").arg(state);
    match resume {
        None => cmd.args(["run", example().to_str().unwrap(), "--json"]),
        Some(id) => cmd.args(["runs", "resume", id, "--json"]),
    };
    let mut child = cmd
        .env(fault.0, fault.1.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut reached = false;
    for line in stderr.lines() {
        if line.unwrap().contains("fault injection point reached") {
            reached = true;
            break;
        }
    }
    assert!(reached, "rein never reached {}={}", fault.0, fault.1);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let runs = json_out(&rein(state, &["runs", "list", "--json"]));
    let run_id = runs[0]["id"].as_str().unwrap().to_owned();
    let show = json_out(&rein(state, &["runs", "show", &run_id, "--json"]));
    let workspace = PathBuf::from(show["events"][0]["event"]["workspace"].as_str().unwrap());
    (run_id, workspace)
}

fn resume_to_end(state: &Path, run_id: &str) -> Value {
    let out = rein(state, &["runs", "resume", run_id, "--json"]);
    let report = json_out(&out);
    let expected_code = match report["status"].as_str().unwrap() {
        "completed" => 0,
        "needs_reconciliation" => 12,
        other => panic!("resumed run ended {other}: {report}"),
    };
    assert_eq!(out.status.code(), Some(expected_code));
    report
}

fn check_effects(what: &str, report: &Value, workspace: &Path) {
    let (refunds, emails) = effects(workspace);
    assert!(
        refunds <= 1 && emails <= 1,
        "{what}: {refunds} refunds and {emails} emails"
    );
    match report["status"].as_str().unwrap() {
        "completed" => assert_eq!((refunds, emails), (1, 1), "{what}"),
        _ => {
            let call = report["call_id"].as_str().unwrap();
            assert!(
                call == "call_3_1" || call == "call_4_1",
                "{what}: in doubt {call}"
            );
            assert!(
                report["reason"]
                    .as_str()
                    .unwrap()
                    .contains("not idempotent"),
                "{what}"
            );
        }
    }
}

#[test]
fn killed_at_every_event_boundary_and_after_every_effect_resumes_without_repeating_effects() {
    // A clean run says where the boundaries are: every event but the last is a place to die, and
    // the intents of tools that are not idempotent are the only places that leave an effect in
    // doubt.
    let clean = tempfile::tempdir().unwrap();
    let report = json_out(&rein(
        clean.path(),
        &["run", example().to_str().unwrap(), "--json"],
    ));
    let show = json_out(&rein(
        clean.path(),
        &["runs", "show", report["run_id"].as_str().unwrap(), "--json"],
    ));
    let events = show["events"].as_array().unwrap();
    let total = events.len() as u64;
    let in_doubt: Vec<u64> = events
        .iter()
        .filter(|e| e["event"]["type"] == "tool_intent" && e["event"]["idempotent"] == false)
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(in_doubt.len(), 2, "the refund and the email");
    let mut doubtful = Vec::new();
    for n in 1..total {
        let state = tempfile::tempdir().unwrap();
        let (run_id, workspace) = run_and_kill(state.path(), ("REIN_FAULT_AFTER_EVENT", n), None);
        let report = resume_to_end(state.path(), &run_id);
        check_effects(&format!("killed after event {n}"), &report, &workspace);
        if report["status"] == "needs_reconciliation" {
            doubtful.push(n);
        }
    }
    assert_eq!(doubtful, in_doubt);

    for effect in 1..=4u64 {
        let state = tempfile::tempdir().unwrap();
        let (run_id, workspace) =
            run_and_kill(state.path(), ("REIN_FAULT_AFTER_EFFECT", effect), None);
        let report = resume_to_end(state.path(), &run_id);
        check_effects(
            &format!("killed after effect {effect}"),
            &report,
            &workspace,
        );
        // The lookup and the policy read are idempotent and are run again; the refund and the
        // email happened, but their outcome is unknown, so they are reported, not repeated.
        let expected = if effect <= 2 {
            "completed"
        } else {
            "needs_reconciliation"
        };
        assert_eq!(report["status"], expected, "killed after effect {effect}");
        if effect > 2 {
            assert_eq!(
                effects(&workspace),
                if effect == 3 { (1, 0) } else { (1, 1) }
            );
        }
    }

    // Killed again while resuming: the log still carries the run to its end.
    let firsts = [2, total / 3, total / 2, 2 * total / 3]
        .map(|n| if in_doubt.contains(&n) { n + 1 } else { n });
    for (first, second) in firsts.map(|n| (n, n + 5)) {
        let state = tempfile::tempdir().unwrap();
        let (run_id, workspace) =
            run_and_kill(state.path(), ("REIN_FAULT_AFTER_EVENT", first), None);
        run_and_kill(
            state.path(),
            ("REIN_FAULT_AFTER_EVENT", second),
            Some(&run_id),
        );
        let report = resume_to_end(state.path(), &run_id);
        check_effects(
            &format!("killed after event {first}, then {second}"),
            &report,
            &workspace,
        );
        let show = json_out(&rein(state.path(), &["runs", "show", &run_id, "--json"]));
        let resumes = show["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"]["type"] == "run_resumed")
            .count();
        assert_eq!(resumes, 2);
    }
}

fn agent_folder(agent_toml: &str, script: &str) -> rein_testkit::AgentFolder {
    rein_testkit::AgentFolder::new(agent_toml).file("script.toml", script)
}

const LOOPING: &str = "name = \"loop\"\ninstructions = \"x\"\ndefault_task = \"go\"\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\n[[tools]]\nbuiltin = \"fs.read\"\n";

#[test]
fn each_end_state_has_its_exit_code() {
    let state = tempfile::tempdir().unwrap();
    let turn = "[[turns]]\ntext = \"reading\"\ncalls = [{ tool = \"fs.read\", args = { path = \"missing.txt\" } }]\n";

    let budget = agent_folder(
        &format!("{LOOPING}[limits]\nmax_steps = 2\n"),
        &turn.repeat(3),
    );
    let out = rein(
        state.path(),
        &["run", budget.path().to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(11));
    let report = json_out(&out);
    assert_eq!(report["status"], "budget_exhausted");
    assert_eq!(report["output"], "reading");

    let failing = agent_folder(LOOPING, turn);
    let out = rein(
        state.path(),
        &["run", failing.path().to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(10));
    assert_eq!(json_out(&out)["status"], "failed");

    let out = rein(
        state.path(),
        &["runs", "resume", json_out(&out)["run_id"].as_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already ended as failed"));
}

#[test]
fn bad_input_gets_a_clear_error_not_a_panic() {
    let state = tempfile::tempdir().unwrap();
    let broken = agent_folder(
        "name = \"x\"\ninstructions = \"y\"\n\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\ntemperature = \"hot\"\n",
        "",
    );
    let out = rein(
        state.path(),
        &["run", broken.path().to_str().unwrap(), "--task", "t"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("agent.toml:8:15: invalid type: string \"hot\", expected f32"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let no_task = agent_folder(
        "name = \"x\"\ninstructions = \"y\"\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\n",
        "[[turns]]\ntext = \"hi\"\n",
    );
    let out = rein(state.path(), &["run", no_task.path().to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no task: pass one (`--task"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = rein(state.path(), &["run", "/nonexistent/agent"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the agent folder"));
    let out = rein(state.path(), &["runs", "show", "zzzz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run matches `zzzz`"));
}

#[test]
fn the_benchmark_reports_its_figures() {
    let report = bench_report(&["steps", "--runs", "4", "--concurrency", "2", "--steps", "5"]);
    assert_positive(
        &report,
        &[
            "steps_per_s",
            "p50_us",
            "p99_us",
            "bytes_per_step",
            "peak_rss_kb",
        ],
    );
    assert!(report["p50_us"].as_u64() <= report["p99_us"].as_u64());
}

#[test]
fn the_gateway_benchmark_serves_every_request_and_reports_its_figures() {
    // A real `rein serve` in front of the project's mock upstream, loaded from this process.
    let report = bench_report(&[
        "gateway",
        "--requests",
        "30",
        "--concurrency",
        "3",
        "--rounds",
        "2",
    ]);
    assert_eq!(report["requests"], 30, "{report}");
    assert_eq!(report["floor"], false, "{report}");
    // Each figure is the median of the rounds' own: of two, their mean.
    let rounds = report["per_round"].as_array().unwrap();
    assert_eq!((report["rounds"].as_u64(), rounds.len()), (Some(2), 2));
    for figure in ["requests_per_s", "cpu_us_per_request", "added_p50_ms"] {
        let each: Vec<f64> = rounds.iter().map(|r| r[figure].as_f64().unwrap()).collect();
        let median = report[figure].as_f64().unwrap();
        assert!(
            (median - (each[0] + each[1]) / 2.0).abs() < 1e-9,
            "{figure}: {median} is not the mean of {each:?}"
        );
    }
    assert_positive(
        &report,
        &[
            "requests_per_s",
            "cpu_us_per_request",
            "context_switches_per_request",
            "write_calls_per_request",
            "kib_written_per_request",
            "direct_p50_ms",
            "gateway_p50_ms",
            "rss_idle_kb",
            "rss_under_load_kb",
        ],
    );
    // Where the server's CPU went, by thread: its request threads and the store's writer
    // among them, together no more than the process's own figure (which also holds threads
    // that exited; a tick of each thread may fall between the two readings).
    let by_thread = report["cpu_us_per_request_by_thread"]
        .as_object()
        .unwrap_or_else(|| panic!("no CPU by thread in {report}"));
    for name in ["tokio-rt-worker", "rein-store-writ"] {
        assert!(by_thread.contains_key(name), "no {name} in {report}");
    }
    let threads_total: f64 = by_thread.values().filter_map(|v| v.as_f64()).sum();
    let tick_each = 10_000.0 * by_thread.len() as f64 / 30.0;
    assert!(
        threads_total <= report["cpu_us_per_request"].as_f64().unwrap() + tick_each,
        "threads add up to more than the process: {report}"
    );
    for (p50, p99) in [
        ("direct_p50_ms", "direct_p99_ms"),
        ("gateway_p50_ms", "gateway_p99_ms"),
    ] {
        assert!(
            report[p50].as_f64() <= report[p99].as_f64(),
            "{p50} > {p99} in {report}"
        );
    }
    // A request's writes: its call upstream and its answer (a socket each), and its records
    // in the database's log (a write a commit, and the checkpointer's copies of its pages).
    let writes = report["write_calls_per_request"].as_f64().unwrap();
    assert!(writes >= 4.0, "{writes} write calls per request: {report}");
}

#[test]
fn the_gateway_benchmarks_floor_relays_every_request_and_records_nothing() {
    let report = bench_report(&[
        "gateway",
        "--floor",
        "--requests",
        "30",
        "--concurrency",
        "3",
    ]);
    assert_eq!(
        (report["floor"].as_bool(), report["requests"].as_u64()),
        (Some(true), Some(30))
    );
    assert_positive(
        &report,
        &["requests_per_s", "gateway_p50_ms", "rss_under_load_kb"],
    );
    // Its writes: each request forwarded, and its answer (two sockets, a call or two each),
    // and nothing recorded (rein serve makes about 8, its log's commits among them).
    let writes = report["write_calls_per_request"].as_f64().unwrap();
    assert!(
        (2.0..10.0).contains(&writes),
        "{writes} write calls per request: {report}"
    );
    // A relay, not rein serve: no store, so no store writer among its threads.
    let by_thread = report["cpu_us_per_request_by_thread"]
        .as_object()
        .unwrap_or_else(|| panic!("no CPU by thread in {report}"));
    assert!(!by_thread.contains_key("rein-store-writ"), "{report}");
}

#[test]
fn a_person_settles_the_call_in_doubt_and_the_run_finishes() {
    let state = tempfile::tempdir().unwrap();
    // Killed right after the refund ran, before its outcome was recorded.
    let (run_id, workspace) = run_and_kill(state.path(), ("REIN_FAULT_AFTER_EFFECT", 3), None);
    let report = resume_to_end(state.path(), &run_id);
    assert_eq!(report["status"], "needs_reconciliation");
    let call = report["call_id"].as_str().unwrap();
    assert_eq!(effects(&workspace), (1, 0));
    // The operator checks the refunds ledger, finds the refund, and says so.
    let out = rein(
        state.path(),
        &[
            "runs",
            "reconcile",
            &run_id[..12],
            "--call",
            call,
            "--happened",
            "--output",
            r#"{"refund_id":"RF-call_3_1","status":"issued"}"#,
            "--note",
            "found in refunds.jsonl",
            "--as",
            "ops",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = resume_to_end(state.path(), &run_id);
    assert_eq!(report["status"], "completed");
    assert_eq!(
        effects(&workspace),
        (1, 1),
        "the refund was not repeated and the email went out"
    );
    let timeline =
        String::from_utf8(rein(state.path(), &["runs", "show", &run_id]).stdout).unwrap();
    assert!(
        timeline.contains("↺ reconciled call call_3_1 happened, says ops: found in refunds.jsonl"),
        "{timeline}"
    );
    let trail = rein(state.path(), &["audit", "export", "--run", &run_id]);
    assert!(String::from_utf8_lossy(&trail.stdout).contains("\"kind\":\"call_reconciled\""));
}
