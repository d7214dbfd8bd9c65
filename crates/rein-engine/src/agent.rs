//! An agent ready to run: its provider and tools built from a resolved [`AgentSpec`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::secrets::resolve_secrets;
use rein_config::{AgentSpec, KeySource, ProviderSpec, ToolConfig};
use rein_core::Limits;
use rein_core::secrets::Redactor;
use rein_model::{
    AnthropicConfig, AnthropicProvider, OpenAiConfig, OpenAiProvider, Provider, ScriptedProvider,
};
use rein_policy::{Gate, GateSetup, ToolFacts};
use rein_tools::SecretSource;
use rein_tools::{
    CommandSpec, CommandTool, FsRead, FsWrite, HttpGet, Tool, ToolManifest, ToolRegistry,
};

use crate::EngineError;
use crate::mcp::{McpSet, connect_mcp};
use crate::policy_data::PolicyData;

/// An agent with a live provider and tool set.
pub struct Agent {
    /// The agent's name.
    pub name: String,
    /// The folder it was loaded from, if any (runs record it, so they can be resumed).
    pub dir: Option<PathBuf>,
    /// A digest of its configuration.
    pub digest: String,
    /// The operator's instructions.
    pub instructions: String,
    /// The model.
    pub provider: Arc<dyn Provider>,
    /// Tries in all for a model call that fails with an error that may pass.
    pub max_attempts: u32,
    /// The longest wait between tries.
    pub max_backoff: Duration,
    /// The tools.
    pub tools: ToolRegistry,
    /// Hard limits for new runs.
    pub limits: Limits,
    /// The workspace folder.
    pub workspace: PathBuf,
    /// Whether each run gets its own copy of the workspace.
    pub isolate_workspace: bool,
    /// The policies that judge every model call and tool call. Not public: nothing outside the
    /// engine may swap it.
    pub(crate) gate: Arc<Gate>,
    /// How long an approval request stays open.
    pub approval_ttl: Duration,
    /// What each tool's output is (labels), by tool name.
    pub output_labels: HashMap<String, Vec<String>>,
    /// The tools the clients of this agent's gateway run themselves: a call of one is handed to
    /// the client (after its intent is recorded), never run here.
    pub client_tools: HashSet<String>,
    /// Whether the agent is a gateway (`[gateway]`, or tools its clients run): each of its runs
    /// is one request of a client, one model call.
    pub gateway: bool,
    /// Labels of parts of each tool's output, by tool name and JSON pointer pattern.
    pub output_fields: HashMap<String, BTreeMap<String, Vec<String>>>,
    /// The policy data set each trusted tool's output feeds, by tool name.
    pub data_feeds: HashMap<String, String>,
    /// The operator's policy data files, read again when they change.
    pub policy_data: Arc<PolicyData>,
    /// The model that fixes a run's grants from its instructions and task, when its caller
    /// gives none.
    pub planner: Option<Arc<dyn Provider>>,
    /// How the run's answer is treated as a sink.
    pub answer: rein_config::AnswerSpec,
    /// What the gate knows about each tool (sink, risk, labels, groups, arguments).
    pub tool_facts: Vec<ToolFacts>,
    /// The agent's secrets, resolved; tools read them as they start.
    pub secrets: Arc<dyn SecretSource>,
    /// Replaces secret values in everything the run records. Not public, like the gate.
    pub(crate) redactor: Redactor,
    /// Sub-agents, by the name of the tool that delegates to them.
    pub delegates: HashMap<String, Arc<Agent>>,
    /// For a sub-agent: its parent's gate, which must also allow everything the sub-agent does.
    pub(crate) parent_gate: Option<Arc<Gate>>,
    /// Each tool's sensitive argument fields, kept out of the audit trail in clear.
    pub sensitive: std::collections::BTreeMap<String, Vec<String>>,
    /// The MCP servers the agent's MCP tools call.
    pub mcp_servers: Vec<Arc<rein_mcp::McpServer>>,
    /// What each new run records about the agent's tools before it starts (MCP listings,
    /// changed tool definitions).
    pub load_notices: Vec<rein_tools::ToolNotice>,
    /// Models tried in order when the primary fails or its breaker is open.
    pub fallbacks: Vec<Arc<dyn Provider>>,
    /// The model for steps that only read tool results, if routed.
    pub route_tool_results: Option<Arc<dyn Provider>>,
    /// The model for the wrap-up turn when a budget runs out, if routed.
    pub route_wrap_up: Option<Arc<dyn Provider>>,
    /// Spending limits.
    pub budgets: Vec<rein_core::budget::Limit>,
    /// The most tool calls in a run.
    pub max_tool_calls: Option<u32>,
    /// Prices overriding the built-in table.
    pub prices: HashMap<String, rein_core::budget::Price>,
    /// The context budget and pinned constraints.
    pub context: rein_config::ContextSpec,
    /// Latency targets for model and tool calls.
    pub model_latency_target: Option<Duration>,
    /// Latency target for tool calls.
    pub tool_latency_target: Option<Duration>,
    /// Retries and breaker settings per tool.
    pub resilience: HashMap<String, rein_config::Resilience>,
    /// Circuit breakers of tools and models, shared by the agent's runs.
    pub breakers: crate::resilience::Breakers,
    /// What one model reply may hold.
    pub reply_limits: rein_core::reply::ReplyLimits,
    /// How durable the run's commits are.
    pub durability: rein_core::Durability,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.name)
            .field("tools", &self.tools)
            .finish()
    }
}

impl Agent {
    /// The policies that judge the agent's calls.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Builds an agent from its resolved configuration. `env` looks up environment variables
    /// (the API key); it is a parameter so that nothing here reads the process environment.
    pub fn from_spec(
        spec: &AgentSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Agent, EngineError> {
        Agent::from_spec_with_secrets(spec, env, None, false)
    }

    /// Builds an agent, resolving its secrets from `env` (`REIN_SECRET_<NAME>`) or
    /// `secrets_file`; `file_required` makes a missing file an error (it was named explicitly).
    /// An agent with MCP servers must be built with [`Agent::load`], which connects them.
    pub fn from_spec_with_secrets(
        spec: &AgentSpec,
        env: &dyn Fn(&str) -> Option<String>,
        secrets_file: Option<&Path>,
        file_required: bool,
    ) -> Result<Agent, EngineError> {
        if !spec.mcp.is_empty() {
            return Err(EngineError::Agent(format!(
                "{}: the agent has MCP servers; build it with Agent::load, which connects them",
                spec.dir.join(rein_config::AGENT_FILE).display()
            )));
        }
        Agent::build(
            spec,
            env,
            secrets_file,
            file_required,
            None,
            McpSet::default(),
        )
    }

    /// Builds an agent, connecting its MCP servers first. `pins_file` keeps the fingerprints of
    /// MCP tools between processes, so a server that changes a tool is noticed.
    pub async fn load(
        spec: &AgentSpec,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
        secrets_file: Option<&Path>,
        file_required: bool,
        pins_file: Option<&Path>,
    ) -> Result<Agent, EngineError> {
        let mcp = if spec.mcp.is_empty() {
            McpSet::default()
        } else {
            let secrets = resolve_secrets(&spec.secrets, env, secrets_file, file_required)?;
            connect_mcp(spec, Arc::new(secrets), pins_file, false).await?
        };
        Agent::build(spec, env, secrets_file, file_required, None, mcp)
    }

    fn build(
        spec: &AgentSpec,
        env: &dyn Fn(&str) -> Option<String>,
        secrets_file: Option<&Path>,
        file_required: bool,
        parent: Option<(&str, Arc<Gate>)>,
        mcp: McpSet,
    ) -> Result<Agent, EngineError> {
        let secrets = resolve_secrets(&spec.secrets, env, secrets_file, file_required)?;
        let key = |source: &Option<KeySource>| -> Result<Option<String>, EngineError> {
            match source {
                None => Ok(None),
                Some(KeySource::Secret(name)) => secrets.secret(name).map(Some).map_err(EngineError::Agent),
                Some(KeySource::Env(var)) => env(var).filter(|v| !v.is_empty()).map(Some).ok_or_else(|| {
                    EngineError::Agent(format!(
                        "{}: model.api_key_env names `{var}`, which is not set: export {var}=<your key>",
                        spec.dir.join(rein_config::AGENT_FILE).display()
                    ))
                }),
            }
        };
        let build_provider =
            |m: &rein_config::ModelSpec| -> Result<Arc<dyn Provider>, EngineError> {
                Ok(match &m.provider {
                    ProviderSpec::Scripted { script } => Arc::new(
                        ScriptedProvider::from_file(m.name.clone(), script)
                            .map_err(|e| EngineError::Agent(e.to_string()))?
                            .with_max_output_tokens(u64::from(m.max_tokens.unwrap_or(1024))),
                    ),
                    ProviderSpec::OpenAi { base_url, api_key } => Arc::new(
                        OpenAiProvider::new(OpenAiConfig {
                            base_url: base_url.clone(),
                            api_key: key(api_key)?,
                            model: m.name.clone(),
                            timeout: m.timeout,
                            max_tokens: m
                                .max_tokens
                                .unwrap_or(rein_model::DEFAULT_MAX_OUTPUT_TOKENS),
                            temperature: m.temperature,
                        })
                        .map_err(EngineError::Agent)?,
                    ),
                    ProviderSpec::Anthropic { base_url, api_key } => Arc::new(
                        AnthropicProvider::new(AnthropicConfig {
                            base_url: base_url.clone(),
                            api_key: key(api_key)?,
                            model: m.name.clone(),
                            timeout: m.timeout,
                            max_tokens: m.max_tokens.unwrap_or(4096),
                            temperature: m.temperature,
                        })
                        .map_err(EngineError::Agent)?,
                    ),
                })
            };
        let m = &spec.model;
        let provider = build_provider(m)?;
        let mut others = HashMap::new();
        for model in &spec.models {
            others.insert(model.id.clone(), build_provider(model)?);
        }
        let by_id = |id: &str| -> Arc<dyn Provider> {
            others.get(id).cloned().unwrap_or_else(|| provider.clone())
        };
        let fallbacks = spec.fallbacks.iter().map(|id| by_id(id)).collect();
        let route_tool_results = spec.route_tool_results.as_deref().map(by_id);
        let route_wrap_up = spec.route_wrap_up.as_deref().map(by_id);
        let planner = spec.planner.as_deref().map(by_id);
        let AgentTools {
            registry: tools,
            mut setup,
            output_labels: labels,
            output_fields,
            data_feeds,
            children,
            sensitive,
            notices: tool_notices,
            client_tools,
        } = build_tools(spec, &mcp)?;
        let policy_data = PolicyData::load(
            spec.data
                .iter()
                .map(|d| (d.name.clone(), d.path.clone()))
                .collect(),
        )
        .map_err(|e| {
            EngineError::Agent(format!(
                "{}: [data]: {e}",
                spec.dir.join(rein_config::AGENT_FILE).display()
            ))
        })?;
        if let Some((parent_name, _)) = &parent {
            setup.parents = vec![(*parent_name).to_owned()];
        }
        let gate = Arc::new(Gate::load_dir(&spec.dir, &setup).map_err(EngineError::Policy)?);
        let tool_facts = setup.tools.clone();
        let mut delegates = HashMap::new();
        for (tool, child) in &children {
            let mut child = Agent::build(
                child,
                env,
                secrets_file,
                file_required,
                Some((&spec.name, gate.clone())),
                McpSet::default(),
            )?;
            // A sub-agent spends from its parent's budgets: the run's (booked to the root run)
            // and the user's and tenant's; where both set one, the stricter limit holds.
            for limit in spec
                .budgets
                .iter()
                .filter(|l| l.scope != rein_core::budget::Scope::Agent)
            {
                match child
                    .budgets
                    .iter_mut()
                    .find(|c| c.scope == limit.scope && c.period == limit.period)
                {
                    Some(own) => {
                        own.tokens = min_limit(own.tokens, limit.tokens);
                        own.cost_micros = min_limit(own.cost_micros, limit.cost_micros);
                    }
                    None => child.budgets.push(*limit),
                }
            }
            delegates.insert(tool.clone(), Arc::new(child));
        }
        let redactor = secrets.redactor();
        // MCP tools fail fast; only what a timeout means is the operator's to say.
        let mcp_resilience: Vec<(String, rein_config::Resilience)> = mcp
            .tools
            .iter()
            .map(|t| {
                (
                    t.manifest().name.clone(),
                    rein_config::Resilience {
                        timeout_is_failure: t.policy().timeout_is_failure,
                        ..rein_config::Resilience::default()
                    },
                )
            })
            .collect();
        Ok(Agent {
            secrets: Arc::new(secrets),
            redactor,
            gate,
            delegates,
            parent_gate: parent.map(|(_, g)| g),
            sensitive,
            mcp_servers: mcp.servers,
            load_notices: mcp.notices.into_iter().chain(tool_notices).collect(),
            fallbacks,
            route_tool_results,
            route_wrap_up,
            budgets: spec.budgets.clone(),
            max_tool_calls: spec.max_tool_calls,
            prices: spec.prices.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            context: spec.context.clone(),
            model_latency_target: spec.model_latency_target,
            tool_latency_target: spec.tool_latency_target,
            resilience: spec
                .tools
                .iter()
                .map(|t| (t.name().to_owned(), t.resilience))
                .chain(mcp_resilience)
                .collect(),
            breakers: Default::default(),
            approval_ttl: spec.approval_ttl,
            output_labels: labels,
            output_fields,
            data_feeds,
            gateway: spec.gateway.is_some() || !client_tools.is_empty(),
            client_tools,
            policy_data: Arc::new(policy_data),
            planner,
            answer: spec.answer.clone(),
            tool_facts,
            name: spec.name.clone(),
            dir: Some(spec.dir.clone()),
            digest: spec.digest.clone(),
            instructions: spec.instructions.clone(),
            provider,
            max_attempts: m.max_attempts,
            max_backoff: m.max_backoff,
            reply_limits: spec.reply_limits,
            durability: spec.durability,
            tools,
            limits: spec.limits,
            workspace: spec.workspace.path.clone(),
            isolate_workspace: spec.workspace.isolate,
        })
    }
}

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

/// The stricter of two optional limits.
fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
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

/// The agent's policies, loaded and checked (examples included), without building its provider.
pub fn load_gate(spec: &AgentSpec, mcp: &McpSet) -> Result<Gate, EngineError> {
    let setup = build_tools(spec, mcp)?.setup;
    Gate::load_dir(&spec.dir, &setup).map_err(EngineError::Policy)
}
