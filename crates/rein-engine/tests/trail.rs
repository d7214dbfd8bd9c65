//! The audit trail checked against the event log: each run's audit cursor is read from the
//! records the check reads, so a record naming no event of its run, or an event recorded twice,
//! is found; a run another live process drives, whose last events are not recorded yet, and a
//! run whose records predate records naming their events are told apart, not reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use rein_audit::Entry;
use rein_core::{Durability, Event, RunStarted, StoredEvent};
use rein_engine::NoObserver;
use rein_store::Lease;
use rein_testkit::{AgentFolder, PERMIT_ALL, SCRIPTED_MODEL, engine};

#[tokio::test]
async fn the_trail_check_finds_what_does_not_match_and_tells_live_and_legacy_runs_apart() {
    let folder = AgentFolder::new(&format!(
        "name = \"t\"\ninstructions = \"Greet.\"\n{SCRIPTED_MODEL}"
    ))
    .file("script.toml", "[[turns]]\ntext = \"Hi.\"\n")
    .policy(PERMIT_ALL);
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let run = engine
        .start(&folder.agent(), "greet", &NoObserver)
        .await
        .unwrap()
        .run_id;
    let old = engine
        .start(&folder.agent(), "greet again", &NoObserver)
        .await
        .unwrap()
        .run_id;
    let clean = engine.check_trail().unwrap();
    assert!(clean.problems.is_empty(), "{clean:?}");
    assert_eq!(clean.runs, 2);
    assert!(clean.in_progress.is_empty() && clean.legacy.is_empty());

    // A run another live process drives: its first event is in the log, not yet in the trail.
    let lease = Lease::new_run("live", "another-process", u64::MAX / 4);
    let started = StoredEvent {
        seq: 1,
        at_ms: 1,
        event: Event::RunStarted(Box::new(RunStarted {
            agent: "t".into(),
            task: "greet".into(),
            ..RunStarted::default()
        })),
    };
    engine
        .store()
        .append(&lease, &[started], Durability::Normal, None)
        .await
        .unwrap();
    // A record of a run the event log does not hold, and one of the old run naming no event.
    let record = |run: &str, event: Option<u64>| Entry {
        at_ms: 1,
        kind: "decision".into(),
        run_id: Some(run.into()),
        event,
        data: serde_json::json!({}).into(),
    };
    let log = engine.audit_log();
    log.append(&[record("ghost", Some(1)), record(&old, None)])
        .unwrap();
    // Event 1 of the first run recorded a second time (the log's own writer never would).
    let records = state.path().join("audit/records.jsonl");
    let next = std::fs::read_to_string(&records).unwrap().lines().count() + 1;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&records)
        .unwrap();
    writeln!(
        file,
        r#"{{"seq":{next},"at_ms":1,"kind":"run_started","run_id":"{run}","event":1,"data":{{}}}}"#
    )
    .unwrap();

    let check = engine.check_trail().unwrap();
    assert_eq!(check.runs, 3);
    assert_eq!(check.in_progress, ["live"]);
    assert_eq!(check.legacy, [old]);
    assert_eq!(check.problems.len(), 2, "{:?}", check.problems);
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.contains("names run ghost event 1, which the event log does not hold")),
        "{:?}",
        check.problems
    );
    assert!(
        check
            .problems
            .iter()
            .any(|p| p.starts_with(&format!("run {run} event 1 is recorded 2 times"))),
        "{:?}",
        check.problems
    );
}
