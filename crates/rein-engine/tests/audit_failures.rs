//! When the audit trail cannot be written, a run stops before its next effect, and a resume once
//! the trail is writable again fills in what it lacks and finishes the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rein_core::EndState;
use rein_engine::{EngineError, NoObserver};
use rein_store::RunFilter;
use rein_testkit::{AgentFolder, PERMIT_ALL, SCRIPTED_MODEL, assert_trail_complete, engine};

const AGENT: &str = r#"
[[tools]]
name = "refunds.issue"
description = "Refund"
command = ["sh", "-c", "echo x >> refunds.log; cat"]
args_schema = { type = "object" }
"#;

const SCRIPT: &str = r#"
[[turns]]
calls = [{ tool = "refunds.issue", args = { amount = 5 } }]

[[turns]]
text = "Refunded."
"#;

#[tokio::test]
async fn a_run_whose_audit_trail_cannot_be_written_stops_before_its_effect_and_resumes_whole() {
    let folder = AgentFolder::new(&format!(
        "name = \"t\"\ninstructions = \"Refund.\"\n{SCRIPTED_MODEL}{AGENT}"
    ))
    .file("script.toml", SCRIPT)
    .policy(PERMIT_ALL);
    let state = tempfile::tempdir().unwrap();
    // The audit log's lock file is a folder: every write of the trail fails.
    let lock = state.path().join("audit/lock");
    std::fs::create_dir_all(&lock).unwrap();

    let failed = engine(state.path())
        .start(&folder.agent(), "refund A-1", &NoObserver)
        .await
        .unwrap_err();
    assert!(
        matches!(&failed, EngineError::Audit(m) if m.contains("lock")),
        "{failed}"
    );
    assert_eq!(
        folder.effects("refunds.log"),
        0,
        "the refund ran with no audit trail of its decision"
    );

    // Writable again: the resume fills in the records the failure left out and finishes.
    std::fs::remove_dir(&lock).unwrap();
    let engine = engine(state.path());
    let runs = engine
        .store()
        .list_runs(&RunFilter {
            limit: 10,
            ..RunFilter::default()
        })
        .unwrap();
    assert_eq!(runs.len(), 1);
    let report = engine
        .resume(&runs[0].id, &folder.agent(), &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!(folder.effects("refunds.log"), 1);
    drop(engine);
    assert_trail_complete(state.path());
}
