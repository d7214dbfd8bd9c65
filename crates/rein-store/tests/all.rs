//! The store's conformance suite. Every test takes a `&dyn Store`, so a new backend is checked by
//! running the same functions against it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rein_core::{Durability, EndState, Event, Limits, RunStarted, StoredEvent, Usage};
use rein_store::{SqliteStore, Store, StoreError};

fn started(agent: &str) -> Event {
    Event::RunStarted(RunStarted {
        agent: agent.into(),
        agent_dir: None,
        agent_digest: "digest".into(),
        workspace: "/w".into(),
        task: "the task".into(),
        instructions: "be brief".into(),
        provider: "scripted".into(),
        model: "m".into(),
        limits: Limits::default(),
        tools: vec![],
        user: "u".into(),
        tenant: "t".into(),
        parent: None,
    })
}

fn ev(seq: u64, event: Event) -> StoredEvent {
    StoredEvent {
        seq,
        at_ms: 1_000 + seq,
        event,
    }
}

fn step(seq: u64, n: u32) -> [StoredEvent; 2] {
    [
        ev(
            seq,
            Event::ModelRequested {
                step: n,
                attempt: 1,
                model: "m".into(),
                messages: 1,
                tools: 0,
            },
        ),
        ev(
            seq + 1,
            Event::ModelReplied {
                step: n,
                text: Some(format!("reply {n}")),
                tool_calls: vec![],
                usage: Usage {
                    input_tokens: 3,
                    output_tokens: 1,
                },
                latency_us: 7,
                stop_reason: None,
                model: "m".into(),
                cost_micros: 0,
            },
        ),
    ]
}

fn ended(seq: u64) -> StoredEvent {
    ev(
        seq,
        Event::RunEnded {
            status: EndState::Completed,
            output: Some("ok".into()),
            reason: None,
            call_id: None,
        },
    )
}

fn open(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(dir, Durability::Normal).unwrap()
}

#[tokio::test]
async fn appended_events_read_back_in_order_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    check_round_trip(&store).await;
}

async fn check_round_trip(store: &dyn Store) {
    store
        .append("r1", &[ev(1, started("agent-a"))])
        .await
        .unwrap();
    let [a, b] = step(2, 1);
    store.append("r1", &[a, b]).await.unwrap();
    let summary = store.run("r1").unwrap();
    assert_eq!(
        (summary.agent.as_str(), summary.task.as_str()),
        ("agent-a", "the task")
    );
    assert_eq!(
        (summary.status, summary.events, summary.steps),
        (None, 3, 1)
    );
    store.append("r1", &[ended(4)]).await.unwrap();

    let events = store.events("r1").unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(events[0], ev(1, started("agent-a")));
    let summary = store.run("r1").unwrap();
    assert_eq!(
        (summary.status, summary.events, summary.updated_ms),
        (Some(EndState::Completed), 4, 1_004)
    );
    assert_eq!(store.list_runs(10).unwrap(), vec![summary]);
}

#[tokio::test]
async fn appends_that_do_not_continue_the_log_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    check_ordinals(&store).await;
}

async fn check_ordinals(store: &dyn Store) {
    let [a, b] = step(1, 1);
    let err = store.append("r2", &[a]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("first event of a run must be run_started"),
        "{err}"
    );
    store.append("r2", &[ev(1, started("x"))]).await.unwrap();
    let err = store
        .append("r2", &[ev(1, started("x"))])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    let mut skip = b.clone();
    skip.seq = 3;
    let err = store.append("r2", &[skip]).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("expected event 2 but was given event 3"),
        "{err}"
    );
    let [a, _] = step(2, 1);
    let mut gap = b;
    gap.seq = 4;
    let err = store.append("r2", &[a, gap]).await.unwrap_err();
    assert!(err.to_string().contains("consecutive"), "{err}");
    // The refused appends left nothing behind.
    assert_eq!(store.events("r2").unwrap().len(), 1);
}

#[tokio::test]
async fn many_concurrent_runs_all_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(dir.path()));
    let mut tasks = Vec::new();
    for r in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("run-{r:03}");
            store.append(&id, &[ev(1, started("c"))]).await.unwrap();
            for n in 0..25u32 {
                let [a, b] = step(2 + 2 * n as u64, n + 1);
                // Queue without waiting on the first: order is still kept.
                let first = store.append(&id, &[a]);
                store.append(&id, &[b]).await.unwrap();
                first.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let runs = store.list_runs(100).unwrap();
    assert_eq!(runs.len(), 40);
    for run in runs {
        assert_eq!((run.events, run.steps), (51, 25));
        let seqs: Vec<u64> = store
            .events(&run.id)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, (1..=51).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_reopened_store_continues_where_it_was_and_a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append("r3", &[ev(1, started("x"))]).await.unwrap();
    }
    let first = open(dir.path());
    let second = open(dir.path());
    let [a, _] = step(2, 1);
    first.append("r3", std::slice::from_ref(&a)).await.unwrap();
    // The second "process" has not seen event 2 and tries to write it too.
    let err = second.append("r3", &[a]).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict { .. } | StoreError::Database { .. }
        ),
        "{err}"
    );
    assert_eq!(second.events("r3").unwrap().len(), 2);
}

#[tokio::test]
async fn run_ids_resolve_from_unique_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for id in ["abc111", "abc222", "xyz"] {
        store.append(id, &[ev(1, started("x"))]).await.unwrap();
    }
    assert_eq!(store.resolve_run_id("x").unwrap(), "xyz");
    assert_eq!(store.resolve_run_id("abc1").unwrap(), "abc111");
    assert!(matches!(
        store.resolve_run_id("abc"),
        Err(StoreError::Ambiguous { .. })
    ));
    assert!(matches!(
        store.resolve_run_id("nope"),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(store.run("nope"), Err(StoreError::NotFound(_))));
}

#[tokio::test]
async fn damaged_events_and_newer_schemas_are_reported_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.append("r4", &[ev(1, started("x"))]).await.unwrap();
    }
    let raw = rusqlite::Connection::open(dir.path().join("rein.db")).unwrap();
    raw.execute(
        "UPDATE events SET payload = '{\"type\":\"mystery\"}' WHERE run_id = 'r4'",
        [],
    )
    .unwrap();
    let store = open(dir.path());
    let err = store.events("r4").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { seq: 1, .. }), "{err}");
    assert!(err.to_string().contains("run r4, event 1"), "{err}");
    drop(store);
    raw.pragma_update(None, "user_version", 99).unwrap();
    let err = SqliteStore::open(dir.path(), Durability::Normal).unwrap_err();
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn fsync_durability_commits_and_disk_usage_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Fsync).unwrap();
    store.append("r5", &[ev(1, started("x"))]).await.unwrap();
    assert!(store.disk_bytes().unwrap() > 0);
    assert_eq!(store.events("r5").unwrap().len(), 1);
}
