//! An agent ready to run: its provider and tools built from a resolved [`AgentSpec`] (the tools in
//! [`tools`]).

mod tools;

pub use tools::{AgentTools, build_tools};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::secrets::resolve_secrets;
use rein_config::{AgentSpec, KeySource, ProviderSpec};
use rein_core::Limits;
use rein_core::secrets::Redactor;
use rein_model::{
    AnthropicConfig, AnthropicProvider, OpenAiConfig, OpenAiProvider, Provider, ScriptedProvider,
};
use rein_policy::{Gate, ToolFacts};
use rein_tools::SecretSource;
use rein_tools::{Tool, ToolRegistry};

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
    /// Whether, as a gateway, it fails a request whose answer holds a call the policies deny
    /// (`on_denied = "error"`): the answer's calls are then all judged before any is handed over.
    pub fails_on_denied: bool,
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
            fails_on_denied: spec
                .gateway
                .is_some_and(|g| g.on_denied == rein_config::OnDenied::Error),
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

/// The agent's policies, loaded and checked (examples included), without building its provider.
pub fn load_gate(spec: &AgentSpec, mcp: &McpSet) -> Result<Gate, EngineError> {
    let setup = build_tools(spec, mcp)?.setup;
    Gate::load_dir(&spec.dir, &setup).map_err(EngineError::Policy)
}

/// The stricter of two optional limits.
fn min_limit(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
