//! A model's reply is adversarial input. Tried from real HTTP providers on loopback: tool calls
//! that share an id, ids made of path characters, arguments that are not JSON or are huge,
//! hundreds of calls in one reply, unknown tools. Each becomes a named rejection the model is
//! told about, and the run goes on (or ends in a named state); nothing wedges the run. Also: a
//! call that times out is in doubt, and each model reserves (and is sent) its own reply cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rein_core::{EndState, Event, StoredEvent};
use rein_engine::{EngineError, NoObserver};
use rein_testkit::fake::{self, anthropic_calls, anthropic_text, openai_calls, openai_text};
use rein_testkit::{AgentFolder, SCRIPTED_MODEL, engine};
use serde_json::json;

const LOOKUP: &str = r#"
[[tools]]
name = "orders.lookup"
description = "Look up an order"
command = ["sh", "-c", "echo x >> lookups.log; cat"]
idempotent = true
args_schema = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
"#;

fn openai_agent(uri: &str, extra: &str) -> AgentFolder {
    AgentFolder::new(&format!(
        "name = \"h\"\ninstructions = \"Be careful.\"\n{extra}\n[model]\nprovider = \"openai\"\nname = \"gpt-x\"\nbase_url = \"{uri}/v1\"\nmax_attempts = 1\nmax_tokens = 100\n{LOOKUP}"
    ))
}

fn anthropic_agent(uri: &str) -> AgentFolder {
    AgentFolder::new(&format!(
        "name = \"h\"\ninstructions = \"Be careful.\"\n[model]\nprovider = \"anthropic\"\nname = \"claude-x\"\nbase_url = \"{uri}\"\nmax_attempts = 1\nmax_tokens = 100\n{LOOKUP}"
    ))
}

fn intents(events: &[StoredEvent]) -> Vec<(String, serde_json::Value)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ToolIntent { call_id, args, .. } => Some((call_id.clone(), args.clone())),
            _ => None,
        })
        .collect()
}

fn rejections(events: &[StoredEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::ToolRejected {
                call_id, reason, ..
            } => Some((call_id.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn duplicate_call_ids_from_openai_are_renamed_and_the_run_completes() {
    let server = fake::server(vec![
        openai_calls(&[
            ("call_x", "orders_lookup", r#"{"order_id":"A"}"#),
            ("call_x", "orders_lookup", r#"{"order_id":"B"}"#),
        ]),
        openai_text("Both looked up.", 80, 5),
    ])
    .await;
    let folder = openai_agent(&server.uri(), "");
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let report = engine
        .start(&folder.agent(), "look up A and B", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let events = engine.store().events(&report.run_id).unwrap();
    assert_eq!(
        intents(&events),
        vec![
            ("call_1_1".to_owned(), json!({"order_id": "A"})),
            ("call_1_2".to_owned(), json!({"order_id": "B"}))
        ]
    );
    assert_eq!(folder.effects("lookups.log"), 2);
    // The log folds (a resume would not find it inconsistent).
    assert!(engine.load(&report.run_id).unwrap().ended().is_some());
    // The provider was sent rein's ids, consistently, in the conversation's second request.
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[1].body_json().unwrap();
    let messages = body["messages"].as_array().unwrap();
    let assistant_ids: Vec<&str> = messages[2]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(assistant_ids, ["call_1_1", "call_1_2"]);
    assert_eq!(messages[3]["tool_call_id"], "call_1_1");
    assert_eq!(messages[4]["tool_call_id"], "call_1_2");
    rein_testkit::assert_trail_complete(state.path());
}

#[tokio::test]
async fn duplicate_call_ids_from_anthropic_are_renamed_and_the_run_completes() {
    let server = fake::server(vec![
        anthropic_calls(&[
            ("toolu_1", "orders_lookup", json!({"order_id": "A"})),
            ("toolu_1", "orders_lookup", json!({"order_id": "B"})),
        ]),
        anthropic_text("Both looked up."),
    ])
    .await;
    let folder = anthropic_agent(&server.uri());
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let report = engine
        .start(&folder.agent(), "look up A and B", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let events = engine.store().events(&report.run_id).unwrap();
    assert_eq!(intents(&events).len(), 2);
    assert_eq!(folder.effects("lookups.log"), 2);
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[1].body_json().unwrap();
    let results: Vec<&str> = body["messages"][2]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["tool_use_id"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["call_1_1", "call_1_2"]);
}

#[tokio::test]
async fn hostile_replies_become_named_rejections_and_the_run_goes_on() {
    let huge = format!(r#"{{"order_id":"{}"}}"#, "A".repeat(300 * 1024));
    let mut calls: Vec<(String, &str, String)> = vec![
        (
            "../../etc/passwd".into(),
            "orders_lookup",
            r#"{"order_id":"ok"}"#.into(),
        ),
        ("x".into(), "orders_lookup", "{order_id: not json".into()),
        ("y".into(), "rm_rf", "{}".into()),
        ("z".into(), "orders_lookup", huge),
    ];
    for i in 0..300 {
        calls.push((
            format!("many{i}"),
            "orders_lookup",
            format!(r#"{{"order_id":"{i}"}}"#),
        ));
    }
    let wire: Vec<(&str, &str, &str)> = calls
        .iter()
        .map(|(id, name, args)| (id.as_str(), *name, args.as_str()))
        .collect();
    let server = fake::server(vec![openai_calls(&wire), openai_text("Done.", 80, 5)]).await;
    let folder = openai_agent(&server.uri(), "[limits]\nmax_calls_per_step = 6\n");
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let report = engine
        .start(&folder.agent(), "do it", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let events = engine.store().events(&report.run_id).unwrap();
    // Only the well-formed calls within the limit ran: the first, and two of the many.
    assert_eq!(
        intents(&events)
            .iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["call_1_1", "call_1_5", "call_1_6"]
    );
    assert_eq!(folder.effects("lookups.log"), 3);
    let refused = rejections(&events);
    let reason = |id: &str| {
        refused
            .iter()
            .find(|(c, _)| c == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no rejection of {id}: {refused:?}"))
    };
    assert!(reason("call_1_2").contains("not valid JSON"));
    assert!(reason("call_1_3").contains("unknown tool `rm_rf`"));
    assert!(reason("call_1_4").contains("rein accepts at most 262144 bytes"));
    assert!(reason("call_1_7").contains("proposed 304 tool calls"));
    // At most 256 calls are kept; the rest were dropped, and a notice says so.
    assert_eq!(refused.len(), 256 - 3);
    assert!(events.iter().any(|e| matches!(&e.event,
        Event::Notice { kind, detail, .. } if kind == "tool_calls_dropped" && detail.contains("48 more"))));
    // Every id is rein's; none came from the model.
    let replied = events
        .iter()
        .find_map(|e| match &e.event {
            Event::ModelReplied { tool_calls, .. } => Some(tool_calls.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        replied
            .iter()
            .enumerate()
            .all(|(i, c)| c.id == format!("call_1_{}", i + 1))
    );
    // The huge arguments never reached the log.
    let stored: usize = events
        .iter()
        .map(|e| serde_json::to_string(&e.event).unwrap().len())
        .sum();
    assert!(stored < 200 * 1024, "the log holds {stored} bytes");
    // The model was told about each refusal as the call's result.
    let requests = server.received_requests().await.unwrap();
    let body: serde_json::Value = requests[1].body_json().unwrap();
    let told = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .count();
    assert_eq!(told, 256);
}

#[tokio::test]
async fn a_sub_agent_run_is_named_by_rein_never_by_the_model() {
    let server = fake::server(vec![
        openai_calls(&[("../../../../tmp/evil", "research", r#"{"task":"find it"}"#)]),
        openai_text("Found.", 80, 5),
    ])
    .await;
    let root = tempfile::tempdir().unwrap();
    let child = AgentFolder::new(&format!(
        "name = \"researcher\"\ninstructions = \"Research.\"\n{SCRIPTED_MODEL}\n[workspace]\nisolate = true\n"
    ))
    .file("script.toml", "[[turns]]\ntext = \"the answer\"\n");
    let desk = AgentFolder::new(&format!(
        "name = \"desk\"\ninstructions = \"Delegate.\"\n[model]\nprovider = \"openai\"\nname = \"gpt-x\"\nbase_url = \"{}/v1\"\nmax_attempts = 1\n[[tools]]\nname = \"research\"\ndescription = \"Ask the researcher\"\ndelegate = \"{}\"\n",
        server.uri(),
        child.path().display()
    ));
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let report = engine
        .start(&desk.agent(), "delegate", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let child_id = format!("{}-call_1_1", report.run_id);
    let child_run = engine.store().run(&child_id).unwrap();
    assert_eq!(child_run.agent, "researcher");
    let events = engine.store().events(&child_id).unwrap();
    let Event::RunStarted(started) = &events[0].event else {
        panic!()
    };
    assert!(!started.workspace.contains("evil") && started.workspace.ends_with(&child_id));
    assert!(!root.path().join("tmp").exists());
}

#[tokio::test]
async fn a_payment_that_times_out_is_in_doubt_not_failed() {
    let folder = AgentFolder::new(&format!(
        r#"name = "p"
instructions = "Pay."
{SCRIPTED_MODEL}
[[tools]]
name = "transfer"
description = "Moves money, slowly"
command = ["sh", "-c", "echo x >> transfers.log; sleep 20"]
timeout_ms = 200
args_schema = {{ type = "object" }}
"#
    ))
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"transfer\", args = { amount = 5 } }]\n[[turns]]\ntext = \"paid\"\n",
    );
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let agent = folder.agent();
    let report = engine.start(&agent, "pay", &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::NeedsReconciliation);
    assert_eq!(report.call_id.as_deref(), Some("call_1_1"));
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("timed out") && reason.contains("transfer"),
        "{reason}"
    );
    // The effect did happen: exactly why a timeout is not a failure.
    assert_eq!(folder.effects("transfers.log"), 1);
    let events = engine.store().events(&report.run_id).unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::ToolInDoubt { .. }))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, Event::ToolOutcome { .. }))
    );
    let err = engine
        .resume(&report.run_id, &agent, &NoObserver)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::AlreadyEnded { .. }), "{err}");
    rein_testkit::assert_trail_complete(state.path());
}

#[tokio::test]
async fn each_model_reserves_and_is_sent_its_own_reply_cap_and_an_overrun_is_recorded() {
    // The primary (cap 100) fails; the fallback's cap (2,000) does not fit the run's budget, so
    // it is not called at all: the budget it would have passed is named.
    let failing = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(500))
        .mount(&failing)
        .await;
    let big = fake::server(vec![openai_text("never", 10, 1)]).await;
    let folder = AgentFolder::new(&format!(
        r#"name = "f"
instructions = "x"
[budget]
tokens = 1500
[model]
provider = "openai"
name = "small"
base_url = "{}/v1"
max_attempts = 1
max_tokens = 100
fallbacks = ["big"]
[[models]]
id = "big"
provider = "openai"
name = "big"
base_url = "{}/v1"
max_attempts = 1
max_tokens = 2000
"#,
        failing.uri(),
        big.uri()
    ));
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path());
    let report = engine
        .start(&folder.agent(), "go", &NoObserver)
        .await
        .unwrap();
    assert_eq!(
        report.status,
        EndState::BudgetExhausted,
        "{:?}",
        report.reason
    );
    let reason = report.reason.unwrap();
    assert!(reason.contains("would be exceeded"), "{reason}");
    assert!(big.received_requests().await.unwrap().is_empty());
    let sent: serde_json::Value = failing.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(sent["max_completion_tokens"], 100);

    // A provider that answers with more than the cap it was sent: booked as spent, and noted.
    let over = fake::server(vec![openai_text("long", 40, 900)]).await;
    let folder = AgentFolder::new(&format!(
        "name = \"o\"\ninstructions = \"x\"\n[budget]\ntokens = 100000\n[model]\nprovider = \"openai\"\nname = \"o\"\nbase_url = \"{}/v1\"\nmax_attempts = 1\nmax_tokens = 100\n",
        over.uri()
    ));
    let report = engine
        .start(&folder.agent(), "go", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed);
    let events = engine.store().events(&report.run_id).unwrap();
    assert!(events.iter().any(|e| matches!(&e.event,
        Event::Notice { kind, detail, .. } if kind == "budget_overrun" && detail.contains("940 tokens"))));
    let spent = engine.ledger().unwrap().usage("run:").unwrap();
    assert!(spent.iter().any(|r| r.tokens == 940));
}
