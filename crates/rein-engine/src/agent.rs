//! An agent ready to run: its provider and tools built from a resolved [`AgentSpec`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rein_config::{AgentSpec, ProviderSpec, ToolConfig};
use rein_core::Limits;
use rein_model::{
    AnthropicConfig, AnthropicProvider, OpenAiConfig, OpenAiProvider, Provider, ScriptedProvider,
};
use rein_tools::{
    CommandSpec, CommandTool, FsRead, FsWrite, HttpGet, Tool, ToolManifest, ToolRegistry,
};

use crate::EngineError;

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
    /// Builds an agent from its resolved configuration. `env` looks up environment variables
    /// (the API key); it is a parameter so that nothing here reads the process environment.
    pub fn from_spec(
        spec: &AgentSpec,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Agent, EngineError> {
        let key = |var: &Option<String>| -> Result<Option<String>, EngineError> {
            match var {
                None => Ok(None),
                Some(var) => env(var).filter(|v| !v.is_empty()).map(Some).ok_or_else(|| {
                    EngineError::Agent(format!(
                        "{}: model.api_key_env names `{var}`, which is not set: export {var}=<your key>",
                        spec.dir.join(rein_config::AGENT_FILE).display()
                    ))
                }),
            }
        };
        let m = &spec.model;
        let provider: Arc<dyn Provider> = match &m.provider {
            ProviderSpec::Scripted { script } => Arc::new(
                ScriptedProvider::from_file(m.name.clone(), script)
                    .map_err(|e| EngineError::Agent(e.to_string()))?,
            ),
            ProviderSpec::OpenAi {
                base_url,
                api_key_env,
            } => Arc::new(
                OpenAiProvider::new(OpenAiConfig {
                    base_url: base_url.clone(),
                    api_key: key(api_key_env)?,
                    model: m.name.clone(),
                    timeout: m.timeout,
                    max_tokens: m.max_tokens,
                    temperature: m.temperature,
                })
                .map_err(EngineError::Agent)?,
            ),
            ProviderSpec::Anthropic {
                base_url,
                api_key_env,
            } => Arc::new(
                AnthropicProvider::new(AnthropicConfig {
                    base_url: base_url.clone(),
                    api_key: key(api_key_env)?,
                    model: m.name.clone(),
                    timeout: m.timeout,
                    max_tokens: m.max_tokens.unwrap_or(4096),
                    temperature: m.temperature,
                })
                .map_err(EngineError::Agent)?,
            ),
        };
        let mut tools = ToolRegistry::new();
        for config in &spec.tools {
            let tool: Arc<dyn Tool> = match config {
                ToolConfig::FsRead => Arc::new(FsRead::default()),
                ToolConfig::FsWrite => Arc::new(FsWrite::default()),
                ToolConfig::HttpGet {
                    allow_hosts,
                    max_bytes,
                    timeout,
                } => Arc::new(
                    HttpGet::new(allow_hosts.clone(), *max_bytes, *timeout)
                        .map_err(EngineError::Agent)?,
                ),
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
                    },
                )),
            };
            tools.register(tool).map_err(|e| {
                EngineError::Agent(format!(
                    "{}: {e}",
                    spec.dir.join(rein_config::AGENT_FILE).display()
                ))
            })?;
        }
        Ok(Agent {
            name: spec.name.clone(),
            dir: Some(spec.dir.clone()),
            digest: spec.digest.clone(),
            instructions: spec.instructions.clone(),
            provider,
            max_attempts: m.max_attempts,
            max_backoff: m.max_backoff,
            tools,
            limits: spec.limits,
            workspace: spec.workspace.path.clone(),
            isolate_workspace: spec.workspace.isolate,
        })
    }
}
