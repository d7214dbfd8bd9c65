//! Engine tests: whole runs in-process against a real SQLite store, real child processes for
//! command tools and a local HTTP server for a provider. Crashes are simulated with fault points
//! that abandon a run exactly where a dead process would have left it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use rein_core::secrets::Redactor;
use rein_core::{Durability, EndState, Event};
use rein_engine::{Agent, Engine, EngineError, FaultPlan, NoObserver};
use rein_store::{ApprovalFilter, RunFilter};
use rein_testkit::{
    AgentFolder, SCRIPTED_MODEL, engine_with_faults, kinds, stop_after_effect, stop_after_event,
};
use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// An agent folder with three sh command tools that each append a line to their own effects file
/// (`lookups.log`, `refunds.log`, `emails.log`) and echo their arguments back.
struct Fixture {
    folder: AgentFolder,
    state: tempfile::TempDir,
}

const TOOLS: &str = r#"
[[tools]]
name = "orders.lookup"
description = "Look up an order"
command = ["sh", "-c", "echo x >> lookups.log; cat"]
idempotent = true
args_schema = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"], additionalProperties = false }

[[tools]]
name = "refunds.issue"
description = "Refund"
command = ["sh", "-c", "echo x >> refunds.log; cat"]
args_schema = { type = "object", properties = { amount = { type = "number" } }, required = ["amount"] }

[[tools]]
name = "email.send"
description = "Email"
command = ["sh", "-c", "echo x >> emails.log; cat"]
args_schema = { type = "object" }

[[tools]]
name = "slow"
description = "Hangs"
command = ["sh", "-c", "sleep 20"]
timeout_ms = 200
on_timeout = "failed"
args_schema = { type = "object" }

[[tools]]
name = "transfer"
description = "Moves money, slowly"
command = ["sh", "-c", "echo x >> transfers.log; sleep 20"]
timeout_ms = 200
args_schema = { type = "object" }

[[tools]]
name = "garbage"
description = "Prints garbage"
command = ["sh", "-c", "echo '<html>oops'"]
args_schema = { type = "object" }
"#;

const HAPPY_SCRIPT: &str = r#"
[[turns]]
text = "Looking up."
calls = [{ tool = "orders.lookup", args = { order_id = "A-1" } }]

[[turns]]
calls = [{ tool = "refunds.issue", args = { amount = 5 } }, { tool = "email.send", args = { to = "a@b.c" } }]

[[turns]]
text = "All done."
"#;

impl Fixture {
    fn new(script: &str, extra: &str) -> Fixture {
        let folder = AgentFolder::new(&format!(
            "name = \"t\"\ninstructions = \"Be careful.\"\n{extra}\n{SCRIPTED_MODEL}{TOOLS}"
        ))
        .file("script.toml", script);
        Fixture {
            folder,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn agent(&self) -> Agent {
        self.folder.agent()
    }

    fn engine(&self, faults: FaultPlan) -> Engine {
        engine_with_faults(self.state.path(), faults)
    }

    fn effects(&self, file: &str) -> usize {
        self.folder.effects(file)
    }

    fn workspace(&self) -> PathBuf {
        self.folder.workspace()
    }
}

#[tokio::test]
async fn a_run_records_every_step_and_completes() {
    let fx = Fixture::new(HAPPY_SCRIPT, "");
    let engine = fx.engine(FaultPlan::default());
    let report = engine
        .start(&fx.agent(), "refund A-1", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!((report.steps, report.tool_calls), (3, 3));
    assert_eq!(report.output.as_deref(), Some("All done."));
    assert!(report.usage.input_tokens > 0);
    let events = engine.store().events(&report.run_id).unwrap();
    assert_eq!(
        kinds(&events),
        vec![
            "run_started",
            "model_judged",
            "model_requested",
            "model_replied",
            "tool_judged",
            "tool_intent",
            "tool_outcome",
            "model_judged",
            "model_requested",
            "model_replied",
            "tool_judged",
            "tool_intent",
            "tool_outcome",
            "tool_judged",
            "tool_intent",
            "tool_outcome",
            "model_judged",
            "model_requested",
            "model_replied",
            "answer_judged",
            "run_ended",
        ]
    );
    // The intent holds the validated arguments and the manifest's idempotence.
    assert!(
        matches!(&events[5].event, Event::ToolIntent { tool, args, idempotent: true, attempt: 1, .. } if tool == "orders.lookup" && args == &json!({"order_id": "A-1"}))
    );
    assert!(
        matches!(&events[6].event, Event::ToolOutcome { ok: true, output, .. } if output == &json!({"order_id": "A-1"}))
    );
    assert_eq!(
        (
            fx.effects("lookups.log"),
            fx.effects("refunds.log"),
            fx.effects("emails.log")
        ),
        (1, 1, 1)
    );
    let summary = engine.store().run(&report.run_id).unwrap();
    assert_eq!(
        (summary.status, summary.steps, summary.events),
        (Some(EndState::Completed), 3, 21)
    );
}

#[tokio::test]
async fn bad_model_output_is_rejected_and_the_run_goes_on() {
    let script = r#"
[[turns]]
calls = [
  { tool = "orders.delete", args = { order_id = "A-1" } },
  { tool = "orders.lookup", raw_args = "{order_id: A-1" },
  { tool = "orders.lookup", args = { order_id = 7, extra = true } },
  { tool = "slow" },
  { tool = "garbage" },
]

[[turns]]
text = "I could not do it."
"#;
    let fx = Fixture::new(script, "");
    let engine = fx.engine(FaultPlan::default());
    let report = engine
        .start(&fx.agent(), "break things", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    let events = engine.store().events(&report.run_id).unwrap();
    let rejections: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ToolRejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(rejections.len(), 3, "{rejections:?}");
    assert!(
        rejections[0].contains("unknown tool `orders.delete`")
            && rejections[0].contains("orders.lookup"),
        "{}",
        rejections[0]
    );
    assert!(
        rejections[1].contains("not valid JSON"),
        "{}",
        rejections[1]
    );
    assert!(
        rejections[2].contains("/order_id") && rejections[2].contains("extra"),
        "{}",
        rejections[2]
    );
    let failures: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ToolOutcome {
                ok: false, output, ..
            } => Some(output["error"].as_str().unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].contains("timed out after 200 ms"),
        "{}",
        failures[0]
    );
    assert!(
        failures[1].contains("not one JSON value"),
        "{}",
        failures[1]
    );
    assert_eq!(fx.effects("lookups.log"), 0, "rejected calls never ran");
    // The model saw each problem as the call's result.
    let state = engine.load(&report.run_id).unwrap();
    let errors = state
        .messages()
        .iter()
        .filter(|m| matches!(m, rein_core::Message::Tool { is_error: true, .. }))
        .count();
    assert_eq!(errors, 5);
}

#[tokio::test]
async fn limits_end_the_run_with_its_partial_output() {
    let script = "[[turns]]\ntext = \"working\"\ncalls = [{ tool = \"orders.lookup\", args = { order_id = \"A\" } }]\n".repeat(5);
    let fx = Fixture::new(&script, "[limits]\nmax_steps = 2\n");
    let report = fx
        .engine(FaultPlan::default())
        .start(&fx.agent(), "loop", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::BudgetExhausted);
    assert_eq!((report.steps, report.tool_calls), (2, 2));
    assert_eq!(report.output.as_deref(), Some("working"));
    assert!(report.reason.unwrap().contains("max_steps (2)"));
}

#[tokio::test]
async fn a_run_that_outlives_its_script_ends_partial_with_what_it_completed() {
    let fx = Fixture::new(
        "[[turns]]\ncalls = [{ tool = \"email.send\" }, { tool = \"nope\" }]\n",
        "",
    );
    let report = fx
        .engine(FaultPlan::default())
        .start(&fx.agent(), "x", &NoObserver)
        .await
        .unwrap();
    // The email went out before the model failed: not a bare failure, a partial run that says
    // what it did and what it did not.
    assert_eq!(report.status, EndState::Partial);
    assert_eq!(report.completed, vec!["email.send"]);
    assert_eq!(report.not_completed, vec!["nope (rejected)"]);
    assert!(
        report
            .reason
            .unwrap()
            .contains("has 1 turns and the run asked for turn 2")
    );
}

/// Crashes at every event boundary of the happy run, then resumes: the run always ends
/// `completed` or `needs_reconciliation`, and no non-idempotent effect ever happens twice.
#[tokio::test]
async fn resuming_after_a_crash_at_every_event_never_repeats_an_effect() {
    // Where the boundaries are, from a clean run: the intents of the refund and the email (tools
    // that are not idempotent) are the only places a crash leaves an effect in doubt.
    let clean = Fixture::new(HAPPY_SCRIPT, "");
    let engine = clean.engine(FaultPlan::default());
    let report = engine
        .start(&clean.agent(), "refund A-1", &NoObserver)
        .await
        .unwrap();
    let log = engine.store().events(&report.run_id).unwrap();
    let in_doubt: Vec<(u64, String)> = log
        .iter()
        .filter_map(|e| match &e.event {
            Event::ToolIntent {
                idempotent: false,
                call_id,
                ..
            } => Some((e.seq, call_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(in_doubt.len(), 2);
    for crash_after in 1..log.len() as u64 {
        let fx = Fixture::new(HAPPY_SCRIPT, "");
        let agent = fx.agent();
        let err = fx
            .engine(stop_after_event(crash_after))
            .start(&agent, "refund A-1", &NoObserver)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::Interrupted { seq, .. } if seq == crash_after),
            "{err}"
        );
        let run_id = fx
            .engine(FaultPlan::default())
            .store()
            .list_runs(&last())
            .unwrap()[0]
            .id
            .clone();
        let report = fx
            .engine(FaultPlan::default())
            .resume(&run_id, &agent, &NoObserver)
            .await
            .unwrap();
        match in_doubt.iter().find(|(seq, _)| *seq == crash_after) {
            Some((_, call)) => {
                assert_eq!(
                    report.status,
                    EndState::NeedsReconciliation,
                    "crash after event {crash_after}"
                );
                assert_eq!(report.call_id.as_ref(), Some(call));
            }
            None => assert_eq!(
                report.status,
                EndState::Completed,
                "crash after event {crash_after}: {:?}",
                report.reason
            ),
        }
        // Whatever happened, no effect happened twice, and a completed run did each exactly once.
        let (refunds, emails) = (fx.effects("refunds.log"), fx.effects("emails.log"));
        assert!(
            refunds <= 1 && emails <= 1,
            "crash after event {crash_after}: {refunds} refunds, {emails} emails"
        );
        if report.status == EndState::Completed {
            assert_eq!((refunds, emails), (1, 1), "crash after event {crash_after}");
        }
        let events = fx
            .engine(FaultPlan::default())
            .store()
            .events(&run_id)
            .unwrap();
        assert!(kinds(&events).contains(&"run_resumed"));
        // The log continues seamlessly: the resumed process appended right after the crash point.
        assert_eq!(events[crash_after as usize].event.kind(), "run_resumed");
    }
}

#[tokio::test]
async fn an_effect_in_doubt_is_repeated_only_when_idempotent() {
    // Effect 1 is the idempotent lookup: it is run again, with the same call id.
    let fx = Fixture::new(HAPPY_SCRIPT, "");
    let agent = fx.agent();
    let faults = stop_after_effect(1);
    fx.engine(faults)
        .start(&agent, "t", &NoObserver)
        .await
        .unwrap_err();
    let engine = fx.engine(FaultPlan::default());
    let run_id = engine.store().list_runs(&last()).unwrap()[0].id.clone();
    let report = engine.resume(&run_id, &agent, &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!(
        fx.effects("lookups.log"),
        2,
        "the idempotent lookup ran again"
    );
    let retried = engine.store().events(&run_id).unwrap().into_iter().any(|e| {
        matches!(e.event, Event::ToolIntent { ref call_id, attempt: 2, .. } if call_id == "call_1_1")
    });
    assert!(retried);

    // Effect 2 is the refund: not idempotent, so the run stops and names it.
    let fx = Fixture::new(HAPPY_SCRIPT, "");
    let agent = fx.agent();
    let faults = stop_after_effect(2);
    fx.engine(faults)
        .start(&agent, "t", &NoObserver)
        .await
        .unwrap_err();
    let engine = fx.engine(FaultPlan::default());
    let run_id = engine.store().list_runs(&last()).unwrap()[0].id.clone();
    let report = engine.resume(&run_id, &agent, &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::NeedsReconciliation);
    assert_eq!(report.call_id.as_deref(), Some("call_2_1"));
    assert!(report.reason.unwrap().contains("refunds.issue"));
    assert_eq!(
        (fx.effects("refunds.log"), fx.effects("emails.log")),
        (1, 0)
    );

    // An ended run is not resumed again.
    let err = engine
        .resume(&run_id, &agent, &NoObserver)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::AlreadyEnded {
                status: EndState::NeedsReconciliation,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn isolated_workspaces_are_copies_per_run() {
    let fx = Fixture::new(HAPPY_SCRIPT, "[workspace]\nisolate = true\n");
    std::fs::write(fx.workspace().join("seed.txt"), "seed").unwrap();
    let engine = fx.engine(FaultPlan::default());
    let a = engine.start(&fx.agent(), "t", &NoObserver).await.unwrap();
    let b = engine.start(&fx.agent(), "t", &NoObserver).await.unwrap();
    assert_ne!(a.workspace, b.workspace);
    for report in [&a, &b] {
        let ws = Path::new(&report.workspace);
        assert!(ws.starts_with(fx.state.path().canonicalize().unwrap()));
        assert_eq!(
            std::fs::read_to_string(ws.join("seed.txt")).unwrap(),
            "seed"
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("refunds.log"))
                .unwrap()
                .lines()
                .count(),
            1
        );
    }
    assert_eq!(
        fx.effects("refunds.log"),
        0,
        "the agent's own folder is untouched"
    );
}

fn openai_fixture(server: &MockServer) -> Fixture {
    let fx = Fixture::new("", "");
    let toml = std::fs::read_to_string(fx.folder.path().join("agent.toml")).unwrap().replace(
        "provider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"",
        &format!("provider = \"openai\"\nname = \"gpt-x\"\nbase_url = \"{}/v1\"\napi_key_env = \"TEST_KEY\"\nmax_attempts = 3\nmax_backoff_ms = 5", server.uri()),
    );
    std::fs::write(fx.folder.path().join("agent.toml"), toml).unwrap();
    fx
}

fn openai_agent(fx: &Fixture) -> Agent {
    let spec = rein_config::load(fx.folder.path()).unwrap();
    Agent::from_spec(&spec, &|var| {
        (var == "TEST_KEY").then(|| "sk-test".to_owned())
    })
    .unwrap()
}

fn final_answer() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "choices": [{"message": {"content": "done"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2}
    }))
}

#[tokio::test]
async fn a_rate_limited_provider_is_retried_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0")
                .set_body_json(json!({"error": {"message": "slow down"}})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(final_answer())
        .mount(&server)
        .await;
    let fx = openai_fixture(&server);
    let engine = fx.engine(FaultPlan::default());
    let report = engine
        .start(&openai_agent(&fx), "hi", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!(report.usage.input_tokens, 10);
    let events = engine.store().events(&report.run_id).unwrap();
    assert_eq!(
        kinds(&events),
        vec![
            "run_started",
            "model_judged",
            "model_requested",
            "model_failed",
            "model_requested",
            "model_replied",
            "answer_judged",
            "run_ended"
        ]
    );
    assert!(
        matches!(&events[3].event, Event::ModelFailed { will_retry: true, retry_in_ms: Some(0), error, .. } if error.contains("429"))
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_provider_that_keeps_failing_ends_the_run_failed() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("down"))
        .mount(&server)
        .await;
    let fx = openai_fixture(&server);
    let report = fx
        .engine(FaultPlan::default())
        .start(&openai_agent(&fx), "hi", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Failed);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("failed after 3 tries: provider error (HTTP 500)"),
        "{:?}",
        report.reason
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 3);

    // A refused request (401) is not retried.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "bad key"}})),
        )
        .mount(&server)
        .await;
    let fx = openai_fixture(&server);
    let report = fx
        .engine(FaultPlan::default())
        .start(&openai_agent(&fx), "hi", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Failed);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[test]
fn a_missing_api_key_is_a_clear_error() {
    let fx = Fixture::new("", "");
    let toml = std::fs::read_to_string(fx.folder.path().join("agent.toml"))
        .unwrap()
        .replace(
            "provider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"",
            "provider = \"anthropic\"\nname = \"claude\"\napi_key_env = \"MY_KEY\"",
        );
    std::fs::write(fx.folder.path().join("agent.toml"), toml).unwrap();
    let spec = rein_config::load(fx.folder.path()).unwrap();
    let err = Agent::from_spec(&spec, &|_| None).unwrap_err();
    assert!(
        err.to_string()
            .contains("model.api_key_env names `MY_KEY`, which is not set"),
        "{err}"
    );
}

/// The most recent run.
fn last() -> RunFilter {
    RunFilter {
        limit: 1,
        ..RunFilter::default()
    }
}

#[tokio::test]
async fn an_approval_nobody_decides_expires_and_counts_as_denied() {
    let fx = Fixture::new(HAPPY_SCRIPT, "[approvals]\nexpire_after_secs = 60\n");
    std::fs::write(
        fx.folder.path().join("policies/ask.cedar"),
        "@ask(\"refunds need a person\")\npermit(principal, action == Action::\"refunds.issue\", resource);\n",
    )
    .unwrap();
    let agent = fx.agent();
    let clock = rein_testkit::ManualClock::at(1_000_000);
    let engine = fx.engine(FaultPlan::default()).with_clock(clock.clone());
    let report = engine
        .start(&agent, "refund A-1", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::AwaitingApproval);
    assert_eq!(report.approvals.len(), 1);
    // The email of the same step was allowed and ran; the refund waits.
    assert_eq!(
        (fx.effects("refunds.log"), fx.effects("emails.log")),
        (0, 1)
    );

    clock.advance(60_000);
    let err = engine
        .decide(
            &report.approvals[0],
            true,
            "late",
            None,
            &Redactor::default(),
            Durability::Normal,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has expired, which counts as denied"),
        "{err}"
    );

    let report = engine
        .resume(&report.run_id, &agent, &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!(fx.effects("refunds.log"), 0, "the expired refund never ran");
    let events = engine.store().events(&report.run_id).unwrap();
    assert!(events.iter().any(|e| matches!(&e.event, Event::ApprovalDecided { expired: true, approved: false, by, .. } if by == "rein")));
    let approvals = engine
        .store()
        .list_approvals(&ApprovalFilter::default())
        .unwrap()
        .into_iter()
        .filter(|a| a.status != "pending")
        .collect::<Vec<_>>();
    assert_eq!(
        approvals
            .iter()
            .map(|a| (a.status.as_str(), a.decided_by.as_deref()))
            .collect::<Vec<_>>(),
        vec![("expired", Some("rein"))]
    );
}

#[tokio::test]
async fn a_run_in_doubt_is_reconciled_by_a_person_and_finishes_without_repeating_the_effect() {
    // The refund ran but its outcome was lost: the operator confirms it happened.
    let fx = Fixture::new(HAPPY_SCRIPT, "");
    let agent = fx.agent();
    let faults = stop_after_effect(2);
    fx.engine(faults)
        .start(&agent, "t", &NoObserver)
        .await
        .unwrap_err();
    let engine = fx.engine(FaultPlan::default());
    let run_id = engine.store().list_runs(&last()).unwrap()[0].id.clone();
    let report = engine.resume(&run_id, &agent, &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::NeedsReconciliation);
    let err = engine
        .reconcile(
            &run_id,
            "call_9_9",
            true,
            json!({}),
            "ops",
            None,
            &Redactor::default(),
            Durability::Normal,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("stopped on call call_2_1"),
        "{err}"
    );
    engine
        .reconcile(
            &run_id,
            "call_2_1",
            true,
            json!({"amount": 5}),
            "ops",
            Some("seen in the ledger".into()),
            &Redactor::default(),
            Durability::Normal,
        )
        .await
        .unwrap();
    let report = engine.resume(&run_id, &agent, &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!(
        (fx.effects("refunds.log"), fx.effects("emails.log")),
        (1, 1),
        "the refund was not repeated"
    );

    // The refund's intent was recorded but it never ran: the operator says so and it runs once.
    let fx = Fixture::new(HAPPY_SCRIPT, "");
    let agent = fx.agent();
    let probe = fx
        .engine(FaultPlan::default())
        .start(&agent, "t", &NoObserver)
        .await
        .unwrap();
    let intent_seq = fx
        .engine(FaultPlan::default())
        .store()
        .events(&probe.run_id)
        .unwrap()
        .iter()
        .find(|e| matches!(&e.event, Event::ToolIntent { tool, .. } if tool == "refunds.issue"))
        .unwrap()
        .seq;
    let fx = Fixture::new(HAPPY_SCRIPT, "");
    let agent = fx.agent();
    fx.engine(stop_after_event(intent_seq))
        .start(&agent, "t", &NoObserver)
        .await
        .unwrap_err();
    let engine = fx.engine(FaultPlan::default());
    let run_id = engine.store().list_runs(&last()).unwrap()[0].id.clone();
    assert_eq!(
        engine
            .resume(&run_id, &agent, &NoObserver)
            .await
            .unwrap()
            .status,
        EndState::NeedsReconciliation
    );
    assert_eq!(fx.effects("refunds.log"), 0);
    engine
        .reconcile(
            &run_id,
            "call_2_1",
            false,
            json!(null),
            "ops",
            None,
            &Redactor::default(),
            Durability::Normal,
        )
        .await
        .unwrap();
    let report = engine.resume(&run_id, &agent, &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::Completed);
    assert_eq!(
        (fx.effects("refunds.log"), fx.effects("emails.log")),
        (1, 1)
    );
    let err = engine
        .reconcile(
            &run_id,
            "call_2_1",
            true,
            json!({}),
            "ops",
            None,
            &Redactor::default(),
            Durability::Normal,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not waiting for reconciliation"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_ending_together_each_return_covered_by_a_signed_checkpoint() {
    // Runs that end at the same moment share the audit writer's checkpoints: each must still
    // find, once its call returns, a signed checkpoint that covers every record of its events.
    let fx = Fixture::new("[[turns]]\ntext = \"Done.\"\n", "");
    let engine = std::sync::Arc::new(fx.engine(FaultPlan::default()));
    let agent = std::sync::Arc::new(fx.agent());
    let audit = fx.state.path().join("audit");
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..24 {
        let (engine, agent, audit) = (engine.clone(), agent.clone(), audit.clone());
        runs.spawn(async move {
            let report = engine
                .start(&agent, format!("job {i}").as_str(), &NoObserver)
                .await
                .unwrap();
            assert_eq!(report.status, EndState::Completed);
            // Read the checkpoints before the records: whatever other runs append meanwhile,
            // this run's records were all written before it returned.
            let checkpoints =
                rein_audit::read_held_checkpoints(&audit.join("checkpoints.jsonl")).unwrap();
            let covered = checkpoints.last().map_or(0, |c| c.tree_size);
            let records = rein_audit::read_records(&audit).unwrap();
            let events = engine.store().events(&report.run_id).unwrap();
            let last = records
                .iter()
                .filter(|r| r.run_id.as_deref() == Some(report.run_id.as_str()))
                .map(|r| r.seq)
                .max()
                .unwrap();
            let mine = records
                .iter()
                .filter(|r| r.run_id.as_deref() == Some(report.run_id.as_str()))
                .count();
            assert_eq!(mine, events.len(), "a record for every event");
            assert!(
                covered >= last,
                "run {} returned with its last record at {last} but the last checkpoint covers {covered}",
                report.run_id
            );
        });
    }
    while let Some(done) = runs.join_next().await {
        done.unwrap();
    }
    let key = rein_audit::AuditLog::open(&audit, Default::default())
        .unwrap()
        .public_key();
    let report = rein_audit::verify(&audit, &[key]).unwrap();
    assert_eq!(report.uncovered, 0);
}
