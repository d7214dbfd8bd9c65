//! agent.toml tests: a good folder resolves with defaults filled in; every kind of bad input is
//! reported with the file, line and field; the published JSON Schema is current.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use rein_config::{ConfigError, ProviderSpec, ToolConfig, agent_schema, load};

const GOOD: &str = r#"
name = "helper"
instructions = "Help."

[model]
provider = "scripted"
name = "script"
script = "script.toml"

[[tools]]
builtin = "fs.read"

[[tools]]
builtin = "http.get"
allow_hosts = ["api.example.com"]

[[tools]]
name = "orders.lookup"
description = "Look up an order"
command = ["python3", "tools/lookup.py"]
idempotent = true
timeout_ms = 2000
args_schema = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
"#;

fn folder(agent_toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("workspace")).unwrap();
    std::fs::create_dir_all(dir.path().join("tools")).unwrap();
    std::fs::write(dir.path().join("tools/lookup.py"), "print('{}')").unwrap();
    std::fs::write(dir.path().join("script.toml"), "[[turns]]\ntext = \"hi\"\n").unwrap();
    std::fs::write(dir.path().join("agent.toml"), agent_toml).unwrap();
    dir
}

fn load_err(agent_toml: &str) -> ConfigError {
    let dir = folder(agent_toml);
    load(dir.path()).unwrap_err()
}

#[test]
fn a_good_folder_resolves_with_defaults() {
    let dir = folder(GOOD);
    let spec = load(dir.path()).unwrap();
    assert_eq!(spec.name, "helper");
    assert_eq!(spec.instructions, "Help.");
    assert_eq!(spec.limits.max_steps, 20);
    assert_eq!(spec.model.max_attempts, 3);
    assert!(
        matches!(&spec.model.provider, ProviderSpec::Scripted { script } if script.ends_with("script.toml"))
    );
    assert_eq!(
        spec.tools.iter().map(|t| t.name()).collect::<Vec<_>>(),
        vec!["fs.read", "http.get", "orders.lookup"]
    );
    // http.get's output is untrusted and it can carry data out, unless the operator says otherwise.
    assert_eq!(
        (
            spec.tools[1].labels.clone(),
            spec.tools[1].sink,
            spec.tools[1].risk.as_str()
        ),
        (vec!["untrusted".to_string()], true, "medium")
    );
    assert!(spec.tools[0].labels.is_empty() && !spec.tools[0].sink);
    match &spec.tools[2].tool {
        ToolConfig::Command {
            program,
            args,
            idempotent,
            timeout,
            ..
        } => {
            assert_eq!(program, Path::new("python3"));
            // The script is passed by absolute path, since the tool runs in the workspace.
            assert_eq!(
                args,
                &vec![
                    dir.path()
                        .canonicalize()
                        .unwrap()
                        .join("tools/lookup.py")
                        .display()
                        .to_string()
                ]
            );
            assert!(*idempotent);
            assert_eq!(timeout.as_millis(), 2000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        spec.workspace.path,
        dir.path().canonicalize().unwrap().join("workspace")
    );
    assert_eq!(spec.digest.len(), 64);
    // The digest follows the files the agent refers to.
    std::fs::write(
        dir.path().join("script.toml"),
        "[[turns]]\ntext = \"changed\"\n",
    )
    .unwrap();
    assert_ne!(load(dir.path()).unwrap().digest, spec.digest);
}

#[test]
fn the_example_agent_loads() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-desk");
    let spec = load(&example).unwrap();
    assert_eq!(spec.name, "support-desk");
    assert!(spec.workspace.isolate);
    assert!(spec.default_task.is_some());
}

#[test]
fn bad_input_names_the_file_line_and_field() {
    let cases: Vec<(String, &str, Option<usize>, &str)> = vec![
        // (agent.toml, field, line, message fragment)
        (
            GOOD.replace("idempotent = true", "idempotent = true\nretries = 3"),
            "",
            Some(22),
            "unknown field `retries`",
        ),
        (
            GOOD.replace("timeout_ms = 2000", "timeout_ms = \"soon\""),
            "",
            Some(22),
            "invalid type: string \"soon\"",
        ),
        (
            GOOD.replace("name = \"helper\"", "nam = \"helper\""),
            "",
            Some(2),
            "unknown field `nam`",
        ),
        (
            GOOD.replace("script = \"script.toml\"", "script = \"missing.toml\""),
            "model.script",
            Some(8),
            "cannot read `missing.toml`",
        ),
        (
            GOOD.replace("\"python3\", ", "\"./tools/nope.sh\", "),
            "tools[2].command",
            None,
            "does not exist",
        ),
        (
            GOOD.replace("builtin = \"fs.read\"", "builtin = \"fs.delete\""),
            "tools[0].builtin",
            Some(10),
            "unknown built-in `fs.delete`",
        ),
        (
            GOOD.replace("allow_hosts = [\"api.example.com\"]", ""),
            "tools[1].allow_hosts",
            None,
            "needs a list of allowed hosts",
        ),
        (
            GOOD.replace(
                "builtin = \"fs.read\"",
                "builtin = \"fs.read\"\nallow_hosts = [\"x\"]",
            ),
            "tools[0].allow_hosts",
            None,
            "does not apply",
        ),
        (
            GOOD.replace("name = \"orders.lookup\"", "name = \"fs.read\""),
            "tools[2].name",
            None,
            "is a built-in's name",
        ),
        (
            GOOD.replace("name = \"orders.lookup\"", "name = \"orders lookup!\""),
            "tools[2].name",
            None,
            "not a valid name",
        ),
        (
            GOOD.replace("args_schema = {", "args_schemaX = {"),
            "",
            Some(23),
            "unknown field `args_schemaX`",
        ),
        (
            GOOD.replace(
                "type = \"object\", properties",
                "type = \"string\", properties",
            ),
            "tools[2].args_schema",
            None,
            "object schema",
        ),
        (
            GOOD.replace("instructions = \"Help.\"", ""),
            "instructions",
            None,
            "missing",
        ),
        (
            GOOD.replace("provider = \"scripted\"", "provider = \"openai\""),
            "model.script",
            None,
            "does not apply to provider `openai`",
        ),
        (
            GOOD.replace(
                "script = \"script.toml\"",
                "script = \"script.toml\"\napi_key_env = \"sk-live-123\"",
            ),
            "model.api_key_env",
            Some(9),
            "never hold the key itself",
        ),
        (
            GOOD.replace("provider = \"scripted\"", "provider = \"gemini\""),
            "",
            Some(6),
            "unknown variant `gemini`",
        ),
        (
            format!("{GOOD}\n[[tools]]\nbuiltin = \"fs.read\"\n"),
            "tools[3]",
            Some(25),
            "declared twice",
        ),
        (
            format!("{GOOD}\n[limits]\nmax_steps = 0\n"),
            "limits.max_steps",
            None,
            "at least 1",
        ),
        (
            GOOD.replace(
                "idempotent = true",
                "idempotent = true\nlabels = [\"not ok!\"]",
            ),
            "tools[2].labels",
            Some(17),
            "not a valid name",
        ),
        (
            GOOD.replace("idempotent = true", "idempotent = true\nrisk = \"extreme\""),
            "",
            Some(22),
            "unknown variant `extreme`",
        ),
        (
            GOOD.replace("name = \"orders.lookup\"", "name = \"use_model\""),
            "tools[2].name",
            None,
            "name of a policy action",
        ),
        (
            format!("{GOOD}\n[workspace]\npath = \"nowhere\"\n"),
            "workspace.path",
            None,
            "not a folder",
        ),
        (GOOD.replace("[model]", "[model\n"), "", Some(5), ""),
        (
            format!("{GOOD}\n[[mcp]]\nname = \"fs\"\n"),
            "mcp[0].command",
            Some(25),
            "needs `command` (stdio) or `url`",
        ),
        (
            format!("{GOOD}\n[[mcp]]\nname = \"fs\"\ncommand = [\"x\"]\nurl = \"http://h/mcp\"\n"),
            "mcp[0].url",
            Some(25),
            "not both",
        ),
        (
            format!("{GOOD}\n[[mcp]]\nname = \"f.s\"\ncommand = [\"x\"]\n"),
            "mcp[0].name",
            None,
            "separates the server from its tools",
        ),
        (
            format!("{GOOD}\n[[mcp]]\nname = \"web\"\nurl = \"ftp://h/mcp\"\n"),
            "mcp[0].url",
            None,
            "not an http(s) URL",
        ),
        (
            format!(
                "{GOOD}\n[[mcp]]\nname = \"web\"\nurl = \"http://h/mcp\"\nenv = {{ A = \"b\" }}\n"
            ),
            "mcp[0].env",
            None,
            "takes `headers`",
        ),
        (
            format!(
                "{GOOD}\n[[mcp]]\nname = \"web\"\nurl = \"http://h/mcp\"\nheaders = {{ Authorization = \"secret:bad name\" }}\n"
            ),
            "mcp[0].headers",
            None,
            "not a valid secret name",
        ),
        (
            format!(
                "{GOOD}\n[[mcp]]\nname = \"fs\"\ncommand = [\"x\"]\n[mcp.tools.read]\nrisk = \"low\"\nretries = 2\n"
            ),
            "",
            Some(30),
            "unknown field `retries`",
        ),
        (
            format!(
                "{GOOD}\n[[mcp]]\nname = \"fs\"\ncommand = [\"x\"]\n[[mcp]]\nname = \"fs\"\ncommand = [\"y\"]\n"
            ),
            "mcp[1].name",
            None,
            "declared twice",
        ),
    ];
    for (text, field, line, fragment) in cases {
        let err = load_err(&text);
        let shown = err.to_string();
        assert!(err.file.ends_with("agent.toml"), "{shown}");
        assert!(shown.contains("agent.toml"), "{shown}");
        if !field.is_empty() {
            assert_eq!(err.field.as_deref(), Some(field), "{shown}");
        }
        if let Some(line) = line {
            assert_eq!(err.position.map(|p| p.0), Some(line), "{shown}");
            assert!(shown.contains(&format!("agent.toml:{line}:")), "{shown}");
        }
        assert!(
            shown.contains(fragment),
            "{shown} should contain {fragment:?}"
        );
    }
}

#[test]
fn mcp_servers_resolve_with_restrictive_defaults_for_undeclared_tools() {
    let dir = folder(&format!(
        "{GOOD}\n[[mcp]]\nname = \"fs\"\ncommand = [\"npx\", \"server\", \"{{workspace}}\"]\nenv = {{ TOKEN = \"secret:fs_token\" }}\n[mcp.tools.read]\nrisk = \"low\"\nidempotent = true\nlabels = []\nsink = false\n"
    ));
    let spec = load(dir.path()).unwrap();
    let server = &spec.mcp[0];
    match &server.transport {
        rein_config::McpTransportSpec::Stdio { program, args, env } => {
            assert_eq!(program, Path::new("npx"));
            let ws = dir.path().canonicalize().unwrap().join("workspace");
            assert_eq!(args, &vec!["server".to_owned(), ws.display().to_string()]);
            assert_eq!(env["TOKEN"], "secret:fs_token");
        }
        other => panic!("{other:?}"),
    }
    assert!(spec.secrets.contains(&"fs_token".to_owned()));
    let read = server.tool_policy("read");
    assert_eq!(
        (
            read.risk.as_str(),
            read.idempotent,
            read.sink,
            read.declared
        ),
        ("low", true, false, true)
    );
    assert!(read.labels.is_empty());
    // A tool the operator did not declare: untrusted output, not idempotent, a sink, high risk.
    let other = server.tool_policy("write");
    assert_eq!(
        (
            other.labels.clone(),
            other.risk.as_str(),
            other.idempotent,
            other.sink,
            other.declared
        ),
        (vec!["untrusted".to_owned()], "high", false, true, false)
    );
}

#[test]
fn a_folder_without_agent_toml_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = load(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("agent.toml: cannot read it"),
        "{err}"
    );
    let err = load(&dir.path().join("nope")).unwrap_err();
    assert!(
        err.to_string().contains("cannot open the agent folder"),
        "{err}"
    );
}

#[test]
fn the_published_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/agent.schema.json");
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == agent_schema(),
        "schemas/agent.schema.json is out of date: run `cargo run -p rein -- schema agent > schemas/agent.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(schema["title"], "rein agent.toml");
    assert!(
        schema["properties"]["tools"]["items"].is_object()
            || schema["properties"]["tools"]["items"]["$ref"].is_string()
    );
}

#[test]
fn a_gateway_needs_no_instructions_or_workspace_and_its_client_tools_are_checked() {
    let gateway = "name = \"gw\"\n[gateway]\non_denied = \"error\"\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("script.toml"), "[[turns]]\ntext = \"hi\"\n").unwrap();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!("{gateway}[[tools]]\nclient = true\nname = \"send_email\"\nsink = true\n"),
    )
    .unwrap();
    let spec = load(dir.path()).unwrap();
    assert_eq!(spec.instructions, "");
    assert_eq!(
        spec.workspace.path,
        dir.path().canonicalize().unwrap().join(".")
    );
    assert_eq!(
        spec.gateway.map(|g| g.on_denied),
        Some(rein_config::OnDenied::Error)
    );
    match &spec.tools[0].tool {
        ToolConfig::Client {
            name, args_schema, ..
        } => {
            assert_eq!(name, "send_email");
            assert_eq!(args_schema["type"], "object");
        }
        other => panic!("not a client tool: {other:?}"),
    }
    assert!(spec.tools[0].sink);

    // What does not apply to a tool rein never runs is refused, by field.
    for (extra, field) in [
        ("command = [\"sh\"]", "tools[0].command"),
        ("timeout_ms = 5", "tools[0].timeout_ms"),
        (
            "args_schema = { type = \"string\" }",
            "tools[0].args_schema",
        ),
    ] {
        let e = load_err(&format!(
            "{gateway}[[tools]]\nclient = true\nname = \"x\"\n{extra}\n"
        ));
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
    }
    let e = load_err(&format!("{gateway}[[tools]]\nclient = true\n"));
    assert_eq!(e.field.as_deref(), Some("tools[0].name"), "{e}");
    // An agent that is not a gateway still needs its instructions.
    let e = load_err(
        "name = \"a\"\n[model]\nprovider = \"scripted\"\nname = \"s\"\nscript = \"script.toml\"\n",
    );
    assert_eq!(e.field.as_deref(), Some("instructions"), "{e}");
}
