//! An agent's tools built from its configuration: built-in, command, MCP and delegation tools in
//! one registry, with what the gate needs to know about each (groups, risk, sinks, argument
//! types, labels, data feeds, sensitive fields) and the tools a gateway's clients run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rein_config::{AgentSpec, ToolConfig};
use rein_policy::{GateSetup, ToolFacts};
use rein_tools::{
    CommandSpec, CommandTool, FsRead, FsWrite, HttpGet, Tool, ToolManifest, ToolRegistry,
};

use crate::EngineError;
use crate::mcp::McpSet;

/// An agent's tools and what the gate needs to know about them.
#[derive(Debug)]
pub struct AgentTools {
    /// The tools, ready to run.
    pub registry: ToolRegistry,
    /// The gate's view of the agent.
    pub setup: GateSetup,
    /// Each tool's output labels.
    pub output_labels: HashMap<String, Vec<String>>,
    /// Each tool's field label rules.
    pub output_fields: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// The data set each trusted tool feeds.
    pub data_feeds: HashMap<String, String>,
    /// The sub-agents delegate tools lead to: (tool name, the child's configuration).
    pub children: Vec<(String, AgentSpec)>,
    /// Each tool's sensitive argument fields.
    pub sensitive: std::collections::BTreeMap<String, Vec<String>>,
    /// What each run should record about the tools when it starts (command tools running
    /// unsandboxed).
    pub notices: Vec<rein_tools::ToolNotice>,
    /// The tools a gateway's clients run themselves.
    pub client_tools: HashSet<String>,
}

/// The manifest of a delegation: checked and offered to the model like any tool, but run by the
/// engine, which starts (or resumes) the sub-agent's run.
struct DelegateTool {
    manifest: ToolManifest,
}

impl DelegateTool {
    fn new(name: &str, description: &str) -> DelegateTool {
        DelegateTool {
            manifest: ToolManifest {
                name: name.to_owned(),
                description: description.to_owned(),
                parameters: serde_json::json!({
                    "type": "object",
                    "properties": {"task": {"type": "string", "description": "What the sub-agent should do"}},
                    "required": ["task"],
                    "additionalProperties": false
                }),
                // Running it again resumes the same sub-agent run, never a second one.
                idempotent: true,
                timeout: Duration::from_secs(3600),
            },
        }
    }
}

impl Tool for DelegateTool {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
    fn call<'a>(
        &'a self,
        _ctx: &'a rein_tools::ToolContext,
        _args: serde_json::Value,
    ) -> rein_core::BoxFuture<'a, Result<serde_json::Value, rein_tools::ToolError>> {
        Box::pin(std::future::ready(Err(rein_tools::ToolError::Failed(
            "a delegation is run by the engine, not called as a tool".into(),
        ))))
    }
}

/// The tools of an agent, and what the gate needs to know about them and the agent.
pub fn build_tools(spec: &AgentSpec, mcp: &McpSet) -> Result<AgentTools, EngineError> {
    let mut children = Vec::new();
    let mut tools = ToolRegistry::new();
    let mut facts = Vec::with_capacity(spec.tools.len());
    let mut labels = HashMap::new();
    let mut output_fields = HashMap::new();
    let mut data_feeds = HashMap::new();
    let mut sensitive = std::collections::BTreeMap::new();
    let mut notices = Vec::new();
    // Whether command tools can be sandboxed here, asked once.
    let has_commands = spec
        .tools
        .iter()
        .any(|t| matches!(t.tool, ToolConfig::Command { .. }));
    let sandboxing = if has_commands {
        rein_tools::sandbox::availability()
    } else {
        Ok(())
    };
    if let Err(why) = &sandboxing
        && spec.sandbox_fallback == rein_config::SandboxFallback::Refuse
    {
        return Err(EngineError::Agent(format!(
            "{}: command tools cannot be sandboxed here: {why}. Run rein where they can, or set `[sandbox] if_unavailable = \"continue\"` to run them without a sandbox",
            spec.dir.join(rein_config::AGENT_FILE).display()
        )));
    }
    let at = || spec.dir.join(rein_config::AGENT_FILE).display().to_string();
    for tool in &mcp.tools {
        let policy = tool.policy();
        let manifest = tool.manifest();
        check_sensitive(
            &at(),
            &manifest.name,
            &manifest.parameters,
            &policy.sensitive,
        )?;
        facts.push(ToolFacts {
            name: manifest.name.clone(),
            args_schema: manifest.parameters.clone(),
            labels: policy.labels.clone(),
            sink: policy.sink,
            risk: policy.risk.clone(),
            idempotent: manifest.idempotent,
            groups: policy.groups.clone(),
        });
        labels.insert(manifest.name.clone(), policy.labels.clone());
        if !policy.field_labels.is_empty() {
            output_fields.insert(manifest.name.clone(), policy.field_labels.clone());
        }
        if let Some(set) = &policy.data {
            data_feeds.insert(manifest.name.clone(), set.clone());
        }
        if !policy.sensitive.is_empty() {
            sensitive.insert(manifest.name.clone(), policy.sensitive.clone());
        }
        tools.register(tool.clone()).map_err(|e| {
            EngineError::Agent(format!(
                "{}: MCP server `{}`: {e}",
                at(),
                tool.server().name()
            ))
        })?;
    }
    for entry in &spec.tools {
        let tool: Arc<dyn Tool> = match &entry.tool {
            ToolConfig::FsRead => Arc::new(FsRead::default()),
            ToolConfig::MemoryRead => Arc::new(rein_tools::MemoryRead::default()),
            ToolConfig::MemoryWrite => Arc::new(rein_tools::MemoryWrite::default()),
            ToolConfig::FsWrite => Arc::new(FsWrite::default()),
            ToolConfig::HttpGet {
                allow_hosts,
                max_bytes,
                timeout,
            } => Arc::new(
                HttpGet::new(allow_hosts.clone(), *max_bytes, *timeout)
                    .map_err(EngineError::Agent)?,
            ),
            ToolConfig::Delegate {
                name,
                description,
                agent_dir,
            } => {
                let child = rein_config::load(agent_dir)?;
                if !child.mcp.is_empty() {
                    return Err(EngineError::Agent(format!(
                        "{}: sub-agent `{}` has MCP servers; sub-agents cannot have them yet (give the MCP server to this agent, or run the sub-agent on its own)",
                        at(),
                        child.name
                    )));
                }
                if child
                    .tools
                    .iter()
                    .any(|t| matches!(t.tool, ToolConfig::Delegate { .. }))
                {
                    return Err(EngineError::Agent(format!(
                        "{}: sub-agent `{}` delegates further; rein supports one level of sub-agents",
                        spec.dir.join(rein_config::AGENT_FILE).display(),
                        child.name
                    )));
                }
                let tool = Arc::new(DelegateTool::new(name, description));
                tools.register(tool).map_err(|e| {
                    EngineError::Agent(format!(
                        "{}: {e}",
                        spec.dir.join(rein_config::AGENT_FILE).display()
                    ))
                })?;
                children.push((name.clone(), child));
                continue;
            }
            ToolConfig::Client {
                name,
                description,
                args_schema,
                idempotent,
            } => Arc::new(rein_tools::ClientTool::new(ToolManifest {
                name: name.clone(),
                description: description.clone(),
                parameters: args_schema.clone(),
                idempotent: *idempotent,
                timeout: Duration::from_secs(30),
            })),
            ToolConfig::Command {
                name,
                description,
                program,
                args,
                env,
                args_schema,
                idempotent,
                timeout,
                max_output_bytes,
                sandbox,
            } => Arc::new(CommandTool::new(
                ToolManifest {
                    name: name.clone(),
                    description: description.clone(),
                    parameters: args_schema.clone(),
                    idempotent: *idempotent,
                    timeout: *timeout,
                },
                CommandSpec {
                    program: program.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    max_output_bytes: *max_output_bytes,
                    sandbox: match &sandboxing {
                        Ok(()) => Some(rein_tools::sandbox::Sandbox {
                            allow_hosts: sandbox.allow_hosts.clone(),
                            read_paths: sandbox.read_paths.clone(),
                            write_paths: sandbox.write_paths.clone(),
                        }),
                        Err(why) => {
                            notices.push(rein_tools::ToolNotice {
                                kind: "sandbox_unavailable".into(),
                                subject: name.clone(),
                                detail: format!(
                                    "{why}; the operator chose to run it without a sandbox"
                                ),
                            });
                            None
                        }
                    },
                },
            )),
        };
        let manifest = tool.manifest();
        check_sensitive(
            &at(),
            &manifest.name,
            &manifest.parameters,
            &entry.sensitive,
        )?;
        if !entry.sensitive.is_empty() {
            sensitive.insert(manifest.name.clone(), entry.sensitive.clone());
        }
        facts.push(ToolFacts {
            name: manifest.name.clone(),
            args_schema: manifest.parameters.clone(),
            labels: entry.labels.clone(),
            sink: entry.sink,
            risk: entry.risk.clone(),
            idempotent: manifest.idempotent,
            groups: entry.groups.clone(),
        });
        labels.insert(manifest.name.clone(), entry.labels.clone());
        if !entry.field_labels.is_empty() {
            output_fields.insert(manifest.name.clone(), entry.field_labels.clone());
        }
        if let Some(set) = &entry.data {
            data_feeds.insert(manifest.name.clone(), set.clone());
        }
        tools.register(tool).map_err(|e| {
            EngineError::Agent(format!(
                "{}: {e}",
                spec.dir.join(rein_config::AGENT_FILE).display()
            ))
        })?;
    }
    let mut setup = GateSetup {
        agent: spec.name.clone(),
        parents: vec![],
        tools: facts,
        models: std::iter::once(&spec.model)
            .chain(&spec.models)
            .map(|m| m.name.clone())
            .fold(Vec::new(), |mut names, name| {
                if !names.contains(&name) {
                    names.push(name);
                }
                names
            }),
        delegates: vec![],
        data: spec
            .data
            .iter()
            .map(|d| d.name.clone())
            .chain(data_feeds.values().cloned())
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect(),
    };
    // The parent's policies bound what its sub-agents may do, so its schema knows their tools
    // and models too.
    for (_, child) in &children {
        let child_setup = build_tools(child, &McpSet::default())?.setup;
        for tool in child_setup.tools {
            match setup.tools.iter().find(|t| t.name == tool.name) {
                None => setup.tools.push(tool),
                Some(existing) if existing.args_schema == tool.args_schema => {}
                Some(_) => {
                    return Err(EngineError::Agent(format!(
                        "{}: sub-agent `{}` has a tool `{}` whose arguments differ from this agent's tool of that name",
                        spec.dir.join(rein_config::AGENT_FILE).display(),
                        child.name,
                        tool.name
                    )));
                }
            }
        }
        for set in child_setup.data {
            if !setup.data.contains(&set) {
                setup.data.push(set);
            }
        }
        for model in child_setup.models {
            if !setup.models.contains(&model) {
                setup.models.push(model);
            }
        }
        setup.delegates.push(child.name.clone());
    }
    Ok(AgentTools {
        registry: tools,
        setup,
        output_labels: labels,
        output_fields,
        data_feeds,
        children,
        sensitive,
        notices,
        client_tools: spec
            .tools
            .iter()
            .filter(|t| matches!(t.tool, ToolConfig::Client { .. }))
            .map(|t| t.name().to_owned())
            .collect(),
    })
}

/// Every sensitive field must be one of the tool's arguments.
fn check_sensitive(
    file: &str,
    tool: &str,
    schema: &serde_json::Value,
    fields: &[String],
) -> Result<(), EngineError> {
    let properties = schema
        .get("properties")
        .and_then(serde_json::Value::as_object);
    match fields
        .iter()
        .find(|f| !properties.is_some_and(|p| p.contains_key(*f)))
    {
        Some(missing) => Err(EngineError::Agent(format!(
            "{file}: tool `{tool}` lists `{missing}` as sensitive, but it has no such argument"
        ))),
        None => Ok(()),
    }
}
