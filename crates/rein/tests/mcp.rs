//! `rein tools list` and MCP agents from the command line: every tool with its source,
//! arguments, labels and default verdict; MCP tools pinned across processes, a changed one
//! flagged until an operator accepts it; `rein run` and `rein policy check` with MCP tools.
//! The server is a real child process (crates/rein-engine/tests/fixtures/fake_mcp.py).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{json_out, rein, stdout};
use serde_json::Value;

fn agent(counter: &Path) -> tempfile::TempDir {
    let fake =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rein-engine/tests/fixtures/fake_mcp.py");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspace")).unwrap();
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/p.cedar"),
        r#"
permit (principal, action == Action::"use_model", resource);
permit (principal, action == Action::"fake.echo", resource);
@ask("supervisor")
permit (principal, action == Action::"fake.huge", resource);
forbid (principal, action == Action::"fake.crash", resource);
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("script.toml"),
        "[[turns]]\ncalls = [{ tool = \"fake.echo\", args = { text = \"hi\" } }, { tool = \"fake.crash\" }]\n[[turns]]\ntext = \"done\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            r#"name = "cli-mcp"
instructions = "Use the tools."
default_task = "echo"
[model]
provider = "scripted"
name = "s"
script = "script.toml"

[[tools]]
builtin = "fs.read"

[[mcp]]
name = "fake"
command = ["python3", "{}", "normal", "--counter", "{}"]

[mcp.tools.echo]
labels = ["internal"]
idempotent = true
risk = "low"
sink = false

[mcp.tools.garbage]
enabled = false
"#,
            fake.display(),
            counter.display()
        ),
    )
    .unwrap();
    dir
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name} in {rows}"))
}

#[test]
fn tools_list_shows_sources_labels_and_default_verdicts() {
    let counter = tempfile::NamedTempFile::new().unwrap();
    let dir = agent(counter.path());
    let state = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let out = rein(state.path(), &["tools", "list", dir_arg, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = json_out(&out);
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // The disabled tool is not there at all.
    assert_eq!(
        names,
        vec![
            "fake.crash",
            "fake.echo",
            "fake.fails",
            "fake.huge",
            "fake.malformed",
            "fake.slow",
            "fs.read"
        ]
    );
    let echo = row(&rows, "fake.echo");
    assert_eq!(echo["source"], "mcp fake (stdio)");
    assert_eq!(echo["verdict"], "allow");
    assert_eq!(echo["labels"], serde_json::json!(["internal"]));
    assert_eq!(echo["arguments"], "text?: string");
    assert_eq!(echo["operator_manifest"], true);
    // Undeclared: restrictive defaults; the verdicts follow the policies.
    let huge = row(&rows, "fake.huge");
    assert_eq!(
        (
            &huge["verdict"],
            &huge["labels"],
            &huge["risk"],
            &huge["sink"],
            &huge["idempotent"]
        ),
        (
            &Value::from("ask"),
            &serde_json::json!(["untrusted"]),
            &Value::from("high"),
            &Value::from(true),
            &Value::from(false)
        )
    );
    assert_eq!(row(&rows, "fake.crash")["verdict"], "deny");
    assert_eq!(row(&rows, "fake.slow")["verdict"], "deny");
    assert_eq!(row(&rows, "fs.read")["source"], "built-in");
    // The table says the same for people.
    let table = stdout(&rein(state.path(), &["tools", "list", dir_arg]));
    assert!(
        table.contains("fake.echo") && table.contains("mcp fake (stdio)"),
        "{table}"
    );
    assert!(
        table.contains("[no operator entry: restrictive defaults]"),
        "{table}"
    );

    // `rein policy check` knows the MCP tools.
    let check = rein(state.path(), &["policy", "check", dir_arg]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_changed_tool_is_flagged_until_accepted_and_runs_use_mcp_tools() {
    let counter = tempfile::NamedTempFile::new().unwrap();
    let dir = agent(counter.path());
    let state = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    // First listing pins the definitions (the server is at generation 1).
    let rows = json_out(&rein(state.path(), &["tools", "list", dir_arg, "--json"]));
    assert_eq!(row(&rows, "fake.echo")["changed"], false);
    // The next start describes `echo` differently: flagged, and a run is refused the call.
    let rows = json_out(&rein(state.path(), &["tools", "list", dir_arg, "--json"]));
    assert_eq!(row(&rows, "fake.echo")["changed"], true);
    let run = rein(state.path(), &["run", dir_arg, "--json"]);
    let report = json_out(&run);
    assert_eq!(report["status"], "completed", "{report}");
    let events = json_out(&rein(
        state.path(),
        &["runs", "show", report["run_id"].as_str().unwrap(), "--json"],
    ));
    let text = events.to_string();
    assert!(text.contains("mcp_tool_changed"), "{text}");
    assert!(text.contains("changed since it was first listed"), "{text}");
    // The operator reviews and accepts; the next run's echo goes through, the forbidden crash
    // never reaches the server.
    let accepted = rein(
        state.path(),
        &["tools", "list", dir_arg, "--accept-changes"],
    );
    assert!(stdout(&accepted).contains("pinned the current definitions"));
    let run = rein(state.path(), &["run", dir_arg, "--json"]);
    let report = json_out(&run);
    let events = json_out(&rein(
        state.path(),
        &["runs", "show", report["run_id"].as_str().unwrap(), "--json"],
    ));
    let outcomes: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "tool_outcome")
        .collect();
    let judged: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "tool_judged")
        .map(|e| &e["event"]["verdict"])
        .collect();
    assert_eq!(judged, vec!["allow", "deny"]);
    assert_eq!(outcomes.len(), 1);
    assert!(
        outcomes[0]["event"]["output"].to_string().contains("hi"),
        "{events}"
    );
}
