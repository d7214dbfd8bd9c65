//! Tools and MCP servers, resolved: what each is, what its output is labelled, which policy
//! data it feeds, and for a command tool what its sandbox lets it reach.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;

use super::{
    BUILTINS, DEFAULT_HTTP_MAX_BYTES, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TOOL_TIMEOUT_MS, RESERVED,
    Resolver, check_name, risk_name,
};
use crate::raw::{McpServerEntry, OnTimeoutName, ToolEntry};
use crate::{
    AGENT_FILE, ConfigError, McpServerSpec, McpToolPolicy, McpTransportSpec, SandboxSpec,
    ToolConfig,
};

impl Resolver {
    pub(super) fn mcp_server(
        &mut self,
        i: usize,
        span: Range<usize>,
        m: McpServerEntry,
        workspace: &Path,
    ) -> Result<McpServerSpec, ConfigError> {
        let at = |field: &str| format!("mcp[{i}].{field}");
        let sp = Some(span.clone());
        check_name(&m.name).map_err(|e| self.err(sp.clone(), at("name"), e))?;
        if m.name.contains('.') {
            return Err(self.err(
                sp,
                at("name"),
                format!(
                    "`{}` contains `.`, which separates the server from its tools in `server.tool`",
                    m.name
                ),
            ));
        }
        let transport = match (m.command, m.url) {
            (Some(command), None) => {
                if m.headers.is_some() {
                    return Err(self.err(
                        sp,
                        at("headers"),
                        "`headers` are for `url` servers; a `command` server takes `env`",
                    ));
                }
                let (program, args) = match command.split_first() {
                    Some((p, rest)) if !p.trim().is_empty() => (p.clone(), rest.to_vec()),
                    _ => return Err(self.err(sp, at("command"), "must name a program, for example `command = [\"npx\", \"-y\", \"@modelcontextprotocol/server-filesystem\", \"{workspace}\"]`")),
                };
                let program = if program.contains('/') && !Path::new(&program).is_absolute() {
                    let path = self.dir.join(&program);
                    if !path.is_file() {
                        return Err(self.err(sp, at("command"), format!("`{program}` does not exist; program paths are relative to the agent folder")));
                    }
                    path
                } else {
                    PathBuf::from(program)
                };
                let ws = workspace.display().to_string();
                let args = args
                    .into_iter()
                    .map(|a| {
                        let candidate = self.dir.join(&a);
                        if a.contains('/') && !Path::new(&a).is_absolute() && candidate.is_file() {
                            candidate.display().to_string()
                        } else {
                            a.replace("{workspace}", &ws)
                        }
                    })
                    .collect();
                let env = m.env.unwrap_or_default();
                self.note_secrets(sp.clone(), &at("env"), &env)?;
                McpTransportSpec::Stdio { program, args, env }
            }
            (None, Some(url)) => {
                if m.env.is_some() {
                    return Err(self.err(
                        sp,
                        at("env"),
                        "`env` is for `command` servers; a `url` server takes `headers`",
                    ));
                }
                match url::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => {
                        return Err(self.err(
                            sp,
                            at("url"),
                            format!("`{url}` is not an http(s) URL"),
                        ));
                    }
                }
                let headers = m.headers.unwrap_or_default();
                self.note_secrets(sp.clone(), &at("headers"), &headers)?;
                McpTransportSpec::Http { url, headers }
            }
            (Some(_), Some(_)) => {
                return Err(self.err(
                    sp,
                    at("url"),
                    "give `command` (stdio) or `url` (Streamable HTTP), not both",
                ));
            }
            (None, None) => {
                return Err(self.err(
                    sp,
                    at("command"),
                    "an MCP server needs `command` (stdio) or `url` (Streamable HTTP)",
                ));
            }
        };
        let mut tools = BTreeMap::new();
        for (tool, entry) in m.tools.unwrap_or_default() {
            let field = at(&format!("tools.{tool}"));
            for (what, names) in [
                ("labels", entry.labels.as_ref()),
                ("groups", entry.groups.as_ref()),
            ] {
                if let Some(bad) = names.into_iter().flatten().find(|n| check_name(n).is_err()) {
                    return Err(self.err(
                        sp.clone(),
                        format!("{field}.{what}"),
                        format!(
                            "`{bad}` is not a valid name: use letters, digits, `.`, `_` or `-`"
                        ),
                    ));
                }
            }
            let defaults = McpToolPolicy::default();
            let labels = entry.labels.unwrap_or(defaults.labels);
            tools.insert(
                tool,
                McpToolPolicy {
                    description: entry.description,
                    labels: labels.clone(),
                    sink: entry.sink.unwrap_or(defaults.sink),
                    risk: entry
                        .risk
                        .map(risk_name)
                        .unwrap_or(&defaults.risk)
                        .to_owned(),
                    groups: entry.groups.unwrap_or_default(),
                    idempotent: entry.idempotent.unwrap_or(false),
                    timeout_is_failure: entry.on_timeout == Some(OnTimeoutName::Failed),
                    sensitive: entry.sensitive.unwrap_or_default(),
                    field_labels: self.field_labels(
                        sp.clone(),
                        &format!("{field}.field_labels"),
                        entry.field_labels,
                    )?,
                    data: self.data_feed(
                        sp.clone(),
                        &format!("{field}.data"),
                        entry.data,
                        &labels,
                    )?,
                    enabled: entry.enabled.unwrap_or(true),
                    declared: true,
                },
            );
        }
        Ok(McpServerSpec {
            name: m.name,
            transport,
            timeout: Duration::from_millis(m.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS).max(1)),
            startup_timeout: Duration::from_millis(m.startup_timeout_ms.unwrap_or(20_000).max(1)),
            max_output_bytes: m
                .max_output_bytes
                .unwrap_or(DEFAULT_HTTP_MAX_BYTES)
                .max(256),
            tools,
            line: rein_core::text::line_col(&self.text, span.start).0,
        })
    }

    pub(super) fn tool(
        &mut self,
        i: usize,
        span: Range<usize>,
        t: ToolEntry,
    ) -> Result<ToolConfig, ConfigError> {
        let at = |field: &str| format!("tools[{i}].{field}");
        let sp = Some(span);
        let timeout = Duration::from_millis(t.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS).max(1));
        let not_for = |this: &Self, present: bool, field: &str, what: &str| {
            if present {
                Err(this.err(sp.clone(), at(field), format!("does not apply to {what}")))
            } else {
                Ok(())
            }
        };
        if let Some(delegate) = t.delegate {
            let what = "delegate tools";
            for (present, field) in [
                (t.builtin.is_some(), "builtin"),
                (t.command.is_some(), "command"),
                (t.args_schema.is_some(), "args_schema"),
                (t.args_schema_file.is_some(), "args_schema_file"),
                (t.env.is_some(), "env"),
                (t.allow_hosts.is_some(), "allow_hosts"),
                (t.max_bytes.is_some(), "max_bytes"),
                (t.max_output_bytes.is_some(), "max_output_bytes"),
                (t.read_paths.is_some(), "read_paths"),
                (t.write_paths.is_some(), "write_paths"),
            ] {
                not_for(self, present, field, what)?;
            }
            let name = t.name.ok_or_else(|| {
                self.err(sp.clone(), at("name"), "a delegate tool needs a `name`")
            })?;
            check_name(&name).map_err(|m| self.err(sp.clone(), at("name"), m))?;
            let description = t.description.ok_or_else(|| {
                self.err(
                    sp.clone(),
                    at("description"),
                    "a delegate tool needs a `description` for the model",
                )
            })?;
            let agent_dir = self.dir.join(&delegate);
            if !agent_dir.join(AGENT_FILE).is_file() {
                return Err(self.err(sp, at("delegate"), format!("`{delegate}` is not an agent folder (it has no {AGENT_FILE}); paths are relative to this agent's folder")));
            }
            let agent_dir = agent_dir.canonicalize().map_err(|e| {
                self.err(
                    sp.clone(),
                    at("delegate"),
                    format!("cannot open `{delegate}`: {e}"),
                )
            })?;
            if agent_dir == self.dir {
                return Err(self.err(sp, at("delegate"), "an agent cannot delegate to itself"));
            }
            return Ok(ToolConfig::Delegate {
                name,
                description,
                agent_dir,
            });
        }
        if t.client == Some(true) {
            return self.client_tool(i, sp, t);
        }
        match (t.builtin, t.command) {
            (Some(_), Some(_)) => Err(self.err(
                sp,
                at("command"),
                "a tool is either `builtin` or `command`, not both",
            )),
            (None, None) => Err(self.err(
                sp,
                format!("tools[{i}]"),
                "needs `builtin = \"fs.read\"` (or fs.write, http.get), a `command`, or a `delegate` folder",
            )),
            (Some(builtin), None) => {
                let what = format!("builtin `{builtin}`");
                for (present, field) in [
                    (t.name.is_some(), "name"),
                    (t.description.is_some(), "description"),
                    (t.args_schema.is_some(), "args_schema"),
                    (t.args_schema_file.is_some(), "args_schema_file"),
                    (t.idempotent.is_some(), "idempotent"),
                    (t.max_output_bytes.is_some(), "max_output_bytes"),
                    (t.env.is_some(), "env"),
                    (t.read_paths.is_some(), "read_paths"),
                    (t.write_paths.is_some(), "write_paths"),
                ] {
                    not_for(self, present, field, &what)?;
                }
                if builtin != "http.get" {
                    not_for(self, t.allow_hosts.is_some(), "allow_hosts", &what)?;
                    not_for(self, t.max_bytes.is_some(), "max_bytes", &what)?;
                }
                match builtin.as_str() {
                    "fs.read" => Ok(ToolConfig::FsRead),
                    "fs.write" => Ok(ToolConfig::FsWrite),
                    "memory.read" => Ok(ToolConfig::MemoryRead),
                    "memory.write" => Ok(ToolConfig::MemoryWrite),
                    "http.get" => {
                        let allow_hosts = t.allow_hosts.unwrap_or_default();
                        if allow_hosts.is_empty() || allow_hosts.iter().any(|h| h.trim().is_empty())
                        {
                            return Err(self.err(sp, at("allow_hosts"), "http.get needs a list of allowed hosts, for example `allow_hosts = [\"api.example.com\"]`"));
                        }
                        Ok(ToolConfig::HttpGet {
                            allow_hosts,
                            max_bytes: t.max_bytes.unwrap_or(DEFAULT_HTTP_MAX_BYTES),
                            timeout,
                        })
                    }
                    other => Err(self.err(
                        sp,
                        at("builtin"),
                        format!(
                            "unknown built-in `{other}`; the built-ins are {}",
                            BUILTINS.join(", ")
                        ),
                    )),
                }
            }
            (None, Some(command)) => {
                let what = "command tools";
                not_for(self, t.max_bytes.is_some(), "max_bytes", what)?;
                let name = t.name.ok_or_else(|| {
                    self.err(sp.clone(), at("name"), "a command tool needs a `name`")
                })?;
                check_name(&name).map_err(|m| self.err(sp.clone(), at("name"), m))?;
                if RESERVED.contains(&name.as_str()) {
                    return Err(self.err(
                        sp,
                        at("name"),
                        format!(
                            "`{name}` is the name of a policy action; choose another tool name"
                        ),
                    ));
                }
                if BUILTINS.contains(&name.as_str()) {
                    return Err(self.err(sp, at("name"), format!("`{name}` is a built-in's name; use `builtin = \"{name}\"` or another name")));
                }
                let description = t.description.ok_or_else(|| {
                    self.err(
                        sp.clone(),
                        at("description"),
                        "a command tool needs a `description` for the model",
                    )
                })?;
                let (program, args) = match command.split_first() {
                    Some((p, rest)) if !p.trim().is_empty() => (p.clone(), rest.to_vec()),
                    _ => return Err(self.err(sp, at("command"), "must name a program, for example `command = [\"python3\", \"tools/refund.py\"]`")),
                };
                let program = if program.contains('/') {
                    let path = self.dir.join(&program);
                    if !path.is_file() {
                        return Err(self.err(sp, at("command"), format!("`{program}` does not exist; program paths are relative to the agent folder")));
                    }
                    path
                } else {
                    PathBuf::from(program)
                };
                // Tools run in the workspace, so an argument naming a file in the agent folder
                // (a script) is passed as an absolute path; its content is part of the agent.
                let mut args = args;
                for arg in &mut args {
                    let candidate = self.dir.join(&*arg);
                    if !Path::new(arg.as_str()).is_absolute()
                        && arg.contains('/')
                        && candidate.is_file()
                    {
                        if let Ok(content) = std::fs::read(&candidate) {
                            self.digest.update(&content);
                        }
                        *arg = candidate.display().to_string();
                    }
                }
                let args_schema = self.args_schema(
                    i,
                    &sp,
                    (t.args_schema, t.args_schema_file),
                    Err("a command tool needs the JSON Schema of its arguments (`args_schema` or `args_schema_file`)"),
                )?;
                let env = t.env.unwrap_or_default();
                self.note_secrets(sp.clone(), &at("env"), &env)?;
                let sandbox = Box::new(SandboxSpec {
                    allow_hosts: self.hosts(sp.clone(), &at("allow_hosts"), t.allow_hosts)?,
                    read_paths: self.paths(sp.clone(), &at("read_paths"), t.read_paths)?,
                    write_paths: self.paths(sp, &at("write_paths"), t.write_paths)?,
                });
                Ok(ToolConfig::Command {
                    name,
                    description,
                    program,
                    args,
                    env,
                    args_schema,
                    idempotent: t.idempotent.unwrap_or(false),
                    timeout,
                    max_output_bytes: t.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
                    sandbox,
                })
            }
        }
    }
}

impl Resolver {
    /// A tool's argument schema, given inline or as a file: an object schema. Without either,
    /// `otherwise`: a default schema, or the error to report.
    fn args_schema(
        &mut self,
        i: usize,
        sp: &Option<Range<usize>>,
        given: (Option<Value>, Option<String>),
        otherwise: Result<Value, &str>,
    ) -> Result<Value, ConfigError> {
        let at = |field: &str| format!("tools[{i}].{field}");
        let schema = match given {
            (Some(schema), None) => schema,
            (None, Some(file)) => {
                let field = at("args_schema_file");
                let (_, text) = self.read_ref(sp.clone(), &field, &file)?;
                serde_json::from_str::<Value>(&text).map_err(|e| {
                    self.err(sp.clone(), field, format!("`{file}` is not JSON: {e}"))
                })?
            }
            (Some(_), Some(_)) => {
                return Err(self.err(
                    sp.clone(),
                    at("args_schema_file"),
                    "give `args_schema` or `args_schema_file`, not both",
                ));
            }
            (None, None) => otherwise.map_err(|m| self.err(sp.clone(), at("args_schema"), m))?,
        };
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(self.err(
                sp.clone(),
                at("args_schema"),
                "must be an object schema (`type = \"object\"`)",
            ));
        }
        Ok(schema)
    }

    /// A tool the gateway's clients run: a name, and optionally a description and a schema.
    fn client_tool(
        &mut self,
        i: usize,
        sp: Option<Range<usize>>,
        t: ToolEntry,
    ) -> Result<ToolConfig, ConfigError> {
        let at = |field: &str| format!("tools[{i}].{field}");
        let what = "client tools (the client runs them, not rein)";
        for (present, field) in [
            (t.builtin.is_some(), "builtin"),
            (t.command.is_some(), "command"),
            (t.env.is_some(), "env"),
            (t.allow_hosts.is_some(), "allow_hosts"),
            (t.max_bytes.is_some(), "max_bytes"),
            (t.max_output_bytes.is_some(), "max_output_bytes"),
            (t.read_paths.is_some(), "read_paths"),
            (t.write_paths.is_some(), "write_paths"),
            (t.timeout_ms.is_some(), "timeout_ms"),
            (t.max_attempts.is_some(), "max_attempts"),
            (t.on_timeout.is_some(), "on_timeout"),
        ] {
            if present {
                return Err(self.err(sp, at(field), format!("does not apply to {what}")));
            }
        }
        let name = t
            .name
            .ok_or_else(|| self.err(sp.clone(), at("name"), "a client tool needs a `name`"))?;
        check_name(&name).map_err(|m| self.err(sp.clone(), at("name"), m))?;
        if RESERVED.contains(&name.as_str()) || BUILTINS.contains(&name.as_str()) {
            return Err(self.err(
                sp,
                at("name"),
                format!(
                    "`{name}` is reserved (a built-in or a policy action); choose another name"
                ),
            ));
        }
        let args_schema = self.args_schema(
            i,
            &sp,
            (t.args_schema, t.args_schema_file),
            Ok(serde_json::json!({"type": "object"})),
        )?;
        Ok(ToolConfig::Client {
            name,
            description: t.description.unwrap_or_default(),
            args_schema,
            idempotent: t.idempotent.unwrap_or(false),
        })
    }

    /// Hosts a command tool may reach: `host`, `host:port` or `*.domain`, or `*` for any.
    fn hosts(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        hosts: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        let hosts = hosts.unwrap_or_default();
        for h in &hosts {
            let ok = !h.is_empty()
                && h.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | ':' | '[' | ']')
                });
            if !ok {
                return Err(self.err(
                    span,
                    field,
                    format!("`{h}` is not a host: write `api.example.com`, `api.example.com:8443`, `*.example.com` or `*`"),
                ));
            }
        }
        Ok(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
    }

    /// Paths a sandboxed program may reach: relative to the agent folder, or absolute; they
    /// must exist.
    fn paths(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        paths: Option<Vec<String>>,
    ) -> Result<Vec<PathBuf>, ConfigError> {
        let mut out = Vec::new();
        for p in paths.unwrap_or_default() {
            let path = self.dir.join(&p);
            let path = path.canonicalize().map_err(|e| {
                self.err(
                    span.clone(),
                    field,
                    format!("`{p}` cannot be opened ({e}); paths are relative to the agent folder {} or absolute", self.dir.display()),
                )
            })?;
            out.push(path);
        }
        Ok(out)
    }

    /// Field label rules: JSON pointer patterns (`/items/*/memo`) to label names.
    pub(super) fn field_labels(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        rules: Option<BTreeMap<String, Vec<String>>>,
    ) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
        let rules = rules.unwrap_or_default();
        for (pointer, labels) in &rules {
            if !pointer.starts_with('/') {
                return Err(self.err(
                    span,
                    field,
                    format!("`{pointer}` is not a JSON pointer: start it with `/`, as in `/transactions/*/memo`"),
                ));
            }
            if let Some(bad) = labels.iter().find(|l| check_name(l).is_err()) {
                return Err(self.err(
                    span,
                    field,
                    format!("`{bad}` is not a valid label: use letters, digits, `.`, `_` or `-`"),
                ));
            }
        }
        Ok(rules)
    }

    /// The policy data set a tool's output feeds; a tool whose output is untrusted cannot say
    /// what is allowed.
    pub(super) fn data_feed(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        data: Option<String>,
        labels: &[String],
    ) -> Result<Option<String>, ConfigError> {
        let Some(name) = data else { return Ok(None) };
        check_name(&name).map_err(|m| self.err(span.clone(), field, m))?;
        if labels.iter().any(|l| l == rein_core::labels::UNTRUSTED) {
            return Err(self.err(
                span,
                field,
                format!("the output of a tool labelled `untrusted` cannot feed policy data `{name}`: an attacker could add to it; label the tool as trusted or drop `data`"),
            ));
        }
        Ok(Some(name))
    }
}
