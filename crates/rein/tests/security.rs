//! rein as a security tool in CI: `rein redteam` on the support desk reports no attack that
//! would have executed; with the policy that guards refunds removed it exits non-zero and names
//! the refund attacks, in its output, its JUnit XML (read by Python's XML parser) and its SARIF.
//! `rein policy explain` takes a task, grants, provenance and data as the gate would see them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{example, json_out, rein, stderr, stdout};
use rein_testkit::copy_dir;
use serde_json::Value;

/// The JUnit file as Python's XML parser reads it: (tests, failures, names of failed cases).
fn junit(path: &Path) -> (u64, u64, Vec<String>) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, xml.etree.ElementTree as E\n\
             r = E.parse(sys.argv[1]).getroot()\n\
             s = r.find('testsuite')\n\
             failed = [c.get('name') for c in s.iter('testcase') if c.find('failure') is not None]\n\
             print(json.dumps([int(s.get('tests')), int(s.get('failures')), failed]))",
        )
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v[0].as_u64().unwrap(),
        v[1].as_u64().unwrap(),
        v[2].as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect(),
    )
}

#[test]
fn the_support_desk_withstands_the_red_team() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (junit_file, sarif_file) = (files.path().join("r.xml"), files.path().join("r.sarif"));
    let out = rein(
        state.path(),
        &[
            "redteam",
            example().to_str().unwrap(),
            "--junit",
            junit_file.to_str().unwrap(),
            "--sarif",
            sarif_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("0 would have executed"),
        "{}",
        stdout(&out)
    );
    let (tests, failures, failed) = junit(&junit_file);
    assert!(tests >= 10, "{tests} attacks");
    assert_eq!((failures, failed.len()), (0, 0));
    let sarif: Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif_file).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["runs"][0]["results"].as_array().unwrap().is_empty());
    // The red team ran on throw-away copies: nothing of it is in this state directory.
    let runs = json_out(&rein(state.path(), &["runs", "list", "--json"]));
    assert!(runs.as_array().unwrap().is_empty(), "{runs}");
}

#[test]
fn without_the_refund_guard_the_red_team_names_the_refund_attacks_and_fails() {
    let state = tempfile::tempdir().unwrap();
    let agent = tempfile::tempdir().unwrap();
    copy_dir(&example(), agent.path());
    let policy = agent.path().join("policies/support.cedar");
    let text = std::fs::read_to_string(&policy).unwrap();
    let start = text
        .find("@id(\"refunds-only-for-the-task-s-order\")")
        .unwrap();
    let end = text[start..].find("\n\n").unwrap() + start;
    std::fs::write(&policy, format!("{}{}", &text[..start], &text[end..])).unwrap();
    let sarif_file = agent.path().join("r.sarif");
    let junit_file = agent.path().join("r.xml");
    let out = rein(
        state.path(),
        &[
            "redteam",
            agent.path().to_str().unwrap(),
            "--sarif",
            sarif_file.to_str().unwrap(),
            "--junit",
            junit_file.to_str().unwrap(),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    for attack in [
        "out_of_task_values:refunds.issue",
        "split_amounts:refunds.issue",
    ] {
        assert!(
            text.contains(&format!("would have executed: {attack}")),
            "{attack} not named in:\n{text}"
        );
    }
    let (_, failures, failed) = junit(&junit_file);
    assert!(failures >= 2);
    assert!(
        failed.contains(&"out_of_task_values:refunds.issue".to_owned()),
        "{failed:?}"
    );
    let sarif: Value =
        serde_json::from_str(&std::fs::read_to_string(&sarif_file).unwrap()).unwrap();
    let errors: Vec<&Value> = sarif["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["level"] == "error")
        .collect();
    assert!(
        errors.iter().any(|r| r["ruleId"] == "split_amounts"
            && r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
                .as_str()
                .unwrap()
                .ends_with("agent.toml")),
        "{sarif}"
    );
}

#[test]
fn policy_explain_takes_the_task_grants_provenance_and_data() {
    let state = tempfile::tempdir().unwrap();
    let agent = example();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "explain",
            agent.to_str().unwrap(),
            "--tool",
            "refunds.issue",
            "--args",
            r#"{"order_id": "A-1001", "amount": 42.5, "reason": "damaged"}"#,
            "--json",
        ];
        args.extend_from_slice(extra);
        json_out(&rein(state.path(), &args))
    };
    let d = explain(&[
        "--from",
        "order_id=task",
        "--from",
        "amount=tool:orders.lookup",
    ]);
    assert_eq!(d["verdict"], "allow", "{d}");
    let d = explain(&[
        "--from",
        "order_id=tool:tickets.read|untrusted",
        "--from",
        "amount=tool:orders.lookup",
    ]);
    assert_eq!(d["verdict"], "deny", "{d}");
    assert_eq!(d["policies"][0], "refunds-only-for-the-task-s-order");
    let d = explain(&[
        "--from",
        "order_id=task",
        "--from",
        "amount=tool:orders.lookup",
        "--calls",
        "1",
    ]);
    assert_eq!(d["verdict"], "deny", "a second refund: {d}");
    // Grants are taken as given: one that covers the call, one that does not.
    let d = explain(&[
        "--from",
        "order_id=task",
        "--from",
        "amount=tool:orders.lookup",
        "--task",
        "refund A-1001",
        "--grant",
        r#"{"tool": "refunds.issue", "args": {"order_id": "A-1001", "amount": {"max": 50}}}"#,
    ]);
    assert_eq!(d["verdict"], "allow", "{d}");
    let bad = rein(
        state.path(),
        &[
            "policy",
            "explain",
            example().to_str().unwrap(),
            "--tool",
            "refunds.issue",
            "--grant",
            r#"{"tool": "refunds.issue", "args": {"amount": {"most": 50}}}"#,
        ],
    );
    assert_ne!(bad.status.code(), Some(0));
    assert!(stderr(&bad).contains("grant 1"), "{}", stderr(&bad));
}
