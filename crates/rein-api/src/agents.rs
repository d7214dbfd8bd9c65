//! An agent's policies and tools without running it: policy check and explain, the tool list
//! with each tool's source and default verdict, and the Cedar schema. Each connects the agent's
//! MCP servers (so policies can name their tools) and stops them again.

use std::path::Path;
use std::sync::Arc;

use rein_config::{AgentSpec, ToolConfig};
use rein_core::Verdict;
use rein_engine::McpSet;
use rein_policy::{Gate, GateSetup, GrantFacts, RequestFacts, Scenario, Target};
use rein_tools::Tool;
use serde_json::{Value, json};

use crate::{Error, Rein, convert, v1};

impl Rein {
    /// Connects the agent's MCP servers (none: nothing happens), with its secrets and pins.
    async fn connect_mcp(&self, spec: &AgentSpec, accept_changes: bool) -> Result<McpSet, Error> {
        if spec.mcp.is_empty() {
            return Ok(McpSet::default());
        }
        let (file, required) = self.secrets_file();
        let values = rein_engine::secrets::resolve_secrets(
            &spec.secrets,
            self.env(),
            Some(&file),
            required,
        )?;
        let pins = self.dir.mcp_pins(&spec.name);
        Ok(rein_engine::connect_mcp(spec, Arc::new(values), Some(&pins), accept_changes).await?)
    }

    async fn gate(&self, agent_dir: &Path) -> Result<(Gate, usize), Error> {
        let spec = rein_config::load(agent_dir)?;
        let mcp = self.connect_mcp(&spec, false).await?;
        let gate = rein_engine::load_gate(&spec, &mcp);
        mcp.shutdown().await;
        Ok((gate?, count_examples(&spec.dir)))
    }

    /// Validates an agent's policies against its schema and checks the examples they carry.
    pub async fn policy_check(&self, agent_dir: &Path) -> Result<v1::PolicyCheck, Error> {
        let (gate, examples) = self.gate(agent_dir).await?;
        Ok(v1::PolicyCheck {
            policies: gate.policy_count(),
            examples,
        })
    }

    /// The verdict the agent's policies give a request, and the policies that decided it.
    pub async fn policy_explain(
        &self,
        agent_dir: &Path,
        request: &v1::ExplainRequest,
    ) -> Result<v1::Decision, Error> {
        let (gate, _) = self.gate(agent_dir).await?;
        explain_with(&gate, request)
    }

    /// As [`Rein::policy_explain`], with the gate of an agent loaded already (a server's): no
    /// configuration read and no MCP server started per request.
    pub fn policy_explain_on(
        &self,
        loaded: &crate::LoadedAgent,
        request: &v1::ExplainRequest,
    ) -> Result<v1::Decision, Error> {
        explain_with(loaded.gate(), request)
    }

    /// The Cedar schema policies are validated against: an agent's, with its tools, or the
    /// generic one.
    pub async fn policy_schema(&self, agent_dir: Option<&Path>) -> Result<String, Error> {
        let setup = match agent_dir {
            Some(dir) => {
                let spec = rein_config::load(dir)?;
                let mcp = self.connect_mcp(&spec, false).await?;
                let tools = rein_engine::build_tools(&spec, &mcp);
                mcp.shutdown().await;
                tools?.setup
            }
            None => GateSetup {
                agent: "<agent>".into(),
                ..GateSetup::default()
            },
        };
        Ok(rein_policy::schema_text(&setup))
    }

    /// Every tool of an agent with its source, arguments, labels and the verdict its policies
    /// give by default. With `accept_changes`, MCP tools whose definitions changed since they
    /// were pinned are pinned again as they are now.
    pub async fn tools_list(
        &self,
        agent_dir: &Path,
        accept_changes: bool,
    ) -> Result<v1::ToolsList, Error> {
        let spec = rein_config::load(agent_dir)?;
        let mcp = self.connect_mcp(&spec, accept_changes).await?;
        let rows = describe(&spec, &mcp);
        mcp.shutdown().await;
        Ok(v1::ToolsList {
            tools: rows?,
            notes: mcp
                .notices
                .iter()
                .filter(|n| n.kind != "mcp_server_listed")
                .map(|n| format!("{} {}: {}", n.kind, n.subject, n.detail))
                .collect(),
            pinned: if accept_changes { mcp.listed.len() } else { 0 },
        })
    }
}

/// How many `// example:` lines an agent's policies carry.
fn count_examples(agent_dir: &Path) -> usize {
    std::fs::read_dir(agent_dir.join("policies"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "cedar"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|t| {
                    t.lines()
                        .filter(|l| {
                            l.trim_start()
                                .trim_start_matches('/')
                                .trim_start()
                                .starts_with("example:")
                        })
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// One row per tool.
fn describe(spec: &AgentSpec, mcp: &McpSet) -> Result<Vec<v1::ToolRow>, Error> {
    let tools = rein_engine::build_tools(spec, mcp)?;
    let gate = rein_engine::load_gate(spec, mcp)?;
    let facts = RequestFacts {
        user: "anonymous".into(),
        tenant: "default".into(),
        ..RequestFacts::default()
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
                        ToolConfig::Client { .. } => "client".to_owned(),
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
        rows.push(v1::ToolRow {
            name: name.clone(),
            source,
            verdict,
            labels: facts_of.map(|f| f.labels.clone()).unwrap_or_default(),
            sink: facts_of.map(|f| f.sink),
            risk: facts_of.map(|f| f.risk.clone()),
            idempotent: manifest.idempotent,
            arguments: arguments(&manifest.parameters),
            description: manifest.description.clone(),
            operator_manifest,
            changed,
        });
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

/// The verdict `gate` gives the request, and the policies that decided it.
fn explain_with(gate: &Gate, request: &v1::ExplainRequest) -> Result<v1::Decision, Error> {
    let args = if request.args.is_null() {
        json!({})
    } else {
        request.args.clone()
    };
    let target = match (&request.tool, &request.model, &request.answer) {
        (Some(tool), None, None) => Target::Tool(tool.clone()),
        (None, Some(model), None) => Target::Model(model.clone()),
        (None, None, Some(_)) => Target::Respond,
        _ => {
            return Err(Error::Invalid(
                "give one of a tool, a model or an answer to explain".into(),
            ));
        }
    };
    let args = match &request.answer {
        Some(text) => json!({ "text": text }),
        None => args,
    };
    let grants = match &request.grants {
        None => GrantFacts::default(),
        Some(list) => {
            let list = convert::grants(list)?;
            let tool = request.tool.as_deref().unwrap_or("respond");
            let mut tools: Vec<String> = list.iter().map(|g| g.tool.clone()).collect();
            tools.sort();
            tools.dedup();
            GrantFacts {
                fixed: true,
                covered: rein_core::grants::covering(&list, tool, &args, request.calls).is_some(),
                tools,
            }
        }
    };
    let scenario = Scenario {
        user: request.user.clone(),
        tenant: request.tenant.clone(),
        task: request.task.clone().unwrap_or_else(|| "explain".into()),
        labels: request.labels.clone(),
        approved_by: request.approved_by.clone(),
        from: request.from.clone(),
        grants,
        data: request
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect(),
        calls: request.calls,
    };
    let decision = gate.judge_scenario(&target, &args, &scenario);
    Ok(convert::decision(decision))
}
