//! A run is driven by one process at a time. Tried as a second process would: two resumes of one
//! run at once, a writer whose lease was taken over while it waited on its model, a person
//! deciding an approval while the run resumes, and cancellation of a suspended and of a running
//! run. Two engines on one state directory stand for two processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rein_core::secrets::Redactor;
use rein_core::{Durability, EndState, Event, StoredEvent};
use rein_engine::{Agent, Cancelled, EngineError, NoObserver};
use rein_store::{RunFilter, StoreError};
use rein_testkit::{AgentFolder, ManualClock, SCRIPTED_MODEL, engine, engine_with_faults};
use tokio::sync::{Notify, Semaphore};

const ECHO: &str = r#"
[[tools]]
name = "echo"
description = "Echo"
command = ["sh", "-c", "echo x >> echo.log; cat"]
args_schema = { type = "object" }
"#;

const THREE_STEPS: &str = r#"
[[turns]]
calls = [{ tool = "echo", args = { n = 1 } }]
[[turns]]
calls = [{ tool = "echo", args = { n = 2 } }]
[[turns]]
text = "done"
"#;

fn folder(extra: &str) -> AgentFolder {
    AgentFolder::new(&format!(
        "name = \"l\"\ninstructions = \"x\"\n{extra}\n{SCRIPTED_MODEL}{ECHO}"
    ))
    .file("script.toml", THREE_STEPS)
}

/// The agent's model, saying when it is called and answering only when let through: `open`
/// calls pass at once.
struct Gate {
    recorder: Arc<rein_testkit::model::Recorder>,
    entered: Arc<Notify>,
    pass: Arc<Semaphore>,
}

fn gated(agent: &mut Agent, open: usize) -> Gate {
    let (entered, pass) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(open)));
    let (e, p) = (entered.clone(), pass.clone());
    let recorder = rein_testkit::model::watch(agent, move |_| {
        let (e, p) = (e.clone(), p.clone());
        Box::pin(async move {
            e.notify_one();
            p.acquire().await.unwrap().forget();
        })
    });
    Gate {
        recorder,
        entered,
        pass,
    }
}

fn only_run(engine: &rein_engine::Engine) -> String {
    engine.store().list_runs(&RunFilter::default()).unwrap()[0]
        .id
        .clone()
}

fn count(events: &[StoredEvent], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(&e.event)).count()
}

#[tokio::test]
async fn two_resumes_of_one_run_at_once_exactly_one_proceeds_and_each_step_calls_the_model_once() {
    let fx = folder("");
    let state = tempfile::tempdir().unwrap();
    // The first process dies right after the run starts.
    engine_with_faults(state.path(), rein_testkit::stop_after_event(1))
        .start(&fx.agent(), "t", &NoObserver)
        .await
        .unwrap_err();
    let first = Arc::new(engine(state.path()));
    let second = engine(state.path());
    let run_id = only_run(&first);
    let mut agent = fx.agent();
    let gate = gated(&mut agent, 0);
    let agent = Arc::new(agent);
    let driving = {
        let (first, agent, run_id) = (first.clone(), agent.clone(), run_id.clone());
        tokio::spawn(async move { first.resume(&run_id, &agent, &NoObserver).await })
    };
    // The first resume is inside its model call, holding the run.
    gate.entered.notified().await;
    let err = second
        .resume(&run_id, &fx.agent(), &NoObserver)
        .await
        .unwrap_err();
    match &err {
        EngineError::Store(StoreError::Leased { holder, .. }) => {
            assert!(err.to_string().contains("is being driven by"), "{err}");
            assert!(!holder.is_empty());
        }
        other => panic!("expected the run to be held, got {other}"),
    }
    gate.pass.add_permits(10);
    let report = driving.await.unwrap().unwrap();
    assert_eq!(report.status, EndState::Completed);
    let steps: Vec<usize> = gate.recorder.asked().iter().map(|a| a.step()).collect();
    assert_eq!(steps, vec![1, 2, 3]);
    let events = first.store().events(&run_id).unwrap();
    for step in 1..=3 {
        assert_eq!(
            count(
                &events,
                |e| matches!(e, Event::ModelRequested { step: s, .. } if *s == step)
            ),
            1,
            "step {step}"
        );
    }
    assert_eq!(count(&events, |e| matches!(e, Event::RunResumed { .. })), 1);
    assert_eq!(fx.effects("echo.log"), 2);

    // Started at the same instant, too: one proceeds, the other is refused.
    let fx = folder("");
    let state = tempfile::tempdir().unwrap();
    engine_with_faults(state.path(), rein_testkit::stop_after_event(1))
        .start(&fx.agent(), "t", &NoObserver)
        .await
        .unwrap_err();
    let (a, b) = (engine(state.path()), engine(state.path()));
    let run_id = only_run(&a);
    let (agent_a, agent_b) = (fx.agent(), fx.agent());
    let (ra, rb) = tokio::join!(
        a.resume(&run_id, &agent_a, &NoObserver),
        b.resume(&run_id, &agent_b, &NoObserver)
    );
    let outcomes = [ra.is_ok(), rb.is_ok()];
    assert_eq!(
        outcomes.iter().filter(|ok| **ok).count(),
        1,
        "{ra:?} / {rb:?}"
    );
    assert_eq!(fx.effects("echo.log"), 2);
}

#[tokio::test]
async fn a_writer_whose_lease_was_taken_over_has_every_later_append_refused() {
    let fx = folder("");
    let state = tempfile::tempdir().unwrap();
    let stale = Arc::new(engine(state.path()));
    let mut agent = fx.agent();
    let gate = gated(&mut agent, 1);
    let agent = Arc::new(agent);
    let driving = {
        let (stale, agent) = (stale.clone(), agent.clone());
        tokio::spawn(async move { stale.start(&agent, "t", &NoObserver).await })
    };
    // Step 1 passed; the stale writer now waits in its step-2 model call.
    gate.entered.notified().await;
    gate.entered.notified().await;
    let run_id = only_run(&stale);
    // Another process, a minute later: the lease has lapsed (the stale writer's heartbeat is
    // stuck, as a paused process's would be), so it takes the run over and finishes it.
    let later = rein_core::Clock::now_ms(&rein_engine::SystemClock) + 60_000;
    let taker = engine(state.path()).with_clock(ManualClock::at(later));
    let report = taker
        .resume(&run_id, &fx.agent(), &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    // The stale writer wakes up: whatever it records now is refused, and it stops.
    gate.pass.add_permits(10);
    let err = driving.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("does not hold the run's lease"),
        "{err}"
    );
    let events = taker.store().events(&run_id).unwrap();
    assert_eq!(
        count(&events, |e| matches!(
            e,
            Event::ModelReplied { step: 2, .. }
        )),
        1
    );
    assert_eq!(count(&events, |e| matches!(e, Event::RunEnded { .. })), 1);
    assert_eq!(fx.effects("echo.log"), 2, "no effect ran twice");
}

/// A run suspended on one approval, its engine's clock at `now`.
async fn suspended(fx: &AgentFolder, state: &std::path::Path, now: u64) -> (String, String) {
    let engine = engine(state).with_clock(ManualClock::at(now));
    let report = engine.start(&fx.agent(), "t", &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::AwaitingApproval);
    (report.run_id, report.approvals[0].clone())
}

#[tokio::test]
async fn deciding_an_approval_while_the_run_resumes_never_gives_it_two_decisions() {
    let ask = "@ask(\"a person looks first\")\npermit(principal, action == Action::\"echo\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n";
    for decide_first in [false, true] {
        let fx = folder("[approvals]\nexpire_after_secs = 60\n").policy(ask);
        let state = tempfile::tempdir().unwrap();
        let (run_id, approval) = suspended(&fx, state.path(), 1_000_000).await;
        // The resuming process sees the approval expired; the deciding one does not.
        let resumer = engine(state.path()).with_clock(ManualClock::at(1_000_000 + 61_000));
        let decider = engine(state.path()).with_clock(ManualClock::at(1_000_000 + 1_000));
        let agent = fx.agent();
        let redactor = Redactor::default();
        let resume = resumer.resume(&run_id, &agent, &NoObserver);
        let decide = decider.decide(&approval, true, "ann", None, &redactor, Durability::Normal);
        let (resumed, decided) = if decide_first {
            let d = decide.await;
            (resume.await, d)
        } else {
            tokio::join!(resume, decide)
        };
        let events = resumer.store().events(&run_id).unwrap();
        let decisions = count(
            &events,
            |e| matches!(e, Event::ApprovalDecided { approval_id, .. } if *approval_id == approval),
        );
        assert_eq!(
            decisions, 1,
            "decide first: {decide_first}: {resumed:?} {decided:?}"
        );
        assert!(resumed.is_ok() || decided.is_ok());
    }
}

#[tokio::test]
async fn a_suspended_run_is_cancelled_at_once_and_a_running_one_at_its_next_step() {
    let ask = "@ask(\"look first\")\npermit(principal, action == Action::\"echo\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n";
    let fx = folder("").policy(ask);
    let state = tempfile::tempdir().unwrap();
    let (run_id, approval) = suspended(&fx, state.path(), 1_000_000).await;
    let engine_ = engine(state.path());
    let outcome = engine_
        .cancel(&run_id, "ann", &Redactor::default(), Durability::Normal)
        .await
        .unwrap();
    let Cancelled::Ended(report) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(report.status, EndState::Cancelled);
    assert_eq!(report.reason.as_deref(), Some("cancelled by ann"));
    assert_eq!(
        engine_.store().approval(&approval).unwrap().status,
        "cancelled"
    );
    let err = engine_
        .cancel(&run_id, "ann", &Redactor::default(), Durability::Normal)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already ended cancelled"), "{err}");

    // A running run, cancelled from this process and from another one.
    for from_elsewhere in [false, true] {
        let fx = folder("");
        let state = tempfile::tempdir().unwrap();
        let driver = Arc::new(engine(state.path()));
        let mut agent = fx.agent();
        let gate = gated(&mut agent, 1);
        let agent = Arc::new(agent);
        let driving = {
            let (driver, agent) = (driver.clone(), agent.clone());
            tokio::spawn(async move { driver.start(&agent, "t", &NoObserver).await })
        };
        gate.entered.notified().await;
        gate.entered.notified().await;
        let run_id = only_run(&driver);
        let canceller = if from_elsewhere {
            Arc::new(engine(state.path()))
        } else {
            driver.clone()
        };
        let outcome = canceller
            .cancel(&run_id, "bob", &Redactor::default(), Durability::Normal)
            .await
            .unwrap();
        assert_eq!(outcome, Cancelled::Requested);
        gate.pass.add_permits(10);
        let report = driving.await.unwrap().unwrap();
        assert_eq!(report.status, EndState::Cancelled, "{from_elsewhere}");
        assert_eq!(report.reason.as_deref(), Some("cancelled by bob"));
        // Step 1's call ran; nothing after the cancellation did.
        assert_eq!(fx.effects("echo.log"), 1);
    }
}
