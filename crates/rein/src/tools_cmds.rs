//! `rein tools list`: every tool an agent has, where it comes from (built-in, command,
//! sub-agent, MCP server), a summary of its arguments, its labels, and the verdict the policies
//! give it by default. Also the one place the CLI connects an agent's MCP servers for commands
//! that need their tools without running the agent (policy check, explain, schema).

use std::path::Path;
use std::sync::Arc;

use rein_config::{AgentSpec, ToolConfig};
use rein_core::Verdict;
use rein_engine::McpSet;
use rein_policy::RequestFacts;
use rein_tools::Tool;
use serde_json::{Value, json};

use crate::SecretsAt;

/// Connects the agent's MCP servers (none: nothing happens), with its secrets and pins.
pub(crate) async fn connect_mcp(
    spec: &AgentSpec,
    secrets: &SecretsAt<'_>,
    accept_changes: bool,
) -> anyhow::Result<McpSet> {
    if spec.mcp.is_empty() {
        return Ok(McpSet::default());
    }
    let (file, required) = secrets.file();
    let values = rein_engine::secrets::resolve_secrets(
        &spec.secrets,
        &|var| std::env::var(var).ok(),
        Some(&file),
        required,
    )?;
    let pins = rein_mcp::pins_path(secrets.state_dir, &spec.name);
    Ok(rein_engine::connect_mcp(spec, Arc::new(values), Some(&pins), accept_changes).await?)
}

/// `rein tools list <agent-dir>`.
pub(crate) async fn tools_list(
    agent_dir: &Path,
    secrets: &SecretsAt<'_>,
    json: bool,
    accept_changes: bool,
) -> anyhow::Result<u8> {
    let spec = rein_config::load(agent_dir)?;
    let mcp = connect_mcp(&spec, secrets, accept_changes).await?;
    let listed = describe(&spec, &mcp);
    mcp.shutdown().await;
    let rows = listed?;
    if json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(0);
    }
    let width = |key: &str| {
        rows.iter()
            .map(|r| r[key].as_str().unwrap_or_default().chars().count())
            .max()
            .unwrap_or(0)
            .max(key.len())
    };
    let (wn, ws, wv) = (width("name"), width("source"), width("verdict"));
    println!(
        "{:wn$}  {:ws$}  {:wv$}  {:20}  arguments",
        "name", "source", "verdict", "labels"
    );
    for r in &rows {
        let labels = r["labels"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mut flags = String::new();
        if r["changed"] == true {
            flags.push_str("  [CHANGED since pinned: refused]");
        }
        if r["operator_manifest"] == false {
            flags.push_str("  [no operator entry: restrictive defaults]");
        }
        println!(
            "{:wn$}  {:ws$}  {:wv$}  {:20}  {}{flags}",
            r["name"].as_str().unwrap_or_default(),
            r["source"].as_str().unwrap_or_default(),
            r["verdict"].as_str().unwrap_or_default(),
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
            r["arguments"].as_str().unwrap_or_default(),
        );
    }
    for notice in mcp.notices.iter().filter(|n| n.kind != "mcp_server_listed") {
        println!(
            "note: {} {}: {}",
            notice.kind, notice.subject, notice.detail
        );
    }
    if accept_changes {
        println!(
            "pinned the current definitions of {} MCP tools",
            mcp.listed.len()
        );
    }
    Ok(0)
}

/// One row per tool.
fn describe(spec: &AgentSpec, mcp: &McpSet) -> anyhow::Result<Vec<Value>> {
    let tools = rein_engine::build_tools(spec, mcp)?;
    let gate = rein_engine::load_gate(spec, mcp)?;
    let facts = RequestFacts {
        budget_percent: 0,
        user: "anonymous".into(),
        tenant: "default".into(),
        task: String::new(),
        labels: vec![],
        approved_by: None,
    };
    let mut rows = Vec::new();
    for name in tools.registry.names() {
        let Some(tool) = tools.registry.get(&name) else {
            continue;
        };
        let manifest = tool.manifest();
        let facts_of = tools.setup.tools.iter().find(|t| t.name == name);
        let (source, operator_manifest, changed) =
            match spec.tools.iter().find(|t| t.name() == name) {
                Some(entry) => (
                    match &entry.tool {
                        ToolConfig::FsRead
                        | ToolConfig::FsWrite
                        | ToolConfig::HttpGet { .. }
                        | ToolConfig::MemoryRead
                        | ToolConfig::MemoryWrite => "built-in".to_owned(),
                        ToolConfig::Command { .. } => "command".to_owned(),
                        ToolConfig::Delegate { agent_dir, .. } => {
                            format!("sub-agent {}", agent_dir.display())
                        }
                    },
                    true,
                    false,
                ),
                None => match mcp.tools.iter().find(|t| t.manifest().name == name) {
                    Some(t) => {
                        let server = t.server();
                        let remote = name
                            .strip_prefix(&format!("{}.", server.name()))
                            .unwrap_or(&name);
                        let kind = match server.spec().transport {
                            rein_config::McpTransportSpec::Stdio { .. } => "stdio",
                            rein_config::McpTransportSpec::Http { .. } => "http",
                        };
                        (
                            format!("mcp {} ({kind})", server.name()),
                            t.policy().declared,
                            server.is_changed(remote),
                        )
                    }
                    None => ("?".to_owned(), true, false),
                },
            };
        let verdict = if gate.denied_outright(&name) {
            "deny".to_owned()
        } else {
            match gate
                .judge_tool(&name, &zero_args(&manifest.parameters), &facts)
                .verdict
            {
                Verdict::Allow => "allow".to_owned(),
                Verdict::Ask => "ask".to_owned(),
                Verdict::Deny => "conditional".to_owned(),
            }
        };
        rows.push(json!({
            "name": name,
            "source": source,
            "verdict": verdict,
            "labels": facts_of.map(|f| f.labels.clone()).unwrap_or_default(),
            "sink": facts_of.map(|f| f.sink),
            "risk": facts_of.map(|f| f.risk.clone()),
            "idempotent": manifest.idempotent,
            "arguments": arguments(&manifest.parameters),
            "description": manifest.description,
            "operator_manifest": operator_manifest,
            "changed": changed,
        }));
    }
    Ok(rows)
}

/// Arguments with every required field at its type's zero value: enough to ask the policies
/// what they say when the arguments do not matter.
fn zero_args(schema: &Value) -> Value {
    let mut out = serde_json::Map::new();
    let required = schema.get("required").and_then(Value::as_array);
    let props = schema.get("properties").and_then(Value::as_object);
    for name in required.into_iter().flatten().filter_map(Value::as_str) {
        let field = props.and_then(|p| p.get(name));
        let zero = match field.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("string") => json!(""),
            Some("integer") | Some("number") => json!(0),
            Some("boolean") => json!(false),
            Some("array") => json!([]),
            Some("object") => field.map(zero_args).unwrap_or_else(|| json!({})),
            _ => Value::Null,
        };
        out.insert(name.to_owned(), zero);
    }
    Value::Object(out)
}

/// `path: string, limit?: integer`: the top-level arguments, `?` for optional ones.
fn arguments(schema: &Value) -> String {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return "(none)".into();
    };
    if props.is_empty() {
        return "(none)".into();
    }
    props
        .iter()
        .map(|(name, s)| {
            let ty = s.get("type").and_then(Value::as_str).unwrap_or("any");
            let opt = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            format!("{name}{opt}: {ty}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}
