//! A gateway turn stopped at every event, as a killed process would leave it, then resumed as a
//! new server resumes what it finds: the run always reaches a named end, a call is handed over
//! only by the driver that took the request (a resumed run has nobody to hand it to), the
//! tenant's budget books at most the one model call, and the audit trail holds a record of every
//! event. And what each of a turn's commits leaves: the run never exists without the ledger's
//! hold of its model call, and the call is booked once. And what a turn hands over: labels of
//! results sent back, and a strict gateway's answer judged whole before any call is handed over.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use rein_core::{EndState, Message, ToolSpec};
use rein_engine::{EngineError, FaultPlan, GatewayTurn, NoObserver};
use rein_testkit::{AgentFolder, SCRIPTED_MODEL, engine_with_faults, kinds, stop_after_event};

const SCRIPT: &str = r#"
[[turns]]
text = "Let me look."
calls = [{ tool = "lookup", args = { q = "A-1" } }]
"#;

fn folder() -> AgentFolder {
    AgentFolder::new(&format!(
        "name = \"gw\"\n[gateway]\n{SCRIPTED_MODEL}[[budgets]]\nscope = \"tenant\"\nperiod = \"day\"\ntokens = 100000\n[[tools]]\nclient = true\nname = \"lookup\"\nargs_schema = {{ type = \"object\", properties = {{ q = {{ type = \"string\" }} }} }}\n"
    ))
    .file("script.toml", SCRIPT)
}

fn turn() -> GatewayTurn {
    GatewayTurn {
        conversation: "c-1".into(),
        user: "ann".into(),
        tenant: "acme".into(),
        token: None,
        task: "find A-1".into(),
        system: "You help.".into(),
        messages: vec![Message::User {
            text: "find A-1".into(),
        }],
        tools: vec![ToolSpec {
            name: "lookup".into(),
            description: "looks up".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"q": {"type": "string"}}}),
        }],
        ..Default::default()
    }
}

const RUN: &str = "0123456789abcdef0123456789abcdef";

/// A second request's run.
const OTHER_RUN: &str = "fedcba9876543210fedcba9876543210";

/// A budgeted gateway request's start commits with the ledger's hold of its model call, and
/// from then on the call is held or booked, never both and never neither: read by another
/// connection right after each commit, no state shows the run without its hold, and the last
/// shows the whole run and the call booked once.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_turn_commits_its_hold_with_its_start_and_books_its_call_once() {
    let folder = folder();
    let agent = folder.agent();
    let dir = tempfile::tempdir().unwrap();
    let engine = rein_testkit::engine(dir.path());
    let reader = Mutex::new(rusqlite::Connection::open(dir.path().join("rein.db")).unwrap());
    // After each commit: (the run's events, holds on the ledger, model calls booked).
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    engine.store().after_batch(Box::new(move || {
        let conn = reader.lock().unwrap();
        let count = |sql: &str| {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .unwrap_or(-1)
        };
        log.lock().unwrap().push((
            count("SELECT count(*) FROM events"),
            count("SELECT count(*) FROM budget_reservations"),
            count("SELECT COALESCE(SUM(calls), 0) FROM budget_spend"),
        ));
        true
    }));
    let reply = engine
        .gateway_turn(&agent, RUN, turn(), &NoObserver)
        .await
        .unwrap();
    assert_eq!(reply.status, EndState::Completed);
    let events = engine.store().events(RUN).unwrap().len() as i64;
    let seen = seen.lock().unwrap().clone();
    // The settlement rides with the end: two commits, the start with its hold, the end with
    // the booking.
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (started, held, booked) = seen[0];
    assert!(started >= 1 && started < events, "{seen:?}");
    assert_eq!((held, booked), (1, 0), "the start commits with the hold");
    assert!(
        seen.iter().all(|(_, held, booked)| held + booked == 1),
        "held or booked, never both or neither: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&(events, 0, 1)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_turn_stopped_after_any_event_resumes_to_a_named_end_with_its_trail_whole() {
    let folder = folder();
    let agent = folder.agent();
    // The turn undisturbed: what every stop is measured against.
    let clean = tempfile::tempdir().unwrap();
    let engine = engine_with_faults(clean.path(), FaultPlan::default());
    let reply = engine
        .gateway_turn(&agent, RUN, turn(), &NoObserver)
        .await
        .unwrap();
    assert_eq!(reply.status, EndState::Completed);
    assert_eq!(reply.calls.len(), 1, "{reply:?}");
    let all = engine.store().events(RUN).unwrap();
    assert!(
        kinds(&all).contains(&"tool_handed_off"),
        "{:?}",
        kinds(&all)
    );
    let booked = engine.ledger().unwrap().usage("").unwrap();
    drop(engine);
    rein_testkit::assert_trail_complete(clean.path());

    let mut unhanded = 0;
    for stop in 1..all.len() as u64 {
        let state = tempfile::tempdir().unwrap();
        let stopped = engine_with_faults(state.path(), stop_after_event(stop))
            .gateway_turn(&agent, RUN, turn(), &NoObserver)
            .await;
        assert!(
            matches!(stopped, Err(EngineError::Interrupted { .. })),
            "stop after event {stop}: {stopped:?}"
        );
        // A new process finds the run and resumes it.
        let engine = engine_with_faults(state.path(), FaultPlan::default());
        let resumed = engine.resume(RUN, &agent, &NoObserver).await;
        let events = engine.store().events(RUN).unwrap();
        let ended = events.iter().rev().find_map(|e| match &e.event {
            rein_core::Event::RunEnded { status, .. } => Some(*status),
            _ => None,
        });
        let ended = ended.unwrap_or_else(|| {
            panic!(
                "stop after event {stop}: the resumed run has no end ({resumed:?}): {:?}",
                kinds(&events)
            )
        });
        assert!(
            matches!(ended, EndState::Completed | EndState::Failed),
            "stop after event {stop}: ended {ended:?}"
        );
        // Only the driver that took the request hands a call over: a hand-off after the stop
        // would go to nobody.
        let handed: Vec<u64> = events
            .iter()
            .filter(|e| matches!(e.event, rein_core::Event::ToolHandedOff { .. }))
            .map(|e| e.seq)
            .collect();
        assert!(
            handed.iter().all(|seq| *seq <= stop),
            "stop after event {stop}: handed over after it at {handed:?}: {:?}",
            kinds(&events)
        );
        // A call whose intent was durable but which was never handed over cannot have been run
        // by anyone: the run ends failed naming it, and no person is asked to check it.
        let intended = events
            .iter()
            .any(|e| e.seq <= stop && matches!(e.event, rein_core::Event::ToolIntent { .. }));
        if intended && handed.is_empty() {
            let named = events.iter().any(|e| {
                matches!(&e.event, rein_core::Event::RunEnded { status: EndState::Failed, reason: Some(r), .. }
                    if r.contains("call_1_1 (lookup) was handed over"))
            });
            assert!(named, "stop after event {stop}: {:?}", events.last());
            unhanded += 1;
        }
        // No line books more than the undisturbed turn did: the model call at most once.
        let usage = engine.ledger().unwrap().usage("").unwrap();
        for row in &usage {
            let clean_row = booked
                .iter()
                .find(|b| b.key == row.key && b.period == row.period);
            assert!(
                row.tokens <= clean_row.map_or(0, |b| b.tokens),
                "stop after event {stop}: {row:?} against {clean_row:?}"
            );
        }
        drop(engine);
        rein_testkit::assert_trail_complete(state.path());
    }
    assert_eq!(
        unhanded, 1,
        "one stop falls between the intent and its hand-off"
    );
}

/// Answers one request, `turn()`, of `folder`'s gateway as run `run`.
async fn request(
    engine: &rein_engine::Engine,
    folder: &AgentFolder,
    run: &str,
) -> rein_engine::GatewayReply {
    engine
        .gateway_turn(&folder.agent(), run, turn(), &NoObserver)
        .await
        .unwrap()
}

/// A gateway agent with its own per-request budget of `tokens` beside the tenant's.
fn folder_with_own_budget(tokens: u64) -> AgentFolder {
    AgentFolder::new(&format!(
        "name = \"gw\"\n[gateway]\n{SCRIPTED_MODEL}[budget]\ntokens = {tokens}\n[[budgets]]\nscope = \"tenant\"\nperiod = \"day\"\ntokens = 100000\n[[tools]]\nclient = true\nname = \"lookup\"\n"
    ))
    .file("script.toml", SCRIPT)
}

/// A gateway request's own budget is kept by its run, from its log: the request is held and
/// booked on the tenant's line alone, no line of its own is left in the ledger (one per request,
/// never read again), and a cap its own budget cannot cover still ends it `budget_exhausted`,
/// naming that budget, before anything is held.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_requests_own_budget_is_kept_by_its_run_and_leaves_no_line_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let engine = rein_testkit::engine(dir.path());
    let roomy = folder_with_own_budget(100_000);
    let reply = request(&engine, &roomy, RUN).await;
    assert_eq!(reply.status, EndState::Completed, "{reply:?}");
    let ledger = engine.ledger().unwrap();
    assert_eq!(
        ledger.usage("run:").unwrap(),
        vec![],
        "no line of the run's own"
    );
    let tenant = ledger.usage("tenant:acme").unwrap();
    assert_eq!(tenant.len(), 1, "{tenant:?}");
    assert_eq!(
        (tenant[0].calls, tenant[0].tokens),
        (1, reply.usage.input_tokens + reply.usage.output_tokens)
    );

    let tight = folder_with_own_budget(5);
    let other = OTHER_RUN;
    let refused = request(&engine, &tight, other).await;
    assert_eq!(refused.status, EndState::BudgetExhausted, "{refused:?}");
    let why = refused.reason.unwrap_or_default();
    assert!(why.contains(&format!("budget run:{other} (run)")), "{why}");
    assert!(refused.calls.is_empty());
    let tenant_after = ledger.usage("tenant:acme").unwrap();
    assert_eq!(
        tenant_after, tenant,
        "nothing held or booked for the refused request"
    );
    assert_eq!(ledger.usage("run:").unwrap(), vec![]);
    let held: i64 = rusqlite::Connection::open(dir.path().join("rein.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM budget_reservations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(held, 0);
}

/// The notice of the overrun a gateway request's reply made, if it made one.
fn overrun(engine: &rein_engine::Engine, run: &str) -> Option<String> {
    engine
        .store()
        .events(run)
        .unwrap()
        .into_iter()
        .find_map(|e| match e.event {
            rein_core::Event::Notice { kind, detail, .. } if kind == "budget_overrun" => {
                Some(detail)
            }
            _ => None,
        })
}

/// A reply longer than the cap sent with it is booked as spent; past a gateway request's own
/// budget (kept by its run, with no line in the ledger), the overrun's notice names that budget.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_reply_past_its_requests_own_budget_is_noted_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = rein_testkit::engine(dir.path());
    // A reply cap of one token, and a reply of about 500 (the scripted model counts four bytes a
    // token): more than the request's tools and cap were held for.
    let script = format!("[[turns]]\ntext = \"{}\"\n", "long ".repeat(400));
    let folder = |tokens: u64| {
        AgentFolder::new(&format!(
            "name = \"gw\"\n[gateway]\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\nmax_tokens = 1\n[budget]\ntokens = {tokens}\n[[tools]]\nclient = true\nname = \"lookup\"\n"
        ))
        .file("script.toml", &script)
    };
    // With room: the overrun is noted, with what was held for the call.
    let roomy = folder(100_000);
    let first = request(&engine, &roomy, RUN).await;
    assert_eq!(first.status, EndState::Completed, "{first:?}");
    let noted = overrun(&engine, RUN).expect("the reply passed its cap");
    assert!(!noted.contains("past the limit"), "{noted}");
    let held: u64 = noted
        .split("more than the ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no amount held in: {noted}"));
    // A budget of exactly what is held: the call fits, its reply passes the budget.
    let tight = folder(held);
    let other = OTHER_RUN;
    let second = request(&engine, &tight, other).await;
    assert_eq!(second.status, EndState::Completed, "{second:?}");
    let noted = overrun(&engine, other).expect("the reply passed its cap");
    assert!(
        noted.contains(&format!("now past the limit of run:{other} run")),
        "{noted}"
    );
    assert_eq!(engine.ledger().unwrap().usage("run:").unwrap(), vec![]);
}

/// What a tool result the client sends back is labelled: a client tool's by its manifest; one
/// the operator does not know `untrusted`; one of the gateway's own tools (which its clients do
/// not run) `untrusted` too, keeping its manifest's labels, so a client cannot shed `pii` by
/// sending such a result back under a call id of its own.
#[test]
fn a_result_sent_back_keeps_its_manifests_labels_and_one_the_client_cannot_have_run_is_untrusted() {
    let folder = AgentFolder::new(&format!(
        "name = \"gw\"\n[gateway]\n{SCRIPTED_MODEL}[[tools]]\nclient = true\nname = \"lookup\"\nlabels = [\"internal\"]\n[[tools]]\nbuiltin = \"fs.read\"\nlabels = [\"pii\"]\n"
    ))
    .file("script.toml", SCRIPT);
    let agent = folder.agent();
    let labels = |tool: &str| rein_engine::Engine::gateway_labels(&agent, tool);
    assert_eq!(labels("lookup"), ["internal"]);
    assert_eq!(labels("fs.read"), ["pii", "untrusted"]);
    assert_eq!(labels("who_knows"), ["untrusted"]);
}

/// A strict gateway (`on_denied = "error"`) whose policies allow `cap` calls of `mail` a run
/// (and its budget `tool_calls` calls, if given), answering one request whose reply holds two:
/// the reply and the run's events.
async fn two_mails_under_a_cap(
    cap: u32,
    tool_calls: Option<u32>,
) -> (rein_engine::GatewayReply, Vec<rein_core::StoredEvent>) {
    let budget = tool_calls.map_or(String::new(), |n| format!("[budget]\ntool_calls = {n}\n"));
    let mail = "[[tools]]\nclient = true\nname = \"mail\"\nargs_schema = { type = \"object\", properties = { to = { type = \"string\" } } }\n";
    let folder = AgentFolder::new(&format!(
        "name = \"gw\"\n[gateway]\non_denied = \"error\"\n{SCRIPTED_MODEL}{budget}{mail}"
    ))
    .file(
        "script.toml",
        "[[turns]]\ntext = \"Mailing both.\"\ncalls = [{ tool = \"mail\", args = { to = \"a@x.test\" } }, { tool = \"mail\", args = { to = \"b@x.test\" } }]\n",
    )
    .policy(&format!(
        "permit(principal, action, resource);\n@id(\"mail-cap\")\nforbid(principal, action == Action::\"mail\", resource) when {{ context.counters.calls >= {cap} }};\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let engine = rein_testkit::engine(dir.path());
    let mut request = turn();
    request.tools = vec![ToolSpec {
        name: "mail".into(),
        description: "mails".into(),
        parameters: serde_json::json!({"type": "object", "properties": {"to": {"type": "string"}}}),
    }];
    let reply = engine
        .gateway_turn(&folder.agent(), RUN, request, &NoObserver)
        .await
        .unwrap();
    (reply, engine.store().events(RUN).unwrap())
}

/// With `on_denied = "error"`, the calls of one answer are judged before any is handed over, as
/// dispatch judges them: each counting those before it, never itself. A cap of one `mail` per
/// run denies the second of two (and only it), so the request is refused with nothing handed
/// over, rather than the first being recorded as handed to a client answered with an error; a
/// cap of two hands both over.
#[tokio::test(flavor = "multi_thread")]
async fn a_strict_gateway_judges_an_answers_calls_counting_those_before_them_and_hands_none_over() {
    let (reply, events) = two_mails_under_a_cap(1, None).await;
    let seen = kinds(&events);
    assert_eq!(reply.status, EndState::Denied, "{seen:?}");
    assert!(reply.calls.is_empty(), "{:?}", reply.calls);
    assert!(
        !seen.contains(&"tool_intent") && !seen.contains(&"tool_handed_off"),
        "a call was recorded as handed over to a client answered with an error: {seen:?}"
    );
    let denied: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            rein_core::Event::ToolJudged {
                call_id, verdict, ..
            } if *verdict == rein_core::Verdict::Deny => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(denied, ["call_1_2"], "{seen:?}");
    let reason = reply.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("mail-cap") && reason.contains("call_1_2") && !reason.contains("call_1_1"),
        "{reason}"
    );

    let (reply, events) = two_mails_under_a_cap(2, None).await;
    assert_eq!(reply.status, EndState::Completed, "{:?}", kinds(&events));
    let handed: Vec<&str> = reply.calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(handed, ["call_1_1", "call_1_2"]);

    // A call past the run's tool-call budget is refused unjudged by dispatch, not denied: it is
    // not judged ahead either, so it does not fail the request.
    let (reply, events) = two_mails_under_a_cap(1, Some(1)).await;
    assert_eq!(reply.status, EndState::Completed, "{:?}", kinds(&events));
    let handed: Vec<&str> = reply.calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(handed, ["call_1_1"]);
    assert_eq!(
        reply
            .withheld
            .iter()
            .map(|w| (w.call_id.as_str(), w.by))
            .collect::<Vec<_>>(),
        [("call_1_2", rein_engine::WithheldBy::Rejected)]
    );
}
