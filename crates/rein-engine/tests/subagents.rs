//! Sub-agents: a delegated task runs as its own run in the parent's tree, with its own context,
//! and never with more authority than the parent grants it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rein_core::{EndState, Event, Verdict};
use rein_engine::{Agent, Engine, EngineError, FaultPlan, NoObserver};
use rein_store::RunFilter;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// `desk` delegates research to `researcher`; the researcher's own policies allow it everything,
/// but the desk's policies grant sub-agents only `kb.search` and models.
fn agents(root: &Path) {
    write(&root.join("desk/workspace/.keep"), "");
    write(
        &root.join("desk/agent.toml"),
        r#"
name = "desk"
instructions = "Answer customers."
[model]
provider = "scripted"
name = "desk-script"
script = "script.toml"
[[tools]]
name = "research"
description = "Ask the researcher"
delegate = "../researcher"
[[tools]]
name = "rogue"
description = "Ask the rogue agent"
delegate = "../rogue"
"#,
    );
    write(
        &root.join("desk/script.toml"),
        r#"
[[turns]]
calls = [{ tool = "research", args = { task = "find the refund policy" } }, { tool = "rogue", args = { task = "anything" } }]
[[turns]]
text = "The policy says refunds are fine."
"#,
    );
    write(
        &root.join("desk/policies/desk.cedar"),
        r#"
permit(principal == Agent::"desk", action in Action::"call_tool", resource);
permit(principal == Agent::"desk", action == Action::"use_model", resource);
permit(principal, action == Action::"delegate", resource == Agent::"researcher");
@id("children-may-search")
permit(principal in Agent::"desk", action == Action::"kb.search", resource);
@id("children-may-think")
permit(principal in Agent::"desk", action == Action::"use_model", resource);
"#,
    );
    for (name, tools) in [("researcher", "kb.search"), ("rogue", "kb.search")] {
        write(&root.join(format!("{name}/workspace/.keep")), "");
        write(
            &root.join(format!("{name}/agent.toml")),
            &format!(
                r#"
name = "{name}"
instructions = "Research."
[model]
provider = "scripted"
name = "{name}-script"
script = "script.toml"
[[tools]]
name = "{tools}"
description = "Search the knowledge base"
command = ["sh", "-c", "echo searched >> searches.log; echo '{{\"hit\":\"refunds within 30 days\"}}'"]
idempotent = true
args_schema = {{ type = "object" }}
[[tools]]
name = "secrets.dump"
description = "Dump secrets"
command = ["sh", "-c", "echo dumped >> dumps.log; echo '{{}}'"]
args_schema = {{ type = "object" }}
"#
            ),
        );
        write(
            &root.join(format!("{name}/policies/all.cedar")),
            "permit(principal, action, resource);\n",
        );
        write(
            &root.join(format!("{name}/script.toml")),
            r#"
[[turns]]
calls = [{ tool = "kb.search", args = { q = "refund" } }, { tool = "secrets.dump" }]
[[turns]]
text = "Refunds within 30 days."
"#,
        );
    }
}

fn engine(state: &Path, faults: FaultPlan) -> Engine {
    rein_testkit::engine_with_faults(state, faults)
}

fn all_runs() -> RunFilter {
    RunFilter {
        limit: 10,
        ..RunFilter::default()
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_sub_agent_runs_in_the_parents_tree_with_at_most_its_authority() {
    let root = tempfile::tempdir().unwrap();
    agents(root.path());
    let agent = Agent::from_spec(
        &rein_config::load(&root.path().join("desk")).unwrap(),
        &|_| None,
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path(), FaultPlan::default());
    let report = engine
        .start(&agent, "What is the refund policy?", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);

    let child_id = format!("{}-call_1_1", report.run_id);
    let child = engine.store().events(&child_id).unwrap();
    let Event::RunStarted(started) = &child[0].event else {
        panic!()
    };
    assert_eq!(started.agent, "researcher");
    assert_eq!(
        started.task, "find the refund policy",
        "the child has its own context"
    );
    let parent = started.parent.as_ref().unwrap();
    assert_eq!(
        (parent.run_id.as_str(), parent.call_id.as_str()),
        (report.run_id.as_str(), "call_1_1")
    );

    // The researcher's own policies allow everything; the desk's grant does not include
    // secrets.dump, so it is denied, and kb.search is allowed by both.
    let verdict = |tool: &str| {
        child.iter().find_map(|e| match &e.event {
            Event::ToolJudged {
                tool: t,
                verdict,
                policies,
                ..
            } if t == tool => Some((*verdict, policies.clone())),
            _ => None,
        })
    };
    assert_eq!(verdict("secrets.dump").map(|v| v.0), Some(Verdict::Deny));
    let (v, policies) = verdict("kb.search").unwrap();
    assert_eq!(v, Verdict::Allow);
    assert!(
        policies.contains(&"parent:children-may-search".to_string()),
        "{policies:?}"
    );
    let child_ws = Path::new(&started.workspace);
    assert_eq!(
        (
            lines(&child_ws.join("searches.log")),
            lines(&child_ws.join("dumps.log"))
        ),
        (1, 0)
    );

    // The parent saw the child's answer as the delegation's result; the rogue delegation was denied.
    let events = engine.store().events(&report.run_id).unwrap();
    let outcome = events.iter().find_map(|e| match &e.event {
        Event::ToolOutcome {
            call_id,
            ok: true,
            output,
            ..
        } if call_id == "call_1_1" => Some(output.clone()),
        _ => None,
    });
    assert_eq!(outcome.unwrap()["output"], "Refunds within 30 days.");
    assert!(events.iter().any(|e| matches!(&e.event, Event::ToolJudged { tool, verdict: Verdict::Deny, .. } if tool == "rogue")));
    assert!(
        engine
            .store()
            .run(&format!("{}-call_1_2", report.run_id))
            .is_err(),
        "the rogue never ran"
    );
}

#[tokio::test]
async fn a_crash_inside_the_sub_agent_resumes_the_same_child_run() {
    let root = tempfile::tempdir().unwrap();
    agents(root.path());
    let agent = Agent::from_spec(
        &rein_config::load(&root.path().join("desk")).unwrap(),
        &|_| None,
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    // Event 8 of the parent is... never reached: the child's log hits 8 first (its kb.search
    // outcome), so the whole process stops inside the child.
    let faults = rein_testkit::stop_after_event(8);
    let err = engine(state.path(), faults)
        .start(&agent, "What is the refund policy?", &NoObserver)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Interrupted { .. }), "{err}");
    let engine = engine(state.path(), FaultPlan::default());
    let runs = engine.store().list_runs(&all_runs()).unwrap();
    let parent = runs.iter().find(|r| r.agent == "desk").unwrap().id.clone();
    let report = engine.resume(&parent, &agent, &NoObserver).await.unwrap();
    assert_eq!(report.status, EndState::Completed);
    // One child run, resumed rather than started again; its idempotent search ran once or twice,
    // never as a second run.
    assert_eq!(
        engine
            .store()
            .list_runs(&all_runs())
            .unwrap()
            .iter()
            .filter(|r| r.agent == "researcher")
            .count(),
        1
    );
    let child = engine
        .store()
        .events(&format!("{parent}-call_1_1"))
        .unwrap();
    assert!(
        child
            .iter()
            .any(|e| matches!(e.event, Event::RunResumed { .. }))
    );
    assert!(matches!(
        child.last().unwrap().event,
        Event::RunEnded {
            status: EndState::Completed,
            ..
        }
    ));
}

#[tokio::test]
async fn a_sub_agent_spends_from_its_parents_run_budget() {
    let root = tempfile::tempdir().unwrap();
    agents(root.path());
    let desk = root.path().join("desk/agent.toml");
    let toml = std::fs::read_to_string(&desk).unwrap();
    std::fs::write(
        &desk,
        toml.replace("[model]", "[budget]\ntokens = 1000000\n\n[model]"),
    )
    .unwrap();
    let agent = Agent::from_spec(
        &rein_config::load(&root.path().join("desk")).unwrap(),
        &|_| None,
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let engine = engine(state.path(), FaultPlan::default());
    let report = engine
        .start(&agent, "What is the refund policy?", &NoObserver)
        .await
        .unwrap();
    assert_eq!(report.status, EndState::Completed, "{:?}", report.reason);
    let child = engine
        .store()
        .events(&format!("{}-call_1_1", report.run_id))
        .unwrap();
    let tokens = |events: &[rein_core::StoredEvent]| -> u64 {
        events
            .iter()
            .map(|e| match &e.event {
                Event::ModelReplied { usage, .. } => usage.input_tokens + usage.output_tokens,
                _ => 0,
            })
            .sum()
    };
    let parent = engine.store().events(&report.run_id).unwrap();
    let rows = engine.ledger().unwrap().usage("run:").unwrap();
    // One line for the whole tree, holding the parent's and the child's spending.
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].key, format!("run:{}", report.run_id));
    assert_eq!(rows[0].tokens, tokens(&parent) + tokens(&child));
    assert!(tokens(&child) > 0);
}
