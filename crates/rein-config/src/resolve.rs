//! From the raw file to an [`AgentSpec`]: cross-field checks, file references, defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rein_core::{Durability, Limits};
use sha2::{Digest, Sha256};

use crate::raw::{
    AgentFile, BudgetPeriodName, BudgetScopeName, DurabilityName, OnDeniedName, OnTimeoutName,
    ProviderName, RiskName, SandboxFallbackName,
};
use crate::{
    AGENT_FILE, AgentSpec, ConfigError, ContextSpec, GatewaySpec, KeySource, McpServerSpec,
    ModelSpec, OnDenied, ProviderSpec, Resilience, SandboxFallback, ToolConfig, ToolEntrySpec,
    WorkspaceSpec,
};

mod guard;
mod tools;

const DEFAULT_MODEL_TIMEOUT_MS: u64 = 120_000;
const DEFAULT_TOOL_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
const DEFAULT_HTTP_MAX_BYTES: usize = 64 * 1024;
const BUILTINS: [&str; 5] = [
    "fs.read",
    "fs.write",
    "http.get",
    "memory.read",
    "memory.write",
];
/// Names of the policy actions that are not tools.
const RESERVED: [&str; 3] = ["call_tool", "use_model", "delegate"];

/// Reads and checks agent.toml in `dir`.
pub fn load(dir: &Path) -> Result<AgentSpec, ConfigError> {
    let dir = dir.canonicalize().map_err(|e| ConfigError {
        file: dir.to_owned(),
        position: None,
        field: None,
        message: format!("cannot open the agent folder: {e}"),
    })?;
    let file = dir.join(AGENT_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| ConfigError {
        file: file.clone(),
        position: None,
        field: None,
        message: format!("cannot read it ({e}); an agent folder holds an {AGENT_FILE}"),
    })?;
    let raw: AgentFile = toml::from_str(&text).map_err(|e| ConfigError {
        file: file.clone(),
        position: e.span().map(|s| rein_core::text::line_col(&text, s.start)),
        field: None,
        message: e.message().trim().to_owned(),
    })?;
    Resolver {
        secrets: BTreeSet::new(),
        dir,
        file,
        text: text.clone(),
        digest: Sha256::new(),
    }
    .resolve(raw)
}

struct Resolver {
    secrets: BTreeSet<String>,
    dir: PathBuf,
    file: PathBuf,
    text: String,
    digest: Sha256,
}

impl Resolver {
    fn err(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            position: span.map(|s| rein_core::text::line_col(&self.text, s.start)),
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// Reads a file the agent refers to, adding it to the digest.
    fn read_ref(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        relative: &str,
    ) -> Result<(PathBuf, String), ConfigError> {
        let path = self.dir.join(relative);
        let content = std::fs::read_to_string(&path).map_err(|e| {
            self.err(
                span,
                field,
                format!(
                    "cannot read `{relative}` ({e}); paths are relative to the agent folder {}",
                    self.dir.display()
                ),
            )
        })?;
        self.digest.update(relative.as_bytes());
        self.digest.update(content.as_bytes());
        Ok((path, content))
    }

    fn resolve(mut self, mut raw: AgentFile) -> Result<AgentSpec, ConfigError> {
        self.digest.update(self.text.as_bytes());
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        check_name(&name).map_err(|m| self.err(Some(name_span), "name", m))?;

        let instructions = match (raw.instructions, raw.instructions_file) {
            (Some(text), None) => text,
            (None, Some(file)) => {
                let span = file.span();
                self.read_ref(Some(span), "instructions_file", file.get_ref())?
                    .1
            }
            (Some(_), Some(file)) => {
                return Err(self.err(
                    Some(file.span()),
                    "instructions_file",
                    "give `instructions` or `instructions_file`, not both",
                ));
            }
            // A gateway's clients bring their own system prompt.
            (None, None) if raw.gateway.is_some() => String::new(),
            (None, None) => {
                return Err(self.err(
                    None,
                    "instructions",
                    "missing: give `instructions` or `instructions_file`",
                ));
            }
        };
        let gateway = raw.gateway.take().map(|g| GatewaySpec {
            on_denied: match g.on_denied {
                None | Some(OnDeniedName::Remove) => OnDenied::Remove,
                Some(OnDeniedName::Error) => OnDenied::Error,
            },
        });

        if raw.model.id.is_some() {
            return Err(self.err(
                None,
                "model.id",
                "`[model]` is `primary`; ids are for `[[models]]` entries",
            ));
        }
        let fallbacks = raw.model.fallbacks.clone().unwrap_or_default();
        let model = self.model(raw.model)?;
        let mut models = Vec::with_capacity(raw.models.len());
        for (i, m) in raw.models.into_iter().enumerate() {
            if m.fallbacks.is_some() {
                return Err(self.err(
                    None,
                    format!("models[{i}].fallbacks"),
                    "only `[model]` has fallbacks",
                ));
            }
            let Some(id) = m.id.clone() else {
                return Err(self.err(None, format!("models[{i}].id"), "every `[[models]]` entry needs an `id` (used by `model.fallbacks` and `[routing]`)"));
            };
            if id == "primary" || models.iter().any(|x: &ModelSpec| x.id == id) {
                return Err(self.err(
                    None,
                    format!("models[{i}].id"),
                    format!("`{id}` is used twice (`primary` is `[model]`)"),
                ));
            }
            models.push(self.model(m)?);
        }
        let known_ids: Vec<String> = std::iter::once("primary".to_owned())
            .chain(models.iter().map(|m| m.id.clone()))
            .collect();
        let known = |id: &str| known_ids.iter().any(|k| k == id);
        if let Some(bad) = fallbacks.iter().find(|f| !known(f)) {
            return Err(self.err(
                None,
                "model.fallbacks",
                format!("`{bad}` is not the id of a `[[models]]` entry"),
            ));
        }
        let routing = raw.routing.unwrap_or_default();
        for (field, id) in [
            ("routing.tool_results", &routing.tool_results),
            ("routing.wrap_up", &routing.wrap_up),
        ] {
            if let Some(id) = id.as_ref().filter(|id| !known(id)) {
                return Err(self.err(
                    None,
                    field,
                    format!("`{id}` is not `primary` or the id of a `[[models]]` entry"),
                ));
            }
        }
        let usd = |field: &str, v: Option<f64>| -> Result<Option<u64>, ConfigError> {
            match v {
                Some(v) if !(v.is_finite() && v >= 0.0) => {
                    Err(self.err(None, field, "must be a non-negative amount of US dollars"))
                }
                Some(v) => Ok(Some((v * 1e6).round() as u64)),
                None => Ok(None),
            }
        };
        let mut budgets = Vec::new();
        let run_budget = raw.budget.unwrap_or_default();
        if run_budget.tokens.is_some() || run_budget.cost_usd.is_some() {
            budgets.push(rein_core::budget::Limit {
                scope: rein_core::budget::Scope::Run,
                period: rein_core::budget::Period::Run,
                tokens: run_budget.tokens,
                cost_micros: usd("budget.cost_usd", run_budget.cost_usd)?,
                warn_percent: run_budget.warn_at_percent.unwrap_or(80),
            });
        }
        for (i, b) in raw.budgets.iter().enumerate() {
            if b.tokens.is_none() && b.cost_usd.is_none() {
                return Err(self.err(
                    None,
                    format!("budgets[{i}]"),
                    "give `tokens`, `cost_usd` or both",
                ));
            }
            budgets.push(rein_core::budget::Limit {
                scope: match b.scope {
                    BudgetScopeName::Agent => rein_core::budget::Scope::Agent,
                    BudgetScopeName::User => rein_core::budget::Scope::User,
                    BudgetScopeName::Tenant => rein_core::budget::Scope::Tenant,
                    BudgetScopeName::Token => rein_core::budget::Scope::Token,
                },
                period: match b.period {
                    BudgetPeriodName::Day => rein_core::budget::Period::Day,
                    BudgetPeriodName::Month => rein_core::budget::Period::Month,
                },
                tokens: b.tokens,
                cost_micros: usd(&format!("budgets[{i}].cost_usd"), b.cost_usd)?,
                warn_percent: b.warn_at_percent.unwrap_or(80),
            });
        }
        let mut prices = BTreeMap::new();
        for (name, p) in &raw.prices {
            if !(p.input.is_finite() && p.input >= 0.0 && p.output.is_finite() && p.output >= 0.0) {
                return Err(self.err(
                    None,
                    format!("prices.{name}"),
                    "prices must be non-negative US dollars per million tokens",
                ));
            }
            prices.insert(
                name.clone(),
                rein_core::budget::Price {
                    input: p.input,
                    output: p.output,
                },
            );
        }
        let context_raw = raw.context.unwrap_or_default();
        let context = ContextSpec {
            max_tokens: context_raw.max_tokens,
            keep_recent: context_raw.keep_recent.unwrap_or(4),
            pinned: context_raw.pinned.unwrap_or_default(),
        };
        let latency = raw.latency.unwrap_or_default();
        let mut tools = Vec::with_capacity(raw.tools.len());
        let mut seen = BTreeSet::new();
        for (i, entry) in raw.tools.into_iter().enumerate() {
            let span = entry.span();
            let entry = entry.into_inner();
            let (labels, sink, risk, groups) = (
                entry.labels.clone(),
                entry.sink,
                entry.risk,
                entry.groups.clone(),
            );
            let sensitive = entry.sensitive.clone().unwrap_or_default();
            let (field_labels, data) = (entry.field_labels.clone(), entry.data.clone());
            let defaults = Resilience::default();
            let resilience = Resilience {
                max_attempts: entry.max_attempts.unwrap_or(1).max(1),
                backoff: entry
                    .retry_backoff_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.backoff),
                breaker_failures: entry
                    .breaker_failures
                    .unwrap_or(defaults.breaker_failures)
                    .max(1),
                breaker_cooldown: entry
                    .breaker_cooldown_ms
                    .map(Duration::from_millis)
                    .unwrap_or(defaults.breaker_cooldown),
                timeout_is_failure: entry.on_timeout == Some(OnTimeoutName::Failed),
            };
            if resilience.max_attempts > 1 && entry.idempotent != Some(true) {
                return Err(self.err(Some(span.clone()), format!("tools[{i}].max_attempts"), "only an idempotent tool may be tried more than once: set `idempotent = true` if repeating it is harmless"));
            }
            let tool = self.tool(i, span.clone(), entry)?;
            let is_http = matches!(tool, ToolConfig::HttpGet { .. });
            // Memory holds what the model wrote, which may have come from anywhere.
            let untrusted_by_default = is_http || matches!(tool, ToolConfig::MemoryRead);
            let labels = labels.unwrap_or_else(|| {
                if untrusted_by_default {
                    vec![rein_core::labels::UNTRUSTED.to_owned()]
                } else {
                    vec![]
                }
            });
            for (field, names) in [
                ("labels", &labels),
                ("groups", groups.as_ref().unwrap_or(&vec![])),
            ] {
                if let Some(bad) = names.iter().find(|n| check_name(n).is_err()) {
                    return Err(self.err(
                        Some(span.clone()),
                        format!("tools[{i}].{field}"),
                        format!(
                            "`{bad}` is not a valid name: use letters, digits, `.`, `_` or `-`"
                        ),
                    ));
                }
            }
            let risk = risk.map(risk_name).unwrap_or("medium");
            let field_labels = self.field_labels(
                Some(span.clone()),
                &format!("tools[{i}].field_labels"),
                field_labels,
            )?;
            let data = self.data_feed(
                Some(span.clone()),
                &format!("tools[{i}].data"),
                data,
                &labels,
            )?;
            let tool = ToolEntrySpec {
                tool,
                labels,
                sink: sink.unwrap_or(is_http),
                risk: risk.into(),
                groups: groups.unwrap_or_default(),
                sensitive,
                resilience,
                field_labels,
                data,
            };
            if !seen.insert(tool.name().to_owned()) {
                return Err(self.err(
                    Some(span),
                    format!("tools[{i}]"),
                    format!("tool `{}` is declared twice", tool.name()),
                ));
            }
            tools.push(tool);
        }

        let defaults = Limits::default();
        let limits_raw = raw.limits.unwrap_or_default();
        let limits = Limits {
            max_steps: limits_raw.max_steps.unwrap_or(defaults.max_steps),
            wall_clock_ms: limits_raw
                .wall_clock_secs
                .map(|s| s.saturating_mul(1000))
                .unwrap_or(defaults.wall_clock_ms),
        };
        if limits.max_steps == 0 {
            return Err(self.err(None, "limits.max_steps", "must be at least 1"));
        }
        if limits.wall_clock_ms == 0 {
            return Err(self.err(None, "limits.wall_clock_secs", "must be at least 1"));
        }
        let reply_defaults = rein_core::reply::ReplyLimits::default();
        let reply_limits = rein_core::reply::ReplyLimits {
            max_calls: limits_raw
                .max_calls_per_step
                .map_or(reply_defaults.max_calls, |n| n as usize),
            max_args_bytes: limits_raw
                .max_call_args_bytes
                .map_or(reply_defaults.max_args_bytes, |n| n as usize),
        };
        if reply_limits.max_calls == 0 {
            return Err(self.err(None, "limits.max_calls_per_step", "must be at least 1"));
        }
        if reply_limits.max_calls > rein_core::reply::MAX_RECORDED_CALLS {
            return Err(self.err(
                None,
                "limits.max_calls_per_step",
                format!("must be at most {}", rein_core::reply::MAX_RECORDED_CALLS),
            ));
        }

        let ws = raw.workspace.unwrap_or_default();
        // A gateway's tools run at its clients: it needs no workspace of its own.
        let ws_rel = ws
            .path
            .unwrap_or_else(|| if gateway.is_some() { "." } else { "workspace" }.into());
        let ws_path = self.dir.join(&ws_rel);
        if !ws_path.is_dir() {
            return Err(self.err(
                None,
                "workspace.path",
                format!("`{ws_rel}` is not a folder inside {}; create it or point `workspace.path` at one", self.dir.display()),
            ));
        }
        let mut mcp = Vec::with_capacity(raw.mcp.len());
        for (i, server) in raw.mcp.into_iter().enumerate() {
            let span = server.span();
            let server = self.mcp_server(i, span.clone(), server.into_inner(), &ws_path)?;
            if mcp.iter().any(|s: &McpServerSpec| s.name == server.name) {
                return Err(self.err(
                    Some(span),
                    format!("mcp[{i}].name"),
                    format!("MCP server `{}` is declared twice", server.name),
                ));
            }
            mcp.push(server);
        }
        let durability = match raw.durability {
            None | Some(DurabilityName::Normal) => Durability::Normal,
            Some(DurabilityName::Fsync) => Durability::Fsync,
        };
        let approval_ttl = Duration::from_secs(
            raw.approvals
                .and_then(|a| a.expire_after_secs)
                .unwrap_or(86_400)
                .max(1),
        );
        let data = self.data_files(raw.data)?;
        let planner = self.planner(raw.grants, &known_ids)?;
        let answer = self.answer(raw.answer)?;
        let sandbox_fallback = match raw.sandbox.and_then(|s| s.if_unavailable) {
            None | Some(SandboxFallbackName::Refuse) => SandboxFallback::Refuse,
            Some(SandboxFallbackName::Continue) => SandboxFallback::Continue,
        };
        let digest = hex::encode(self.digest.finalize());
        Ok(AgentSpec {
            name,
            description: raw.description,
            dir: self.dir,
            instructions,
            default_task: raw.default_task,
            model,
            tools,
            limits,
            workspace: WorkspaceSpec {
                path: ws_path,
                isolate: ws.isolate.unwrap_or(false),
            },
            durability,
            approval_ttl,
            mcp,
            models,
            fallbacks,
            route_tool_results: routing.tool_results,
            route_wrap_up: routing.wrap_up,
            budgets,
            max_tool_calls: run_budget.tool_calls,
            prices,
            context,
            model_latency_target: latency.model_call_ms.map(Duration::from_millis),
            tool_latency_target: latency.tool_call_ms.map(Duration::from_millis),
            reply_limits,
            secrets: self.secrets.iter().cloned().collect(),
            data,
            planner,
            answer,
            sandbox_fallback,
            gateway,
            digest,
        })
    }

    fn model(&mut self, m: crate::raw::ModelSection) -> Result<ModelSpec, ConfigError> {
        let only = |this: &Self, present: bool, field: &str, provider: &str| {
            if present {
                Err(this.err(
                    None,
                    format!("model.{field}"),
                    format!("does not apply to provider `{provider}`"),
                ))
            } else {
                Ok(())
            }
        };
        let api_key_env = match m.api_key_env {
            Some(var) => {
                let span = var.span();
                let var = var.into_inner();
                if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(self.err(
                        Some(span),
                        "model.api_key_env",
                        "must name an environment variable (letters, digits, `_`), never hold the key itself",
                    ));
                }
                Some(var)
            }
            None => None,
        };
        let api_key_secret = match m.api_key {
            Some(value) => {
                let span = value.span();
                match rein_core::secrets::secret_ref(value.get_ref()) {
                    Some(name) if rein_core::secrets::valid_secret_name(name) => {
                        Some(name.to_owned())
                    }
                    _ => {
                        return Err(self.err(
                            Some(span),
                            "model.api_key",
                            "must be a secret reference, `secret:NAME`; never put the key itself in agent.toml",
                        ));
                    }
                }
            }
            None => None,
        };
        let api_key = match (api_key_env, api_key_secret) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    None,
                    "model.api_key",
                    "give `api_key_env` or `api_key`, not both",
                ));
            }
            (Some(var), None) => Some(KeySource::Env(var)),
            (None, Some(name)) => {
                self.secrets.insert(name.clone());
                Some(KeySource::Secret(name))
            }
            (None, None) => None,
        };
        let provider = match m.provider {
            ProviderName::Scripted => {
                only(self, m.base_url.is_some(), "base_url", "scripted")?;
                only(self, api_key.is_some(), "api_key_env", "scripted")?;
                let script = m.script.ok_or_else(|| {
                    self.err(
                        None,
                        "model.script",
                        "the scripted provider needs a script file: add `script = \"script.toml\"`",
                    )
                })?;
                let span = script.span();
                let (path, _) = self.read_ref(Some(span), "model.script", script.get_ref())?;
                ProviderSpec::Scripted { script: path }
            }
            ProviderName::Openai => {
                only(self, m.script.is_some(), "script", "openai")?;
                ProviderSpec::OpenAi {
                    base_url: m
                        .base_url
                        .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                    api_key,
                }
            }
            ProviderName::Anthropic => {
                only(self, m.script.is_some(), "script", "anthropic")?;
                ProviderSpec::Anthropic {
                    base_url: m
                        .base_url
                        .unwrap_or_else(|| "https://api.anthropic.com".into()),
                    api_key,
                }
            }
        };
        if m.name.trim().is_empty() {
            return Err(self.err(None, "model.name", "must not be empty"));
        }
        let max_attempts = m.max_attempts.unwrap_or(3);
        if max_attempts == 0 {
            return Err(self.err(None, "model.max_attempts", "must be at least 1"));
        }
        Ok(ModelSpec {
            id: m.id.unwrap_or_else(|| "primary".into()),
            provider,
            name: m.name,
            timeout: Duration::from_millis(m.timeout_ms.unwrap_or(DEFAULT_MODEL_TIMEOUT_MS).max(1)),
            temperature: m.temperature,
            max_tokens: m.max_tokens,
            max_attempts,
            max_backoff: Duration::from_millis(m.max_backoff_ms.unwrap_or(30_000)),
        })
    }

    /// Records the secrets that values in `map` refer to (`secret:NAME`).
    fn note_secrets(
        &mut self,
        span: Option<Range<usize>>,
        field: &str,
        map: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        for (key, value) in map {
            if let Some(name) = rein_core::secrets::secret_ref(value) {
                if !rein_core::secrets::valid_secret_name(name) {
                    return Err(self.err(
                        span,
                        field,
                        format!("`{key}` names secret `{name}`, which is not a valid secret name"),
                    ));
                }
                self.secrets.insert(name.to_owned());
            }
        }
        Ok(())
    }
}

fn risk_name(risk: RiskName) -> &'static str {
    match risk {
        RiskName::Low => "low",
        RiskName::Medium => "medium",
        RiskName::High => "high",
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{name}` is not a valid name: use 1 to 64 letters, digits, `.`, `_` or `-`"
        ));
    }
    Ok(())
}
