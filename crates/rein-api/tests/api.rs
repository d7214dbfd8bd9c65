//! The engine API as a face uses it: runs started, listed and shown in wire types; a person's
//! note on an approval passes the redactor of the run's agent; cancellation; and the wire
//! format's version.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use rein_api::{Options, Rein, RunQuery, StartRun, v1};
use rein_testkit::{AgentFolder, SCRIPTED_MODEL};

const SECRET: &str = "tok-7d2f9a1c4e";

fn agent() -> AgentFolder {
    AgentFolder::new(&format!(
        r#"name = "api"
instructions = "x"
{SCRIPTED_MODEL}
[[tools]]
name = "pay"
description = "Pay"
command = ["sh", "-c", "echo x >> pay.log; cat"]
env = {{ BANK_TOKEN = "secret:bank" }}
args_schema = {{ type = "object" }}
"#
    ))
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"pay\", args = { amount = 5 } }]\n[[turns]]\ntext = \"paid\"\n",
    )
    .policy("@ask(\"a person pays\")\npermit(principal, action == Action::\"pay\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n")
}

fn rein(state: &std::path::Path) -> Rein {
    let mut options = Options::new(state);
    options.env = Arc::new(|var| (var == "REIN_SECRET_BANK").then(|| SECRET.to_owned()));
    Rein::new(options).unwrap()
}

fn start(folder: &AgentFolder, user: &str, tenant: &str) -> StartRun {
    StartRun {
        agent_dir: folder.path().to_owned(),
        task: Some("pay the bill".into()),
        user: user.into(),
        tenant: tenant.into(),
        fsync: None,
        grants: None,
    }
}

#[tokio::test]
async fn runs_approvals_and_cancellation_through_the_api() {
    let folder = agent();
    let state = tempfile::tempdir().unwrap();
    let api = rein(state.path());
    let report = api
        .start_run(start(&folder, "ann", "acme"), None)
        .await
        .unwrap();
    assert_eq!(report.status, v1::EndState::AwaitingApproval);
    let approval = &report.approvals[0];

    // The note quotes the secret (a person pasted it): it is recorded redacted.
    let decided = api
        .decide(
            approval,
            true,
            "ann",
            Some(format!("token {SECRET} checked")),
        )
        .await
        .unwrap();
    assert_eq!(decided.status, "approved");
    let detail = api.show_run(&report.run_id).unwrap();
    let note = detail
        .events
        .iter()
        .find_map(|e| match &e.event {
            v1::Event::ApprovalDecided { note, .. } => note.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(note, "token [secret:bank] checked");
    let resumed = api.resume_run(&report.run_id, None).await.unwrap();
    assert_eq!(resumed.status, v1::EndState::Completed);
    assert_eq!(folder.effects("pay.log"), 1);

    // Another tenant's run, suspended, then cancelled; lists filter by tenant and say where
    // each run stands.
    let other = api
        .start_run(start(&folder, "bob", "globex"), None)
        .await
        .unwrap();
    let acme = api
        .list_runs(&RunQuery {
            tenant: Some("acme".into()),
            ..RunQuery::default()
        })
        .unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!(
        acme[0].status,
        v1::RunStatus::Ended(v1::EndState::Completed)
    );
    assert_eq!(api.list_approvals(false, Some("acme")).unwrap().len(), 0);
    assert_eq!(api.list_approvals(false, Some("globex")).unwrap().len(), 1);
    let outcome = api.cancel_run(&other.run_id, "ops").await.unwrap();
    let v1::CancelOutcome::Cancelled { report } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(report.status, v1::EndState::Cancelled);
    assert_eq!(report.status.exit_code(), 16);
    let card = api.approval_card(&other.approvals[0]).unwrap();
    assert_eq!(card.approval.status, "cancelled");
    let err = api
        .decide(&other.approvals[0], true, "bob", None)
        .await
        .unwrap_err();
    assert!(matches!(err, rein_api::Error::Conflict(_)), "{err}");

    // The wire's JSON: statuses as names, events tagged by type.
    let json = serde_json::to_value(api.show_run(&other.run_id).unwrap()).unwrap();
    assert_eq!(json["run"]["status"], "cancelled");
    assert_eq!(json["events"][0]["event"]["type"], "run_started");
    assert_eq!(v1::VERSION, "v1");
    let verify = api.audit_verify(None, None).unwrap();
    assert!(verify.ok, "{verify:?}");
}

#[tokio::test]
async fn an_approval_card_shows_what_a_file_write_changes_and_where_its_values_came_from() {
    let folder = AgentFolder::new(&format!(
        "name = \"writer\"\ninstructions = \"x\"\n{SCRIPTED_MODEL}\n[[tools]]\nbuiltin = \"fs.write\"\n"
    ))
    .file("workspace/notes.txt", "keep\nold line\n")
    .file(
        "script.toml",
        "[[turns]]\ncalls = [{ tool = \"fs.write\", args = { path = \"notes.txt\", content = \"keep\\nnew line from the task\\n\" } }]\n[[turns]]\ntext = \"written\"\n",
    )
    .policy("@ask(\"writes are reviewed\")\npermit(principal, action == Action::\"fs.write\", resource);\npermit(principal, action == Action::\"use_model\", resource);\n");
    let state = tempfile::tempdir().unwrap();
    let api = rein(state.path());
    let mut request = start(&folder, "ann", "acme");
    request.task = Some("In notes.txt, replace the old line with: new line from the task".into());
    let report = api.start_run(request, None).await.unwrap();
    assert_eq!(report.status, v1::EndState::AwaitingApproval);
    let listed = api.list_approvals(false, None).unwrap();
    assert_eq!(
        listed[0].arguments["path"], "notes.txt",
        "the inbox shows the arguments"
    );
    let card = api.approval_card(&listed[0].id).unwrap();
    let diff = card.diff.unwrap();
    assert!(
        diff.contains("--- a/notes.txt") && diff.contains("+++ b/notes.txt"),
        "{diff}"
    );
    assert!(
        diff.contains("-old line") && diff.contains("+new line from the task"),
        "{diff}"
    );
    assert_eq!(card.provenance["path"], vec!["task"]);
    assert!(
        card.provenance_text
            .iter()
            .any(|l| l == "path: from the user's task"),
        "{:?}",
        card.provenance_text
    );
}
