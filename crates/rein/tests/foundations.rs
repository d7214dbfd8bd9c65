//! The binary tried as a crash, a second process and a hostile provider would: SIGKILL while a
//! model call hangs (the audit trail still holds every decision once the run resumes), thirty
//! processes starting at once on a fresh state directory, thirty processes contending for a
//! shared budget that covers four whole runs, a call that times out, and output into a closed
//! pipe.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{REIN, example, json_out, rein, stderr};
use rein_testkit::AgentFolder;
use rein_testkit::fake::{self, openai_calls, openai_text};
use serde_json::Value;

fn spawn(state: &Path, args: &[&str]) -> Child {
    Command::new(REIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("REIN_FAULT_AFTER_EVENT")
        .env_remove("REIN_FAULT_AFTER_EFFECT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn openai_agent(uri: &str) -> String {
    format!(
        "name = \"h\"\ninstructions = \"Be careful.\"\ndefault_task = \"go\"\n[model]\nprovider = \"openai\"\nname = \"gpt-x\"\nbase_url = \"{uri}/v1\"\nmax_attempts = 1\ntimeout_ms = 3600000\n"
    )
}

/// Starts `rein run` on `agent` (given its provider's URL) against a provider that answers
/// `first` and then hangs, and kills the process (SIGKILL) once the second model call is in
/// flight. Answers the agent folder and the state directory.
async fn killed_in_second_model_call(
    agent: &dyn Fn(&str) -> String,
    first: Value,
) -> (AgentFolder, tempfile::TempDir) {
    let (hanging, arrived) = fake::server_then_hang(vec![first]).await;
    let folder = AgentFolder::new(&agent(&hanging.uri()));
    let state = tempfile::tempdir().unwrap();
    let mut child = spawn(
        state.path(),
        &["run", folder.path().to_str().unwrap(), "--json"],
    );
    arrived
        .recv_timeout(Duration::from_secs(60))
        .expect("rein never made its second model call");
    child.kill().unwrap();
    child.wait().unwrap();
    (folder, state)
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_while_the_model_hangs_the_resumed_run_has_a_record_for_every_decision() {
    // Step 1 proposes a tool the agent does not have (refused); step 2's model call hangs.
    let (folder, state) =
        killed_in_second_model_call(&openai_agent, openai_calls(&[("c1", "wipe_disk", "{}")]))
            .await;

    // The provider answers again; the run is resumed to its end.
    let answering = fake::server(vec![openai_text("Nothing to do.", 30, 4)]).await;
    std::fs::write(
        folder.path().join("agent.toml"),
        openai_agent(&answering.uri()),
    )
    .unwrap();
    let runs = json_out(&rein(state.path(), &["runs", "list", "--json"]));
    let run_id = runs[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(runs[0]["status"], "interrupted");
    let resumed = rein(state.path(), &["runs", "resume", &run_id, "--json"]);
    assert_eq!(
        json_out(&resumed)["status"],
        "completed",
        "{}",
        stderr(&resumed)
    );

    let verify = rein(state.path(), &["audit", "verify", "--json"]);
    let report = json_out(&verify);
    assert_eq!(verify.status.code(), Some(0), "{report}");
    assert_eq!(report["ok"], true);
    assert!(report["trail"]["problems"].as_array().unwrap().is_empty());
    // Every event of the log has its record, decisions included.
    let show = json_out(&rein(state.path(), &["runs", "show", &run_id, "--json"]));
    let events = show["events"].as_array().unwrap();
    let decisions = events
        .iter()
        .filter(|e| {
            matches!(
                e["event"]["type"].as_str(),
                Some("model_judged" | "tool_judged" | "answer_judged")
            )
        })
        .count();
    let export = rein(state.path(), &["audit", "export", "--run", &run_id]);
    let records: Vec<Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recorded: HashSet<u64> = records.iter().filter_map(|r| r["event"].as_u64()).collect();
    assert_eq!(recorded.len(), events.len());
    assert!(
        events
            .iter()
            .all(|e| recorded.contains(&e["seq"].as_u64().unwrap()))
    );
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "decision").count(),
        decisions
    );
    // Step 1's and (at least) the resumed step 2's: the dead process's step-2 decision is there
    // too when it had committed before the kill.
    assert!(decisions >= 2, "{decisions} decisions");
    // The rejection is not waited for before the next model call (nothing happened that a
    // resume could repeat), so the kill may land before it commits; whether or not it did, the
    // trail holds exactly what the log holds.
    let in_log = events.iter().any(|e| e["event"]["type"] == "tool_rejected");
    assert_eq!(records.iter().any(|r| r["kind"] == "tool_rejected"), in_log);
}

/// A tool's outcome is not waited for on its own: it goes to the store with the next step's
/// events, handed over as the model is called. Killed while that call hangs, whether or not the
/// outcome had committed, the resumed run never repeats the tool's effect, ends in a named state
/// (completed with the outcome in its log, or in doubt about that one call), and its trail holds
/// a record for every event.
#[tokio::test(flavor = "multi_thread")]
async fn killed_while_the_model_hangs_after_a_tool_ran_its_effect_is_not_repeated() {
    let agent = |uri: &str| {
        format!(
            "{}[[tools]]\nname = \"transfer\"\ndescription = \"Moves money\"\ncommand = [\"sh\", \"-c\", \"echo x >> transfers.log; printf '{{\\\"ok\\\":true}}'\"]\nargs_schema = {{ type = \"object\" }}\n",
            openai_agent(uri)
        )
    };
    // The outcome is handed over unawaited and the next call is in flight when the kill comes.
    let (folder, state) =
        killed_in_second_model_call(&agent, openai_calls(&[("c1", "transfer", "{}")])).await;
    assert_eq!(folder.effects("transfers.log"), 1);

    let answering = fake::server(vec![openai_text("Sent.", 30, 4)]).await;
    std::fs::write(folder.path().join("agent.toml"), agent(&answering.uri())).unwrap();
    let runs = json_out(&rein(state.path(), &["runs", "list", "--json"]));
    let run_id = runs[0]["id"].as_str().unwrap().to_owned();
    let resumed = rein(state.path(), &["runs", "resume", &run_id, "--json"]);
    let report = json_out(&resumed);
    let show = json_out(&rein(state.path(), &["runs", "show", &run_id, "--json"]));
    let outcome_logged = show["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["event"]["type"] == "tool_outcome");
    match report["status"].as_str() {
        Some("completed") => assert!(outcome_logged, "{report}"),
        Some("needs_reconciliation") => {
            assert!(!outcome_logged, "{report}");
            assert_eq!(report["call_id"], "call_1_1", "{report}");
        }
        other => panic!("resumed run ended {other:?}: {}", stderr(&resumed)),
    }
    assert_eq!(
        folder.effects("transfers.log"),
        1,
        "the effect was repeated"
    );
    let verify = json_out(&rein(state.path(), &["audit", "verify", "--json"]));
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(verify["trail"]["problems"].as_array().unwrap().is_empty());
}

#[test]
fn thirty_processes_starting_at_once_on_a_fresh_state_directory_all_succeed() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("fresh");
    let children: Vec<Child> = (0..30)
        .map(|_| spawn(&state, &["run", example().to_str().unwrap(), "--json"]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(json_out(&out)["status"], "completed");
    }
    let runs = json_out(&rein(&state, &["runs", "list", "--limit", "100", "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 30);
    let verify = rein(&state, &["audit", "verify", "--json"]);
    assert_eq!(json_out(&verify)["ok"], true);
}

/// An agent whose runs spend most of their own budget: a tool whose output is large, read back
/// in the second step.
fn spender(run_tokens: Option<u64>, user_tokens: Option<u64>) -> AgentFolder {
    let mut budgets = String::new();
    if let Some(t) = run_tokens {
        budgets.push_str(&format!("[budget]\ntokens = {t}\n"));
    }
    if let Some(t) = user_tokens {
        budgets.push_str(&format!(
            "[[budgets]]\nscope = \"user\"\nperiod = \"day\"\ntokens = {t}\n"
        ));
    }
    AgentFolder::new(&format!(
        r#"name = "spender"
instructions = "Read the report and sum it up."
default_task = "sum up the report"
{budgets}
[model]
provider = "scripted"
name = "s"
script = "script.toml"
max_tokens = 50

[[tools]]
name = "report"
description = "The report"
command = ["sh", "-c", "printf '{{\"text\":\"%s\"}}' \"$(head -c 16000 /dev/zero | tr '\\0' 'x')\""]
idempotent = true
args_schema = {{ type = "object" }}
"#
    ))
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"report\" }]\n[[turns]]\ntext = \"The report is all x.\"\n",
    )
}

#[test]
fn thirty_processes_on_a_budget_for_four_runs_four_complete_and_the_rest_never_start() {
    // What one run spends, measured without budgets.
    let calibration = tempfile::tempdir().unwrap();
    let free = spender(None, None);
    let probe = json_out(&rein(
        calibration.path(),
        &["run", free.path().to_str().unwrap(), "--json"],
    ));
    assert_eq!(probe["status"], "completed");
    let spent = probe["usage"]["input_tokens"].as_u64().unwrap()
        + probe["usage"]["output_tokens"].as_u64().unwrap();
    // A run's own budget with room for its reservations; the user's covers four whole runs.
    let run_cap = spent + 600;
    let user_cap = 4 * run_cap;
    assert!(
        4 * spent > 3 * run_cap,
        "the test needs runs that spend most of their budget ({spent} of {run_cap})"
    );
    let folder = spender(Some(run_cap), Some(user_cap));
    let state = tempfile::tempdir().unwrap();
    let children: Vec<Child> = (0..30)
        .map(|_| {
            spawn(
                state.path(),
                &[
                    "run",
                    folder.path().to_str().unwrap(),
                    "--json",
                    "--user",
                    "ann",
                ],
            )
        })
        .collect();
    let mut completed = 0;
    let mut refused = 0;
    let mut total = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let report = json_out(&out);
        match report["status"].as_str().unwrap() {
            "completed" => {
                assert_eq!(out.status.code(), Some(0));
                completed += 1;
                total += report["usage"]["input_tokens"].as_u64().unwrap()
                    + report["usage"]["output_tokens"].as_u64().unwrap();
            }
            "budget_exhausted" => {
                assert_eq!(out.status.code(), Some(11));
                assert_eq!(report["steps"], 0, "refused before its first model call");
                assert!(
                    report["reason"].as_str().unwrap().contains("not admitted"),
                    "{report}"
                );
                refused += 1;
            }
            other => panic!("a run ended {other}: {report}"),
        }
    }
    assert_eq!((completed, refused), (4, 26));
    assert!(total <= user_cap, "spent {total} of {user_cap}");
    let usage = json_out(&rein(state.path(), &["usage", "--user", "ann", "--json"]));
    assert_eq!(usage[0]["tokens"].as_u64().unwrap(), total);
    assert_eq!(usage[0]["max_tokens"].as_u64().unwrap(), user_cap);
}

#[test]
fn a_command_tool_that_times_out_leaves_its_call_in_doubt() {
    let folder = AgentFolder::new(
        r#"name = "pay"
instructions = "Pay."
default_task = "pay the invoice"
[model]
provider = "scripted"
name = "s"
script = "script.toml"
[[tools]]
name = "transfer"
description = "Moves money, slowly"
command = ["sh", "-c", "echo x >> transfers.log; sleep 20"]
timeout_ms = 300
args_schema = { type = "object" }
"#,
    )
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"transfer\", args = { amount = 120 } }]\n[[turns]]\ntext = \"Paid.\"\n",
    );
    let state = tempfile::tempdir().unwrap();
    let out = rein(
        state.path(),
        &["run", folder.path().to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(12), "{}", stderr(&out));
    let report = json_out(&out);
    assert_eq!(report["status"], "needs_reconciliation");
    assert_eq!(report["call_id"], "call_1_1");
    assert!(
        report["reason"].as_str().unwrap().contains("timed out"),
        "{report}"
    );
    assert_eq!(folder.effects("transfers.log"), 1, "it had its effect");
    // The person who checks the bank settles it; the run then finishes without paying twice.
    let run_id = report["run_id"].as_str().unwrap();
    let settled = rein(
        state.path(),
        &[
            "runs",
            "reconcile",
            run_id,
            "--call",
            "call_1_1",
            "--happened",
            "--as",
            "ops",
        ],
    );
    assert_eq!(settled.status.code(), Some(0), "{}", stderr(&settled));
    let done = json_out(&rein(state.path(), &["runs", "resume", run_id, "--json"]));
    assert_eq!(done["status"], "completed");
    assert_eq!(folder.effects("transfers.log"), 1);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_and_the_work_is_done() {
    let state = tempfile::tempdir().unwrap();
    for args in [
        vec!["tools", "list", example().to_str().unwrap()],
        vec!["run", example().to_str().unwrap()],
        vec!["runs", "list"],
    ] {
        let mut child = spawn(state.path(), &args);
        // The reader goes away before rein writes anything (as `| head -0` would).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
    // The run went on to its end although nobody read its live view.
    let runs = json_out(&rein(state.path(), &["runs", "list", "--json"]));
    assert_eq!(runs[0]["status"], "completed");
}

#[test]
fn a_log_cut_back_with_its_checkpoints_fails_against_the_copies_held_outside() {
    let state = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let run = |task: &str| {
        let out = rein(
            state.path(),
            &[
                "--checkpoint-dir",
                outside.path().to_str().unwrap(),
                "run",
                example().to_str().unwrap(),
                "--task",
                task,
                "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    run("Customer jane@example.com: order A-1001 arrived damaged.");
    let audit = state.path().join("audit");
    let records_then = std::fs::read(audit.join("records.jsonl")).unwrap();
    let checkpoints_then = std::fs::read(audit.join("checkpoints.jsonl")).unwrap();
    run("Customer jane@example.com: order A-1001 arrived damaged, again.");
    let held = [
        "audit",
        "verify",
        "--checkpoint",
        outside.path().to_str().unwrap(),
    ];
    assert_eq!(rein(state.path(), &held).status.code(), Some(0));
    // Whoever can write the state directory cuts the trail back to the first run's end, the
    // checkpoints with it, and removes the second run from the event log too.
    std::fs::write(audit.join("records.jsonl"), &records_then).unwrap();
    std::fs::write(audit.join("checkpoints.jsonl"), &checkpoints_then).unwrap();
    let db = rusqlite_free_delete(state.path());
    assert!(db, "the second run was removed");
    let alone = rein(state.path(), &["audit", "verify"]);
    assert_eq!(
        alone.status.code(),
        Some(0),
        "consistent in itself: {}",
        stderr(&alone)
    );
    let out = rein(state.path(), &held);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("held outside"), "{}", stderr(&out));
}

/// Deletes the newest run from the event log with the sqlite3 command line, as someone with
/// write access to the state directory could. Returns whether it ran.
fn rusqlite_free_delete(state: &Path) -> bool {
    let runs = json_out(&rein(state, &["runs", "list", "--json"]));
    let newest = runs[0]["id"].as_str().unwrap().to_owned();
    let sql = format!(
        "DELETE FROM events WHERE run_id = '{newest}'; DELETE FROM runs WHERE id = '{newest}';"
    );
    Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.argv[2]); c.commit()",
        ])
        .arg(state.join("rein.db"))
        .arg(sql)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
