//! MCP tools under governance, against real servers: the reference servers published on npm
//! (`@modelcontextprotocol/server-filesystem` over stdio, `server-everything` over Streamable
//! HTTP), installed by `.ci/run` into a cache directory outside the repository, and a small
//! misbehaving Python server (tests/fixtures/fake_mcp.py) for timeouts, oversized and malformed
//! results, crashes, hangs and tools whose definition changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};

use rein_core::{EndState, Event, StoredEvent, Verdict};
use rein_engine::{Agent, Engine, NoObserver, RunReport};
use serde_json::Value;

/// Where the npm reference servers are installed (`REIN_MCP_SERVERS`, else the cache directory
/// `.ci/run` uses). In CI their absence fails the test; elsewhere it is skipped with a note.
fn reference_servers() -> Option<PathBuf> {
    let dir = std::env::var_os("REIN_MCP_SERVERS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/rein/mcp-servers"))
        })?;
    let probe = dir.join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    if probe.is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the MCP reference servers are not installed in {} (set REIN_MCP_SERVERS; .ci/run installs them with npm)",
        dir.display()
    );
    eprintln!(
        "skipping: MCP reference servers not installed in {} (run: npm install --prefix {} @modelcontextprotocol/server-filesystem @modelcontextprotocol/server-everything)",
        dir.display(),
        dir.display()
    );
    None
}

fn server_js(servers: &Path, package: &str) -> String {
    servers
        .join("node_modules/@modelcontextprotocol")
        .join(package)
        .join("dist/index.js")
        .display()
        .to_string()
}

fn fake_server() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fake_mcp.py")
        .display()
        .to_string()
}

/// An agent folder: agent.toml with `mcp` sections, one policy file, a script.
struct Fixture {
    dir: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Fixture {
    fn new(mcp: &str, policies: &str, script: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("workspace/notes")).unwrap();
        std::fs::write(
            dir.path().join("workspace/notes/plan.txt"),
            "the plan is inside\n",
        )
        .unwrap();
        // A file next to the workspace that no tool may read.
        std::fs::write(dir.path().join("secret.txt"), "TOP-SECRET-OUTSIDE\n").unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/p.cedar"), policies).unwrap();
        std::fs::write(dir.path().join("script.toml"), script).unwrap();
        std::fs::write(
            dir.path().join("agent.toml"),
            format!(
                "name = \"m\"\ninstructions = \"Use the tools.\"\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\n{mcp}"
            ),
        )
        .unwrap();
        Fixture {
            dir,
            state: tempfile::tempdir().unwrap(),
        }
    }

    async fn agent(&self, env: &(dyn Fn(&str) -> Option<String> + Sync)) -> Result<Agent, String> {
        let spec = rein_config::load(self.dir.path()).map_err(|e| e.to_string())?;
        let pins = rein_mcp::pins_path(self.state.path(), &spec.name);
        Agent::load(&spec, env, None, false, Some(&pins))
            .await
            .map_err(|e| e.to_string())
    }

    fn engine(&self) -> Engine {
        rein_testkit::engine(self.state.path())
    }
}

async fn run(fx: &Fixture, agent: &Agent) -> (RunReport, Vec<StoredEvent>) {
    let engine = fx.engine();
    let report = engine
        .start(agent, "use the tools", &NoObserver)
        .await
        .unwrap();
    let events = engine.store().events(&report.run_id).unwrap();
    for server in &agent.mcp_servers {
        server.shutdown().await;
    }
    (report, events)
}

/// A tool call's name, verdict and, if it ran, (ok, output).
type Call = (String, Verdict, Option<(bool, Value)>);

/// Every tool call of a run.
fn calls(events: &[StoredEvent]) -> Vec<Call> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if let Event::ToolJudged {
            call_id,
            tool,
            verdict,
            ..
        } = &e.event
        {
            let outcome = events[i..].iter().find_map(|o| match &o.event {
                Event::ToolOutcome {
                    call_id: c,
                    ok,
                    output,
                    ..
                } if c == call_id => Some((*ok, output.clone())),
                _ => None,
            });
            out.push((tool.clone(), *verdict, outcome));
        }
    }
    out
}

fn notices(events: &[StoredEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Notice { kind, subject, .. } => Some((kind.clone(), subject.clone())),
            _ => None,
        })
        .collect()
}

const FS_POLICIES: &str = r#"
permit (principal, action == Action::"use_model", resource);

@id("read-inside")
permit (principal, action == Action::"fs.read_text_file", resource)
when { !(context.args.path like "/*") && !(context.args.path like "*..*") };

permit (principal, action == Action::"fs.list_directory", resource);

@id("never-write")
forbid (principal, action == Action::"fs.write_file", resource);
"#;

#[tokio::test]
async fn filesystem_server_reads_inside_the_workspace_and_the_gate_denies_outside() {
    let Some(servers) = reference_servers() else {
        return;
    };
    let mcp = format!(
        r#"
[[mcp]]
name = "fs"
command = ["node", "{}", "{{workspace}}"]
timeout_ms = 10000

[mcp.tools.read_text_file]
labels = ["internal"]
idempotent = true
risk = "low"
sink = false
"#,
        server_js(&servers, "server-filesystem")
    );
    let script = r#"
[[turns]]
calls = [
  { tool = "fs.read_text_file", args = { path = "notes/plan.txt" } },
  { tool = "fs.read_text_file", args = { path = "../secret.txt" } },
  { tool = "fs.read_text_file", args = { path = "/etc/passwd" } },
  { tool = "fs.write_file", args = { path = "notes/evil.txt", content = "x" } },
]

[[turns]]
text = "Read the plan."
"#;
    let fx = Fixture::new(&mcp, FS_POLICIES, script);
    let mut agent = fx.agent(&|_| None).await.unwrap();
    let recording = rein_testkit::model::watch_sync(&mut agent, |_| {});
    let (report, events) = run(&fx, &agent).await;
    assert_eq!(report.status, EndState::Completed);

    let calls = calls(&events);
    assert_eq!(calls.len(), 4);
    // Inside: allowed by the policy, run by the real server.
    assert_eq!(calls[0].1, Verdict::Allow);
    let (ok, output) = calls[0].2.clone().unwrap();
    assert!(ok, "{output}");
    assert!(
        output.to_string().contains("the plan is inside"),
        "{output}"
    );
    // Outside: denied by rein's gate, so the server never saw them (no outcome recorded).
    for (tool, verdict, outcome) in &calls[1..] {
        assert_eq!((*verdict, outcome), (Verdict::Deny, &None), "{tool}");
    }
    assert!(!events.iter().any(|e| {
        serde_json::to_string(&e.event)
            .unwrap()
            .contains("TOP-SECRET")
    }));
    assert!(!fx.dir.path().join("workspace/notes/evil.txt").exists());

    // The model is offered only what it may call: the forbidden write and the tools without a
    // permit are left out.
    let offered = recording.asked()[0].tools.clone();
    assert_eq!(offered, vec!["fs.list_directory", "fs.read_text_file"]);
    // The listing is recorded in the run.
    assert!(notices(&events).contains(&("mcp_server_listed".into(), "fs".into())));
}

#[tokio::test]
async fn a_killed_server_is_restarted_and_the_run_continues() {
    let Some(servers) = reference_servers() else {
        return;
    };
    let mcp = format!(
        r#"
[[mcp]]
name = "fs"
command = ["node", "{}", "{{workspace}}"]
timeout_ms = 10000

[mcp.tools.read_text_file]
idempotent = true
"#,
        server_js(&servers, "server-filesystem")
    );
    let read = r#"
[[turns]]
calls = [{ tool = "fs.read_text_file", args = { path = "notes/plan.txt" } }]
"#;
    let script = format!("{read}{read}{read}\n[[turns]]\ntext = \"done\"\n");
    let fx = Fixture::new(&mcp, FS_POLICIES, &script);
    let mut agent = fx.agent(&|_| None).await.unwrap();
    let server = agent.mcp_servers[0].clone();
    let pid = server.pid().await.unwrap();
    // Before the model's second step, the server is killed.
    rein_testkit::model::watch_sync(&mut agent, move |step| {
        if step == 2 {
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    let (report, events) = run(&fx, &agent).await;
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let kinds = notices(&events);
    assert!(
        kinds.contains(&("mcp_server_exited".into(), "fs".into())),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("mcp_server_restarted".into(), "fs".into())),
        "{kinds:?}"
    );
    assert_eq!(server.starts(), 2);
    // The first read worked before the kill, and the last one after the restart.
    let calls = calls(&events);
    assert_eq!(calls.len(), 3);
    assert!(calls[0].2.as_ref().unwrap().0);
    let (ok, output) = calls[2].2.clone().unwrap();
    assert!(ok, "{output}");
    assert!(output.to_string().contains("the plan is inside"));
}

/// Starts server-everything over Streamable HTTP on a free port and waits for it to listen
/// (by reading its log line, not by sleeping).
fn everything_over_http(servers: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("node")
        .arg(server_js(servers, "server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .expect("server-everything exited before listening")
            .unwrap();
        if line.contains("listening on port") {
            break;
        }
    }
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, port)
}

#[tokio::test]
async fn everything_server_over_streamable_http_with_a_secret_header() {
    let Some(servers) = reference_servers() else {
        return;
    };
    let (mut child, port) = everything_over_http(&servers);
    let mcp = format!(
        r#"
[[mcp]]
name = "ev"
url = "http://127.0.0.1:{port}/mcp"
headers = {{ Authorization = "secret:EV_TOKEN" }}
timeout_ms = 10000

[mcp.tools.echo]
labels = ["internal"]
idempotent = true
risk = "low"
sink = false

[mcp.tools.get-sum]
idempotent = true
"#
    );
    let policies = r#"
permit (principal, action == Action::"use_model", resource);
permit (principal, action in [Action::"ev.echo", Action::"ev.get-sum"], resource);
@id("no-env")
forbid (principal, action == Action::"ev.get-env", resource);
"#;
    let script = r#"
[[turns]]
calls = [
  { tool = "ev.echo", args = { message = "hello over http" } },
  { tool = "ev.get-sum", args = { a = 2, b = 40 } },
  { tool = "ev.get-env" },
]

[[turns]]
text = "done"
"#;
    let fx = Fixture::new(&mcp, policies, script);
    let env = |var: &str| (var == "REIN_SECRET_EV_TOKEN").then(|| "Bearer t0ken-canary".to_owned());
    let mut agent = fx.agent(&env).await.unwrap();
    let recording = rein_testkit::model::watch_sync(&mut agent, |_| {});
    let (report, events) = run(&fx, &agent).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(report.status, EndState::Completed);
    let calls = calls(&events);
    let echo = calls[0].2.clone().unwrap();
    assert!(
        echo.0 && echo.1.to_string().contains("hello over http"),
        "{echo:?}"
    );
    let sum = calls[1].2.clone().unwrap();
    assert!(sum.0 && sum.1.to_string().contains("42"), "{sum:?}");
    assert_eq!((calls[2].1, &calls[2].2), (Verdict::Deny, &None));
    let offered = recording.asked()[0].tools.clone();
    assert_eq!(offered, vec!["ev.echo", "ev.get-sum"]);
    // Server output is untrusted by default; the operator's entry made `echo` internal.
    assert!(!events.iter().any(|e| {
        serde_json::to_string(&e.event)
            .unwrap()
            .contains("t0ken-canary")
    }));
}

fn fake_mcp(extra: &str) -> String {
    format!(
        r#"
[[mcp]]
name = "fake"
command = ["python3", "{}", "normal"{extra}]
timeout_ms = 400
max_output_bytes = 1000

[mcp.tools.echo]
idempotent = true

# Their owner knows a call that times out or whose server dies had no effect.
[mcp.tools.slow]
on_timeout = "failed"

[mcp.tools.crash]
on_timeout = "failed"

[mcp.tools.garbage]
on_timeout = "failed"
"#,
        fake_server()
    )
}

const ALLOW_ALL: &str = "permit (principal, action, resource);\n";

#[tokio::test]
async fn misbehaving_server_calls_fail_cleanly_and_are_recorded() {
    let script = r#"
[[turns]]
calls = [{ tool = "fake.echo", args = { text = "first" } }]
[[turns]]
calls = [{ tool = "fake.huge" }]
[[turns]]
calls = [{ tool = "fake.fails" }]
[[turns]]
calls = [{ tool = "fake.malformed" }]
[[turns]]
calls = [{ tool = "fake.slow" }]
[[turns]]
calls = [{ tool = "fake.garbage" }]
[[turns]]
calls = [{ tool = "fake.crash" }]
[[turns]]
calls = [{ tool = "fake.echo", args = { text = "after the crash" } }]
[[turns]]
text = "done"
"#;
    let fx = Fixture::new(&fake_mcp(""), ALLOW_ALL, script);
    let agent = fx.agent(&|_| None).await.unwrap();
    let (report, events) = run(&fx, &agent).await;
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let calls = calls(&events);
    let outcome = |i: usize| calls[i].2.clone().unwrap();
    assert_eq!(outcome(0).1["text"], r#"{"text": "first"}"#);
    // Oversized: cut at the cap, with a marker, and a notice.
    let huge = outcome(1);
    assert!(huge.0);
    let text = huge.1["text"].as_str().unwrap();
    assert!(text.len() < 1100 && text.ends_with("[rein: result cut: 1000 of 200000 bytes shown]"));
    // A tool error carries the server's message.
    assert_eq!(
        outcome(2),
        (false, serde_json::json!({"error": "disk on fire"}))
    );
    // Malformed result, no answer, garbage: failures, not panics.
    for i in [3, 4, 5] {
        assert!(!outcome(i).0, "{:?}", outcome(i));
    }
    assert!(
        outcome(4).1["error"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
    // The crash is reported, the server restarted, and the next call works.
    assert!(!outcome(6).0);
    let after = outcome(7);
    assert!(after.0, "{after:?}");
    assert_eq!(after.1["text"], r#"{"text": "after the crash"}"#);
    let kinds: Vec<String> = notices(&events).into_iter().map(|(k, _)| k).collect();
    for kind in [
        "mcp_result_cut",
        "mcp_call_timed_out",
        "mcp_server_exited",
        "mcp_server_restarted",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }
    let exited = events
        .iter()
        .find_map(|e| match &e.event {
            Event::Notice { kind, detail, .. } if kind == "mcp_server_exited" => {
                Some(detail.clone())
            }
            _ => None,
        })
        .unwrap();
    // What the server said on stderr before dying is part of the record.
    assert!(exited.contains("crashing on purpose"), "{exited}");

    // Without the operator's word, a call that times out may have had its effect: the run stops
    // and names it rather than going on as if it failed.
    let mcp = fake_mcp("").replace("on_timeout = \"failed\"", "");
    let fx = Fixture::new(
        &mcp,
        ALLOW_ALL,
        "[[turns]]\ncalls = [{ tool = \"fake.slow\" }]\n[[turns]]\ntext = \"done\"\n",
    );
    let agent = fx.agent(&|_| None).await.unwrap();
    let (report, events) = run(&fx, &agent).await;
    assert_eq!(
        report.status,
        EndState::NeedsReconciliation,
        "{:?}",
        report.reason
    );
    assert_eq!(report.call_id.as_deref(), Some("call_1_1"));
    assert!(report.reason.unwrap().contains("timed out"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::ToolInDoubt { .. }))
    );
}

#[tokio::test]
async fn a_server_that_hangs_on_start_is_a_clear_error() {
    let mcp = format!(
        r#"
[[mcp]]
name = "stuck"
command = ["python3", "{}", "hang"]
startup_timeout_ms = 500
"#,
        fake_server()
    );
    let fx = Fixture::new(&mcp, ALLOW_ALL, "[[turns]]\ntext = \"x\"\n");
    let error = fx.agent(&|_| None).await.unwrap_err();
    assert!(
        error.contains("MCP server `stuck` (agent.toml line 8)")
            && error.contains("did not start and list its tools within 500 ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_tool_whose_definition_changes_is_flagged_and_refused() {
    let counter = tempfile::NamedTempFile::new().unwrap();
    let extra = format!(", \"--counter\", \"{}\"", counter.path().display());
    let script = r#"
[[turns]]
calls = [{ tool = "fake.echo", args = { text = "hi" } }]
[[turns]]
text = "done"
"#;
    let fx = Fixture::new(&fake_mcp(&extra), ALLOW_ALL, script);
    // First process: the tools are pinned.
    let first = fx.agent(&|_| None).await.unwrap();
    let (report, events) = run(&fx, &first).await;
    assert_eq!(report.status, EndState::Completed);
    assert!(calls(&events)[0].2.as_ref().unwrap().0);
    // A later process finds `echo` described differently: flagged, and its calls refused.
    let second = fx.agent(&|_| None).await.unwrap();
    let (report, events) = run(&fx, &second).await;
    assert_eq!(report.status, EndState::Completed);
    assert!(notices(&events).contains(&("mcp_tool_changed".into(), "fake.echo".into())));
    let (ok, output) = calls(&events)[0].2.clone().unwrap();
    assert!(!ok);
    assert!(
        output["error"]
            .as_str()
            .unwrap()
            .contains("changed since it was first listed")
    );
}
