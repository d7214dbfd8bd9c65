//! `rein serve` driven over real HTTP on loopback, as other services and people would: tenants
//! kept apart, an approval decided by another token, live events across a reconnect, limits and
//! problem documents, SIGTERM with twenty runs in flight, `promtool` on the metrics, and
//! schemathesis against the OpenAPI document.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{REIN, python_path};
use rein_testkit::serve::{Events, Served, client, token};
use rein_testkit::{AgentFolder, copy_dir};
use serde_json::{Value, json};

/// An agents folder with `pay` (a payment a person approves) and `fast` (three effects, each
/// recorded with its run and call in `effects.log`, then an answer).
fn agents() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let pay = AgentFolder::new(&format!(
        "name = \"pay\"\ninstructions = \"Pay.\"\ndefault_task = \"pay the bill\"\n{}\n[workspace]\nisolate = true\n[[tools]]\nname = \"pay\"\ndescription = \"Pay\"\ncommand = [\"sh\", \"-c\", \"cat >> pay.log; echo >> pay.log; echo '{{\\\"ok\\\": true}}'\"]\nargs_schema = {{ type = \"object\", properties = {{ amount = {{ type = \"number\" }} }} }}\n",
        rein_testkit::SCRIPTED_MODEL
    ))
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"pay\", args = { amount = 5 } }]\n[[turns]]\ntext = \"paid\"\n",
    )
    .policy("@ask(\"a person pays\")\npermit(principal, action == Action::\"pay\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n");
    copy_dir(pay.path(), &root.path().join("pay"));
    // Each call sleeps a little, so a shutdown finds runs in the middle of their work; it
    // records its run and call in a file outside the runs' workspaces (declared writable).
    let effects = root.path().join("effects");
    std::fs::create_dir_all(&effects).unwrap();
    let fast = AgentFolder::new(&format!(
        "name = \"fast\"\ninstructions = \"Work.\"\ndefault_task = \"work\"\n{}\n[[tools]]\nname = \"work\"\ndescription = \"Work\"\ncommand = [\"sh\", \"-c\", \"cat > /dev/null; sleep 1; echo \\\"$REIN_RUN_ID $REIN_CALL_ID\\\" >> {}/effects.log; echo '{{\\\"ok\\\": true}}'\"]\nwrite_paths = [\"{}\"]\nargs_schema = {{ type = \"object\", properties = {{ n = {{ type = \"integer\" }} }} }}\n",
        rein_testkit::SCRIPTED_MODEL,
        effects.display(),
        effects.display()
    ))
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"work\", args = { n = 1 } }]\n[[turns]]\ncalls = [{ tool = \"work\", args = { n = 2 } }]\n[[turns]]\ncalls = [{ tool = \"work\", args = { n = 3 } }]\n[[turns]]\ntext = \"done\"\n",
    );
    copy_dir(fast.path(), &root.path().join("fast"));
    let instant = AgentFolder::new(&format!(
        "name = \"instant\"\ninstructions = \"Answer.\"\ndefault_task = \"answer\"\n{}\n",
        rein_testkit::SCRIPTED_MODEL
    ))
    .file("script.toml", "[[turns]]\ntext = \"done\"\n");
    copy_dir(instant.path(), &root.path().join("instant"));
    root
}

async fn start_run(s: &Served, token: &str, agent: &str) -> String {
    let r = client()
        .post(s.url("/v1/runs"))
        .bearer_auth(token)
        .json(&json!({"agent": agent}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    r.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Twenty runs of `fast` started, each with its first effect done (the rest to come).
async fn twenty_in_the_middle_of_their_work(s: &Served, token: &str) -> Vec<String> {
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(start_run(s, token, "fast").await);
    }
    for run in &runs {
        let mut events = Events::open(&s.base, token, run, None).await;
        events.until("tool_outcome").await;
    }
    runs
}

/// The `run_ended` event of a run, read from its stream (all of it, from the start).
async fn end_of(base: &str, token: &str, run: &str) -> Value {
    let mut events = Events::open(base, token, run, None).await;
    let all = events.until("run_ended").await;
    all.last().unwrap().data["event"].clone()
}

async fn get(s: &Served, token: &str, path: &str) -> (u16, Value) {
    let r = client()
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_are_kept_apart_and_an_approval_from_another_token_finishes_the_run() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let starter = token(REIN, state.path(), "acme", "ann", "runs:write,audit:read");
    let approver = token(REIN, state.path(), "acme", "bob", "approvals:decide");
    let other = token(REIN, state.path(), "globex", "eve", "admin");
    let s = Served::start(REIN, state.path(), agents.path(), &[]);

    let run = start_run(&s, &starter, "pay").await;
    // The first connection reads up to the suspension, then drops.
    let mut first = Events::open(&s.base, &starter, &run, None).await;
    let before = first.until("run_suspended").await;
    drop(first);
    let (_, pending) = get(&s, &starter, "/v1/approvals").await;
    let approval = pending[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(pending[0]["arguments"], json!({"amount": 5}));

    // Another tenant sees none of it, and cannot decide it: 404, as if it did not exist.
    assert_eq!(get(&s, &other, "/v1/approvals").await.1, json!([]));
    for path in [
        format!("/v1/runs/{run}"),
        format!("/v1/approvals/{approval}"),
        format!("/v1/runs/{run}/events"),
    ] {
        let (status, body) = get(&s, &other, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let r = client()
        .post(s.url(&format!("/v1/approvals/{approval}")))
        .bearer_auth(&other)
        .json(&json!({"approved": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(get(&s, &other, "/v1/runs").await.1, json!([]));
    // The starter may not decide (no approvals:decide): 403, a problem document.
    let r = client()
        .post(s.url(&format!("/v1/approvals/{approval}")))
        .bearer_auth(&starter)
        .json(&json!({"approved": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );

    // The stream is picked up where the first connection left it, and the approver decides.
    let last = before.last().unwrap().id;
    let mut second = Events::open(&s.base, &starter, &run, Some(last)).await;
    let r = client()
        .post(s.url(&format!("/v1/approvals/{approval}")))
        .bearer_auth(&approver)
        .json(&json!({"approved": true, "note": "ok"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let after = second.until("run_ended").await;
    assert!(
        second.next().await.is_none(),
        "the stream ends with the run"
    );
    let seqs: Vec<u64> = before.iter().chain(&after).map(|e| e.id).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "every event once, in order, across the reconnect"
    );
    let ended = &after.last().unwrap().data["event"];
    assert_eq!(ended["status"], "completed");
    // The approver, not the caller's body, is who decided, in the log and the audit trail.
    assert!(
        after
            .iter()
            .any(|e| e.kind == "approval_decided" && e.data["event"]["by"] == "bob")
    );
    let export = client()
        .get(s.url(&format!("/v1/audit/export?run={run}")))
        .bearer_auth(&starter)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        export
            .lines()
            .any(|l| l.contains("approval_decided") && l.contains("\"by\":\"bob\"")),
        "{export}"
    );
    let (_, detail) = get(&s, &starter, &format!("/v1/runs/{run}")).await;
    assert_eq!(detail["run"]["status"], "completed");
    assert_eq!(detail["run"]["user"], "ann");
    assert_eq!(detail["run"]["tenant"], "acme");

    // The agent's policies, asked through the served agent (its gate, not a fresh load).
    let r = client()
        .post(s.url("/v1/agents/pay/explain"))
        .bearer_auth(&starter)
        .json(&json!({"tool": "pay", "args": {"amount": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let decision: Value = r.json().await.unwrap();
    assert_eq!(decision["verdict"], "ask", "{decision}");
    let (status, tools) = get(&s, &starter, "/v1/agents/pay/tools").await;
    assert_eq!(status, 200);
    assert_eq!(tools["tools"][0]["name"], "pay", "{tools}");
    assert_eq!(get(&s, &starter, "/v1/agents/pay/tools").await.1, tools);

    // A client reconnecting after the end (as a browser's EventSource does) gets an ended
    // stream, not one that waits for ever.
    let end = after.last().unwrap().id;
    let mut again = Events::open(&s.base, &starter, &run, Some(end)).await;
    assert!(again.next().await.is_none());

    // Another tenant's admin sees neither acme's spending nor its runs in the audit report.
    let (_, usage) = get(&s, &other, "/v1/usage").await;
    assert!(
        usage
            .as_array()
            .unwrap()
            .iter()
            .all(|row| !row["key"].as_str().unwrap().contains("acme")),
        "{usage}"
    );
    let (status, verify) = get(&s, &other, "/v1/audit/verify").await;
    assert_eq!(status, 200, "{verify}");
    assert!(!verify.to_string().contains(&run), "{verify}");
}

/// SIGTERM while clients hold an event stream of a run waiting for a person and a long poll for
/// approvals: both end, the server exits 0, and the run is still there for the next one. (And a
/// stream whose token is revoked ends.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_streams_and_long_polls() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write");
    let mut s = Served::start(REIN, state.path(), agents.path(), &[]);
    // A long poll of another tenant, which has nothing pending, so it waits (from now on, well
    // before the SIGTERM: a request the server has not read yet is refused, not held).
    let other = token(REIN, state.path(), "globex", "eve", "runs:write");
    let poll = tokio::spawn(
        client()
            .get(s.url("/v1/approvals?wait=60"))
            .bearer_auth(other)
            .send(),
    );
    let run = start_run(&s, &t, "pay").await;
    let mut events = Events::open(&s.base, &t, &run, None).await;
    events.until("run_suspended").await;
    // A token revoked while its stream is open loses the stream.
    let revoked = token(REIN, state.path(), "acme", "ann", "runs:write");
    let mut watching = Events::open(&s.base, &revoked, &run, None).await;
    watching.until("run_suspended").await;
    let id = revoked.split('_').nth(1).unwrap();
    let out = Command::new(REIN)
        .arg("--state-dir")
        .arg(state.path())
        .args(["tokens", "revoke", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        watching.next().await.is_none(),
        "a revoked token's stream ends"
    );
    let pid = s.pid();
    let exited = tokio::task::spawn_blocking(move || s.terminate());
    assert!(events.next().await.is_none(), "the stream ends at shutdown");
    let answered = poll.await.unwrap().unwrap();
    assert_eq!(answered.status(), 200);
    // Bounded only so that a server that never exits fails the test instead of hanging CI.
    let status = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .unwrap_or_else(|_| panic!("rein serve (pid {pid}) did not exit on SIGTERM"))
        .unwrap();
    assert!(status.success(), "{status:?}");

    // Decided while no server ran (from the command line): the next server resumes it.
    let approval = Command::new(REIN)
        .arg("--state-dir")
        .arg(state.path())
        .args(["approvals", "list", "--json"])
        .output()
        .unwrap();
    let list: Value = serde_json::from_slice(&approval.stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap();
    let decided = Command::new(REIN)
        .arg("--state-dir")
        .arg(state.path())
        .args(["approvals", "approve", id, "--as", "bob"])
        .output()
        .unwrap();
    assert!(decided.status.success(), "{decided:?}");
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    assert_eq!(end_of(&s.base, &t, &run).await["status"], "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_problem_documents_with_the_right_status() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write");
    let s = Served::start(
        REIN,
        state.path(),
        agents.path(),
        &["--max-body-bytes", "1024", "--rate", "1", "--burst", "2"],
    );
    let problem = |r: &reqwest::Response| {
        r.headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let r = client().get(s.url("/v1/runs")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(problem(&r).as_deref(), Some("application/problem+json"));
    let r = client().delete(s.url("/v1/runs")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(problem(&r).as_deref(), Some("application/problem+json"));
    assert!(r.headers().get("allow").is_some(), "{:?}", r.headers());
    // A path of rein's own API that nothing serves is a problem document too (an SDK's endpoint
    // the gateway does not serve is answered in that API's shape: the SDK tests).
    let r = client().get(s.url("/v1/runz")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(problem(&r).as_deref(), Some("application/problem+json"));
    let r = client()
        .get(s.url("/v1/runs"))
        .bearer_auth("rein_nope_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(s.url("/v1/runs"))
        .bearer_auth(&t)
        .json(&json!({"agent": "pay", "task": "x".repeat(4096)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(problem(&r).as_deref(), Some("application/problem+json"));
    // The body was not read: the connection cannot carry another request, and says so, or a
    // client that pools it fails its next request on it.
    assert_eq!(
        r.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );
    // As does a request refused before its body was read.
    let r = client()
        .post(s.url("/v1/runs"))
        .bearer_auth("rein_nope_nope")
        .json(&json!({"agent": "pay", "task": "x".repeat(4096)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );
    // A body cannot claim another tenant or user.
    let r = client()
        .post(s.url("/v1/runs"))
        .bearer_auth(&t)
        .json(&json!({"agent": "pay", "tenant": "globex"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
    // The burst of 2 is spent (the two requests above that had a token): the next request is
    // refused with Retry-After.
    let r = client()
        .get(s.url("/v1/runs"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("requests a second")
    );
    assert_eq!(
        client()
            .get(s.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(s.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_twenty_runs_in_flight_and_a_restart_finishes_all_without_repeating_an_effect()
{
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write");
    let mut s = Served::start(REIN, state.path(), agents.path(), &[]);
    let runs = twenty_in_the_middle_of_their_work(&s, &t).await;
    let status = s.terminate();
    assert!(
        status.success(),
        "rein serve exits cleanly on SIGTERM: {status:?}"
    );
    let log = agents.path().join("effects/effects.log");
    let done_at_stop = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        (20..60).contains(&done_at_stop),
        "{done_at_stop} effects when stopped"
    );

    // The restarted server resumes them by itself.
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    for run in &runs {
        assert_eq!(
            end_of(&s.base, &t, run).await["status"],
            "completed",
            "{run}"
        );
    }
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let unique: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(lines.len(), 60, "three effects for each of 20 runs");
    assert_eq!(unique.len(), 60, "no effect happened twice");
}

/// A server killed with SIGKILL in the middle of 20 runs, then two servers started at once on the
/// same state directory: each run is driven by one of them (under its lease), every run ends,
/// a call whose outcome the crash left unknown is named rather than run again, and no effect
/// happens twice.
#[tokio::test(flavor = "multi_thread")]
async fn two_servers_restarted_at_once_after_a_kill_drive_each_run_once() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write");
    let mut s = Served::start(REIN, state.path(), agents.path(), &[]);
    let runs = twenty_in_the_middle_of_their_work(&s, &t).await;
    s.kill();

    let (a, b) = (
        Served::start(REIN, state.path(), agents.path(), &[]),
        Served::start(REIN, state.path(), agents.path(), &[]),
    );
    let mut ended = BTreeMap::new();
    for (i, run) in runs.iter().enumerate() {
        // Either server shows every run (one state directory); ask them in turn.
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let mut events = Events::open(base, &t, run, None).await;
        let all = events.until("run_ended").await;
        // One of the two servers drove it: the loser's resume was refused before it recorded
        // anything.
        let resumes = all.iter().filter(|e| e.kind == "run_resumed").count();
        assert_eq!(resumes, 1, "{run} was resumed {resumes} times");
        let end = &all.last().unwrap().data["event"];
        ended.insert(
            run.clone(),
            (end["status"].as_str().unwrap().to_owned(), end.clone()),
        );
    }
    let log = agents.path().join("effects/effects.log");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let unique: BTreeSet<&String> = lines.iter().collect();
    assert_eq!(
        unique.len(),
        lines.len(),
        "no effect happened twice: {lines:?}"
    );
    for (run, (status, end)) in &ended {
        match status.as_str() {
            // Every call of a completed run had its effect, once.
            "completed" => {
                for call in ["call_1_1", "call_2_1", "call_3_1"] {
                    assert!(
                        lines.contains(&format!("{run} {call}")),
                        "{run} {call}: {lines:?}"
                    );
                }
            }
            // The kill left a call's outcome unknown: it is named, not repeated.
            "needs_reconciliation" => assert!(end["call_id"].is_string(), "{end}"),
            other => panic!("{run} ended {other}: {end}"),
        }
    }
}

/// A token holds at most `--max-streams-per-token` event streams open; another token is not
/// held back by it.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_holds_a_bounded_number_of_event_streams() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write");
    let other = token(REIN, state.path(), "acme", "bob", "runs:write");
    let s = Served::start(
        REIN,
        state.path(),
        agents.path(),
        &["--max-streams-per-token", "2"],
    );
    let run = start_run(&s, &t, "pay").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut events = Events::open(&s.base, &t, &run, None).await;
        events.until("run_suspended").await;
        held.push(events);
    }
    let r = client()
        .get(s.url(&format!("/v1/runs/{run}/events")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let mut events = Events::open(&s.base, &other, &run, None).await;
    events.until("run_suspended").await;
}

/// A run that ends before its request is answered is still started: the request gets its id,
/// never a 500 (its driver's end once raced the first event).
#[tokio::test(flavor = "multi_thread")]
async fn runs_that_end_at_once_are_all_started() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write");
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let (client, url, t) = (client(), s.url("/v1/runs"), t.clone());
        set.spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(t)
                .json(&json!({"agent": "instant"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
    }
    let mut ids = BTreeSet::new();
    while let Some(done) = set.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 202, "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        ids.insert(body["run_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 40);
    for run in &ids {
        assert_eq!(end_of(&s.base, &t, run).await["status"], "completed");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_the_metrics() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(REIN, state.path(), "acme", "ann", "runs:write,metrics:read");
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    let run = start_run(&s, &t, "pay").await;
    Events::open(&s.base, &t, &run, None)
        .await
        .until("run_suspended")
        .await;
    let text = client()
        .get(s.url("/metrics"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "rein_runs_started_total{agent=\"pay\",tenant=\"acme\"} 1",
        "rein_tool_calls_total{agent=\"pay\",tool=\"pay\",verdict=\"ask\"} 1",
        "rein_approvals_pending{tenant=\"acme\"} 1",
        "rein_span_duration_seconds_count{span=\"gate\"}",
        "rein_model_tokens_total",
    ] {
        assert!(text.contains(needle), "{needle} in:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) must be installed: .ci/run installs it");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_every_response_as_documented() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let t = token(
        REIN,
        state.path(),
        "acme",
        "ann",
        "runs:write,approvals:decide,audit:read,metrics:read,admin",
    );
    let s = Served::start(
        REIN,
        state.path(),
        agents.path(),
        &["--rate", "100000", "--burst", "100000"],
    );
    // A run waiting for a person: `GET /v1/approvals?wait=` answers at once.
    let run = start_run(&s, &t, "pay").await;
    Events::open(&s.base, &t, &run, None)
        .await
        .until("run_suspended")
        .await;
    // schemathesis keeps a cache of what it found in its working directory: a scratch one, so
    // each run starts fresh and nothing is written into the repository.
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .current_dir(scratch.path())
        .args(["-m", "schemathesis.cli", "run"])
        .arg(s.url("/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {t}")])
        .args([
            "--max-examples",
            "15",
            "--phases",
            "examples,coverage,fuzzing",
        ])
        // Every check but one: a request the schema allows may still be refused for what it
        // means (an agent that does not exist, an explanation of nothing), with a 4xx.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--seed", "4242", "--no-color"])
        .env("PYTHONPATH", python_path())
        .output()
        .expect("python3 with schemathesis (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn traces_reach_an_otlp_collector_rein_did_not_write() {
    use std::io::BufRead;
    let spans_file = tempfile::NamedTempFile::new().unwrap();
    let receiver_script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/otlp_receiver.py");
    let mut receiver = Command::new("python3")
        .arg(&receiver_script)
        .arg(spans_file.path())
        .env("PYTHONPATH", python_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with opentelemetry-proto (.ci/run installs it)");
    let mut port = String::new();
    std::io::BufReader::new(receiver.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port = port.trim().to_owned();
    assert!(
        port.parse::<u16>().is_ok(),
        "the receiver did not start: {port:?}"
    );
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(REIN)
        .arg("--state-dir")
        .arg(state.path())
        .args(["run", common::example().to_str().unwrap(), "--json"])
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_SERVICE_NAME", "rein-test")
        .output()
        .unwrap();
    let _ = receiver.kill();
    let _ = receiver.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // rein exports before it exits, so everything has arrived.
    let spans: Vec<Value> = std::fs::read_to_string(spans_file.path())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named = |name: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s["name"].as_str().unwrap().starts_with(name))
            .collect()
    };
    let run = named("invoke_agent");
    assert_eq!(run.len(), 1, "{spans:#?}");
    let run = run[0];
    assert_eq!(run["path"], "/v1/traces");
    assert_eq!(run["content_type"], "application/x-protobuf");
    assert_eq!(run["service"], "rein-test");
    assert_eq!(run["attributes"]["gen_ai.operation.name"], "invoke_agent");
    assert_eq!(run["attributes"]["gen_ai.agent.name"], "support-desk");
    let chats = named("chat");
    assert_eq!(chats.len(), 5, "one per model step");
    for chat in &chats {
        assert_eq!(
            chat["parent"], run["span_id"],
            "a chat is a child of its run"
        );
        assert_eq!(chat["trace_id"], run["trace_id"]);
        assert_eq!(chat["attributes"]["gen_ai.operation.name"], "chat");
        assert_eq!(chat["attributes"]["gen_ai.request.model"], "support-script");
        assert!(
            chat["attributes"]["gen_ai.usage.input_tokens"]
                .as_i64()
                .is_some_and(|n| n > 0),
            "{chat}"
        );
    }
    let tools = named("execute_tool");
    assert_eq!(tools.len(), 4);
    assert!(tools.iter().all(|t| t["parent"] == run["span_id"]));
    assert!(
        tools
            .iter()
            .any(|t| t["attributes"]["gen_ai.tool.name"] == "refunds.issue")
    );
    // A span per decision the gate makes (model decisions are remembered per run while the
    // labels, the model and the budget share stay the same).
    let gates = named("gate");
    let actions: BTreeSet<&str> = gates
        .iter()
        .map(|g| g["attributes"]["rein.gate.action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["call_tool", "respond", "use_model"].into());
    assert_eq!(
        gates
            .iter()
            .filter(|g| g["attributes"]["rein.gate.action"] == "call_tool")
            .count(),
        4
    );
    assert!(gates.iter().all(|g| g["parent"] == run["span_id"]));
    assert!(
        gates
            .iter()
            .any(|g| g["attributes"]["rein.gate.action"] == "call_tool"
                && g["attributes"]["rein.gate.verdict"] == "allow")
    );
    // Message contents are not put on spans.
    let all = serde_json::to_string(&spans).unwrap();
    assert!(
        !all.contains("arrived damaged"),
        "the task leaked into a span"
    );
}

/// A server's memory is kept in 4 KiB pages, whatever the machine's transparent huge page
/// setting (huge pages took `rein bench gateway` from ~50 to ~75 MiB resident under load).
#[cfg(target_os = "linux")]
#[test]
fn the_server_keeps_its_memory_in_small_pages() {
    let state = tempfile::tempdir().unwrap();
    let agents = agents();
    let s = Served::start(REIN, state.path(), agents.path(), &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let thp = status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(str::trim);
    assert_eq!(thp, Some("0"), "{status}");
    // Including what was touched before the server knew it was one (parsing its command line):
    // a region faulted in before the switch keeps its huge pages.
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", s.pid())).unwrap();
    let huge = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|v| v.trim().trim_end_matches("kB").trim().to_owned());
    assert_eq!(huge.as_deref(), Some("0"), "{rollup}");
}

/// `--workers` sets how many threads serve requests (the default leaves a core to the writer
/// threads); the rest of the server's threads are the same whatever it is.
#[cfg(target_os = "linux")]
#[test]
fn the_server_runs_as_many_request_threads_as_asked() {
    let runtime_threads = |workers: &str| {
        let state = tempfile::tempdir().unwrap();
        let agents = agents();
        let s = Served::start(REIN, state.path(), agents.path(), &["--workers", workers]);
        let mut named = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", s.pid())).unwrap() {
            let comm =
                std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default();
            if comm.trim() == "tokio-rt-worker" {
                named += 1;
            }
        }
        named
    };
    let (one, three) = (runtime_threads("1"), runtime_threads("3"));
    assert!(one >= 1, "{one}");
    assert_eq!(
        three - one,
        2,
        "one request thread: {one} runtime threads; three: {three}"
    );
}
