//! Canary tests: secrets a tool and a provider use never reach the model's context, an event,
//! a log line or a trace, even when the tool prints them and the provider echoes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::REIN;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOOL_CANARY: &str = "canary-tool-5e1f0c9b2d";
const KEY_CANARY: &str = "canary-key-8a7b6c5d4e";

fn agent(dir: &Path, base_url: &str) {
    std::fs::create_dir_all(dir.join("workspace")).unwrap();
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    std::fs::write(
        dir.join("policies/all.cedar"),
        "permit(principal, action, resource);\n",
    )
    .unwrap();
    // The tool leaks its token every way it can: in its answer, on stderr, and in a failure.
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            r#"
name = "leaky"
instructions = "Look customers up."
[model]
provider = "openai"
name = "gpt-test"
base_url = "{base_url}"
api_key = "secret:llm_key"
max_attempts = 1
[[tools]]
name = "crm.lookup"
description = "Look a customer up in the CRM"
command = ["sh", "-c", "echo \"token $CRM_TOKEN\" >&2; if [ -e failed-once ]; then printf '{{\"customer\":\"jane\",\"debug\":\"auth=%s\"}}' \"$CRM_TOKEN\"; else touch failed-once; echo \"{{\\\"error\\\":\\\"401 for token $CRM_TOKEN\\\"}}\"; exit 1; fi"]
env = {{ CRM_TOKEN = "secret:crm_token" }}
args_schema = {{ type = "object" }}
"#
        ),
    )
    .unwrap();
}

fn tool_call(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "choices": [{"message": {"content": "Looking.", "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "crm_lookup", "arguments": "{}"}}
        ]}, "finish_reason": "tool_calls"}]
    }))
}

async fn rein(state: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(REIN);
    cmd.arg("--state-dir")
        .arg(state)
        .args(args)
        .env("REIN_SECRET_LLM_KEY", KEY_CANARY)
        .env("REIN_LOG", "trace");
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Every byte under `dir`, as text.
fn all_files(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push_str(&all_files(&path));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn assert_no_canary(what: &str, text: &str) {
    for canary in [TOOL_CANARY, KEY_CANARY] {
        assert!(
            !text.contains(canary),
            "{what} contains the secret {canary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_stay_out_of_context_events_logs_and_traces() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(tool_call("c1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(tool_call("c2"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"choices": [{"message": {"content": "Jane is a customer."}, "finish_reason": "stop"}]})))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    agent(dir.path(), &format!("{}/v1", server.uri()));
    let state = tempfile::tempdir().unwrap();
    let secrets = state.path().join("secrets.toml");
    std::fs::write(&secrets, format!("crm_token = \"{TOOL_CANARY}\"\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();

    let out = rein(
        state.path(),
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--task",
            "Who is jane?",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[secret:crm_token]"),
        "the leak was caught and named:\n{stdout}"
    );
    assert_no_canary("stdout", &stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("execute_tool") && stderr.contains("gen_ai.tool.name"),
        "traces were printed:\n{stderr}"
    );
    assert_no_canary("stderr (logs and traces)", &stderr);

    // The provider got its key, and only in the header; the conversation it saw is clean.
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 3);
    for request in &requests {
        assert_eq!(
            request
                .headers
                .get("authorization")
                .unwrap()
                .to_str()
                .unwrap(),
            format!("Bearer {KEY_CANARY}")
        );
        assert_no_canary(
            "the model's context",
            &String::from_utf8_lossy(&request.body),
        );
    }
    assert!(String::from_utf8_lossy(&requests[2].body).contains("auth=[secret:crm_token]"));

    let show = rein(state.path(), &["runs", "show", "0"]).await;
    assert_no_canary("runs show", &String::from_utf8_lossy(&show.stdout));
    let _ = rein(state.path(), &["runs", "list"]).await; // lets the store fold its write-ahead log
    let stored = all_files(state.path()).replace(&format!("crm_token = \"{TOOL_CANARY}\""), "");
    assert_no_canary("the state directory (events)", &stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_echoing_its_key_in_an_error_is_redacted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(
                json!({"error": {"message": format!("invalid api key {KEY_CANARY}")}}),
            ),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    agent(dir.path(), &format!("{}/v1", server.uri()));
    let state = tempfile::tempdir().unwrap();
    let secrets = state.path().join("secrets.toml");
    std::fs::write(&secrets, format!("crm_token = \"{TOOL_CANARY}\"\n")).unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = rein(
        state.path(),
        &["run", dir.path().to_str().unwrap(), "--task", "x", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(10));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("invalid api key [secret:llm_key]"),
        "{stdout}"
    );
    assert_no_canary("stdout", &stdout);
    assert_no_canary("stderr", &String::from_utf8_lossy(&out.stderr));
    let stored = all_files(state.path()).replace(&format!("crm_token = \"{TOOL_CANARY}\""), "");
    assert_no_canary("the state directory", &stored);

    // A secrets file others can read is refused.
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = rein(
        state.path(),
        &["run", dir.path().to_str().unwrap(), "--task", "x"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("others can read it (mode 644)"));
}
