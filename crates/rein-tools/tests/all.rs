//! Tests of the tools: workspace confinement, the http allowlist against a local server, command
//! tools as real child processes (including ones that hang, print garbage or print too much), and
//! the registry's checks on proposed calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rein_tools::{
    CommandSpec, CommandTool, FsRead, FsWrite, HttpGet, NoSecrets, Noop, Rejection, SecretSource,
    Tool, ToolContext, ToolError, ToolManifest, ToolRegistry,
};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ctx(workspace: &Path) -> ToolContext {
    ToolContext {
        workspace: workspace.to_owned(),
        run_id: "run-1".into(),
        call_id: "call-7".into(),
        secrets: Arc::new(NoSecrets),
        notices: Default::default(),
        memory: None,
    }
}

/// Secrets from a fixed list.
struct Fixed;

impl SecretSource for Fixed {
    fn secret(&self, name: &str) -> Result<String, String> {
        match name {
            "api" => Ok("canary-7f3a9d".into()),
            other => Err(format!("secret `{other}` is not set")),
        }
    }
}

#[tokio::test]
async fn command_tools_get_secrets_in_their_environment_at_run_time() {
    let ws = tempfile::tempdir().unwrap();
    let mut ctx = ctx(ws.path());
    ctx.secrets = Arc::new(Fixed);
    let spec = CommandSpec {
        program: "sh".into(),
        args: vec!["-c".into(), r#"printf '{"token":"%s"}' "$TOKEN""#.into()],
        env: BTreeMap::from([("TOKEN".into(), "secret:api".into())]),
        max_output_bytes: 4096,
        sandbox: Some(Default::default()),
    };
    let manifest = sh("secretive", "true", 5_000, 4096).manifest().clone();
    let tool = CommandTool::new(manifest.clone(), spec.clone());
    assert_eq!(
        tool.call(&ctx, json!({})).await.unwrap(),
        json!({"token": "canary-7f3a9d"})
    );
    let missing = CommandTool::new(
        manifest,
        CommandSpec {
            env: BTreeMap::from([("TOKEN".into(), "secret:nope".into())]),
            ..spec
        },
    );
    let err = missing.call(&ctx, json!({})).await.unwrap_err();
    assert_eq!(err, ToolError::Failed("secret `nope` is not set".into()));
}

#[tokio::test]
async fn fs_tools_read_and_write_inside_the_workspace() {
    let ws = tempfile::tempdir().unwrap();
    let ctx = ctx(ws.path());
    let out = FsWrite::default()
        .call(&ctx, json!({"path": "notes/a/b.txt", "content": "hello"}))
        .await
        .unwrap();
    assert_eq!(out["bytes_written"], 5);
    FsWrite::default()
        .call(
            &ctx,
            json!({"path": "./notes/a/b.txt", "content": " world", "append": true}),
        )
        .await
        .unwrap();
    let read = FsRead::default()
        .call(&ctx, json!({"path": "notes/a/b.txt"}))
        .await
        .unwrap();
    assert_eq!(read["content"], "hello world");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/a/b.txt")).unwrap(),
        "hello world"
    );
}

#[tokio::test]
async fn fs_tools_cannot_leave_the_workspace() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "top secret").unwrap();
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("door")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        ws.path().join("alias.txt"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("nothing-here"),
        ws.path().join("dangling"),
    )
    .unwrap();
    let ctx = ctx(ws.path());
    let secret = outside.path().join("secret.txt").display().to_string();
    for (path, why) in [
        ("../secret.txt", "contains `..`"),
        ("notes/../../secret.txt", "contains `..`"),
        (secret.as_str(), "is absolute"),
        ("door/secret.txt", "outside the workspace"),
        ("alias.txt", "outside the workspace"),
        ("dangling", "points nowhere"),
        ("", "is empty"),
        (".", "names the workspace itself"),
    ] {
        let err = FsRead::default()
            .call(&ctx, json!({"path": path}))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ToolError::Refused(m) if m.contains(why)),
            "read {path:?}: {err}"
        );
    }
    for path in [
        "door/new.txt",
        "door/deeper/new.txt",
        "alias.txt",
        "../x.txt",
        "dangling",
    ] {
        let err = FsWrite::default()
            .call(&ctx, json!({"path": path, "content": "pwned"}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ToolError::Refused(_)),
            "write {path:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(outside.path().join("secret.txt")).unwrap(),
        "top secret"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        1,
        "nothing was created outside"
    );
}

#[tokio::test]
async fn http_get_fetches_allowed_hosts_only_and_checks_every_redirect() {
    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/status"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/plain")
                .set_body_string("all good"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/big"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(5000)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/hop"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "/status"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/away"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://evil.invalid/steal"),
        )
        .mount(&server)
        .await;
    let tool = HttpGet::new(
        vec!["127.0.0.1".into(), "*.example.com".into()],
        1000,
        Duration::from_secs(5),
    )
    .unwrap();
    let ws = tempfile::tempdir().unwrap();
    let ctx = ctx(ws.path());

    let ok = tool
        .call(&ctx, json!({"url": format!("{base}/status")}))
        .await
        .unwrap();
    assert_eq!(
        (
            ok["status"].as_u64(),
            ok["body"].as_str(),
            ok["truncated"].as_bool()
        ),
        (Some(200), Some("all good"), Some(false))
    );
    let hopped = tool
        .call(&ctx, json!({"url": format!("{base}/hop")}))
        .await
        .unwrap();
    assert_eq!(hopped["body"], "all good");
    let big = tool
        .call(&ctx, json!({"url": format!("{base}/big")}))
        .await
        .unwrap();
    assert_eq!(
        (
            big["body"].as_str().unwrap().len(),
            big["truncated"].as_bool()
        ),
        (1000, Some(true))
    );

    let err = tool
        .call(&ctx, json!({"url": format!("{base}/away")}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ToolError::Refused(m) if m.contains("evil.invalid")),
        "{err}"
    );
    for url in [
        "http://localhost/status",
        "http://example.com/",
        "file:///etc/passwd",
        "http://notexample.com/",
    ] {
        let err = tool.call(&ctx, json!({"url": url})).await.unwrap_err();
        assert!(matches!(err, ToolError::Refused(_)), "{url}: {err}");
    }
    // The refused ones never reached the server: only the allowed requests did.
    let seen: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert_eq!(seen, vec!["/status", "/hop", "/status", "/big", "/away"]);

    let port_only = HttpGet::new(vec!["127.0.0.1:1".into()], 1000, Duration::from_secs(5)).unwrap();
    let err = port_only
        .call(&ctx, json!({"url": format!("{base}/status")}))
        .await
        .unwrap_err();
    assert!(matches!(err, ToolError::Refused(_)), "{err}");
}

fn sh(name: &str, script: &str, timeout_ms: u64, cap: usize) -> CommandTool {
    CommandTool::new(
        ToolManifest {
            name: name.into(),
            description: "test".into(),
            parameters: json!({"type": "object"}),
            idempotent: false,
            timeout: Duration::from_millis(timeout_ms),
        },
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            max_output_bytes: cap,
            sandbox: Some(Default::default()),
        },
    )
}

#[tokio::test]
async fn command_tools_get_json_on_stdin_and_answer_json() {
    let ws = tempfile::tempdir().unwrap();
    let echo = sh("echo", "cat", 5_000, 4096);
    let out = echo
        .call(&ctx(ws.path()), json!({"order": "A-1", "n": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(out, json!({"order": "A-1", "n": [1, 2]}));

    let env = sh(
        "env",
        r#"printf '{"call":"%s","run":"%s","greeting":"%s","cwd":"%s","manifest":"%s"}' "$REIN_CALL_ID" "$REIN_RUN_ID" "$GREETING" "$(pwd -P)" "${CARGO_MANIFEST_DIR:-unset}""#,
        5_000,
        4096,
    );
    let out = env.call(&ctx(ws.path()), json!({})).await.unwrap();
    assert_eq!(out["call"], "call-7");
    assert_eq!(out["run"], "run-1");
    assert_eq!(out["greeting"], "hi");
    assert_eq!(
        out["cwd"],
        ws.path().canonicalize().unwrap().display().to_string()
    );
    assert_eq!(
        out["manifest"], "unset",
        "rein's own environment does not leak into tools"
    );
}

#[tokio::test]
async fn misbehaving_command_tools_fail_cleanly() {
    let ws = tempfile::tempdir().unwrap();
    let ctx = ctx(ws.path());
    type Expectation = fn(&ToolError) -> bool;
    let cases: Vec<(CommandTool, Expectation)> = vec![
        (
            sh("hang", "sleep 30", 300, 4096),
            |e| matches!(e, ToolError::Timeout(d) if d.as_millis() == 300),
        ),
        (sh("hang-child", "sleep 30 & wait", 300, 4096), |e| {
            matches!(e, ToolError::Timeout(_))
        }),
        (
            sh("garbage", "echo 'this is not json'", 5_000, 4096),
            |e| matches!(e, ToolError::BadOutput(m) if m.contains("not one JSON value")),
        ),
        (
            sh("silent", "true", 5_000, 4096),
            |e| matches!(e, ToolError::BadOutput(m) if m.contains("printed nothing")),
        ),
        (sh("flood", "yes aaaaaaaa", 5_000, 1000), |e| {
            matches!(e, ToolError::OutputTooLarge(1000))
        }),
        (
            sh("crash", "echo 'disk on fire' >&2; exit 3", 5_000, 4096),
            |e| matches!(e, ToolError::Failed(m) if m.contains("exited with status 3: disk on fire")),
        ),
        (
            sh(
                "refusal",
                r#"echo '{"error":"order not found"}'; exit 1"#,
                5_000,
                4096,
            ),
            |e| matches!(e, ToolError::Failed(m) if m.ends_with("order not found")),
        ),
        (
            sh("killed", "kill -9 $$", 5_000, 4096),
            // Killed mid-way: its effect may have happened, so it is not a plain failure.
            |e| {
                matches!(e, ToolError::Interrupted(m) if m.contains("signal 9"))
                    && e.outcome_unknown()
            },
        ),
    ];
    for (tool, expected) in cases {
        let err = tool.call(&ctx, json!({})).await.unwrap_err();
        assert!(
            expected(&err),
            "{}: unexpected {err:?}",
            tool.manifest().name
        );
    }
    let missing = CommandTool::new(
        sh("x", "", 1000, 10).manifest().clone(),
        CommandSpec {
            program: "/nonexistent/tool".into(),
            args: vec![],
            env: BTreeMap::new(),
            max_output_bytes: 10,
            sandbox: Some(Default::default()),
        },
    );
    let err = missing.call(&ctx, json!({})).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::Failed(m) if m.contains("cannot start `/nonexistent/tool`")),
        "{err}"
    );
}

#[test]
fn the_registry_checks_names_and_arguments_before_anything_runs() {
    let mut registry = ToolRegistry::new();
    registry.register(Arc::new(FsRead::default())).unwrap();
    registry.register(Arc::new(Noop::default())).unwrap();
    assert_eq!(registry.names(), vec!["fs.read", "noop"]);
    assert_eq!(registry.specs()[0].name, "fs.read");

    assert!(
        registry
            .check("fs.read", &json!({"path": "a"}), None)
            .is_ok()
    );
    let err = registry.check("fs.delete", &json!({}), None).unwrap_err();
    assert_eq!(
        err,
        Rejection::UnknownTool {
            name: "fs.delete".into(),
            known: "fs.read, noop".into()
        }
    );
    let err = registry
        .check("fs.read", &json!({"path": 7, "extra": true}), None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/path: 7 is not of type \"string\""), "{msg}");
    assert!(msg.contains("extra"), "{msg}");
    let err = registry
        .check(
            "fs.read",
            &Value::String("{bad".into()),
            Some("arguments are not valid JSON"),
        )
        .unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");

    assert!(
        registry
            .register(Arc::new(Noop::default()))
            .unwrap_err()
            .to_string()
            .contains("declared twice")
    );
    let mut bad = sh("bad-schema", "true", 10, 10).manifest().clone();
    bad.parameters = json!({"type": "object", "properties": {"x": {"type": "no-such-type"}}});
    let tool = CommandTool::new(
        bad,
        CommandSpec {
            program: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
            max_output_bytes: 1,
            sandbox: Some(Default::default()),
        },
    );
    let err = registry.register(Arc::new(tool)).unwrap_err();
    assert!(
        err.to_string()
            .contains("`bad-schema`: its argument schema is not valid JSON Schema"),
        "{err}"
    );
    let mut not_object = sh("scalar", "true", 10, 10).manifest().clone();
    not_object.parameters = json!({"type": "string"});
    let tool = CommandTool::new(
        not_object,
        CommandSpec {
            program: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
            max_output_bytes: 1,
            sandbox: Some(Default::default()),
        },
    );
    assert!(
        registry
            .register(Arc::new(tool))
            .unwrap_err()
            .to_string()
            .contains("must describe an object")
    );
}
