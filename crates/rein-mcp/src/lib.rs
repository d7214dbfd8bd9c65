//! MCP servers as rein tools, through the official Rust SDK (`rmcp`).
//!
//! An [`McpServer`] is one configured server: a child process speaking MCP on stdio, or a
//! Streamable HTTP endpoint. [`McpServer::connect`] starts it and lists its tools; each tool
//! becomes an [`McpTool`], offered to the model as `server.tool` and called like any other tool
//! (after the registry's schema check and the gate's verdict).
//!
//! What the server says is untrusted. Risk, idempotence, labels, sink and sensitive fields come
//! from the operator's `[mcp.tools.<tool>]` entries, never from the server, and a tool without an
//! entry gets the most restrictive defaults. Each tool's definition (description and schema) is
//! fingerprinted when first listed; a later listing that differs (after a restart, or in the
//! pins file from an earlier process) is flagged, and the changed tool is refused until the
//! operator accepts the change.
//!
//! A stdio server that dies is restarted on the next call, with exponential backoff between
//! failed starts. Calls are bounded by a timeout (the request is cancelled), results are cut at
//! `max_output_bytes` with a marker, and protocol errors become tool errors; what happens is
//! reported as notices that the engine records in the run.

mod result;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rein_config::{McpServerSpec, McpToolPolicy, McpTransportSpec};
use rein_core::BoxFuture;
use rein_tools::{Notices, SecretSource, Tool, ToolContext, ToolError, ToolManifest};
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{Peer, RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use result::cut_result;

/// The longest description passed on to the model; a server's text is untrusted.
const MAX_DESCRIPTION_CHARS: usize = 1024;
/// How much of a stdio server's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 2048;
/// The first wait after a failed restart; it doubles up to [`MAX_RESTART_BACKOFF`].
const FIRST_RESTART_BACKOFF: Duration = Duration::from_millis(250);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// One tool as a server lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedTool {
    /// The server's name for it.
    pub remote: String,
    /// The server's description (untrusted).
    pub description: String,
    /// The JSON Schema of its arguments.
    pub schema: Value,
    /// SHA-256 over the description and schema.
    pub fingerprint: String,
}

/// Why a server could not be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("MCP server `{server}` (agent.toml line {line}): {message}")]
pub struct McpError {
    /// The server's name.
    pub server: String,
    /// Where agent.toml declares it.
    pub line: usize,
    /// What went wrong and what to do.
    pub message: String,
}

type Client = RunningService<RoleClient, ClientConfig>;

/// A live connection and what is known about its process.
struct Conn {
    client: Option<Client>,
    pid: Option<u32>,
    stderr: Arc<std::sync::Mutex<Vec<u8>>>,
    /// Failed starts in a row, and when the next start may be tried.
    failures: u32,
    retry_at: Option<Instant>,
}

/// A configured MCP server and its connection.
pub struct McpServer {
    spec: McpServerSpec,
    secrets: Arc<dyn SecretSource>,
    conn: tokio::sync::Mutex<Conn>,
    /// Fingerprints from the first listing (or the pins file), by the server's tool name.
    pinned: BTreeMap<String, String>,
    /// Tools whose definition differs from the pinned one; calls to them are refused.
    changed: std::sync::Mutex<BTreeSet<String>>,
    /// Starts so far (the first included).
    starts: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("name", &self.spec.name)
            .finish()
    }
}

/// What connecting found: the server, its tools, and anything to record.
#[derive(Debug)]
pub struct Connected {
    /// The server.
    pub server: Arc<McpServer>,
    /// Its tools as listed, in name order.
    pub tools: Vec<ListedTool>,
    /// What the run should record (`mcp_tool_changed`, skipped tools).
    pub notices: Vec<rein_tools::ToolNotice>,
}

impl McpServer {
    /// Starts the server, lists its tools and compares them with `pins` (fingerprints by
    /// `server.tool` from an earlier listing). A tool whose fingerprint differs is flagged and
    /// refused until the pins are updated.
    pub async fn connect(
        spec: &McpServerSpec,
        secrets: Arc<dyn SecretSource>,
        pins: &BTreeMap<String, String>,
    ) -> Result<Connected, McpError> {
        let error = |message: String| McpError {
            server: spec.name.clone(),
            line: spec.line,
            message,
        };
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (client, pid, listed) = start(spec, secrets.as_ref(), &stderr)
            .await
            .map_err(error)?;
        let mut notices = Vec::new();
        let mut pinned = BTreeMap::new();
        let mut changed = BTreeSet::new();
        for tool in &listed {
            let full = format!("{}.{}", spec.name, tool.remote);
            match pins.get(&full) {
                Some(old) if *old != tool.fingerprint => {
                    notices.push(changed_notice(&full));
                    changed.insert(tool.remote.clone());
                    pinned.insert(tool.remote.clone(), old.clone());
                }
                _ => {
                    pinned.insert(tool.remote.clone(), tool.fingerprint.clone());
                }
            }
        }
        let server = Arc::new(McpServer {
            spec: spec.clone(),
            secrets,
            conn: tokio::sync::Mutex::new(Conn {
                client: Some(client),
                pid,
                stderr,
                failures: 0,
                retry_at: None,
            }),
            pinned,
            changed: std::sync::Mutex::new(changed),
            starts: std::sync::atomic::AtomicU32::new(1),
        });
        Ok(Connected {
            server,
            tools: listed,
            notices,
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The configuration it was started from.
    pub fn spec(&self) -> &McpServerSpec {
        &self.spec
    }

    /// The process id of a stdio server, while it runs.
    pub async fn pid(&self) -> Option<u32> {
        self.conn.lock().await.pid
    }

    /// How many times the server has been started.
    pub fn starts(&self) -> u32 {
        self.starts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a tool's definition changed since it was pinned.
    pub fn is_changed(&self, remote: &str) -> bool {
        lock(&self.changed).contains(remote)
    }

    /// The pinned fingerprint of each tool, by `server.tool`, for the pins file.
    pub fn pins(&self) -> BTreeMap<String, String> {
        self.pinned
            .iter()
            .map(|(tool, print)| (format!("{}.{tool}", self.spec.name), print.clone()))
            .collect()
    }

    /// Stops the server (a stdio server's process group is killed).
    pub async fn shutdown(&self) {
        let mut conn = self.conn.lock().await;
        if let Some(mut client) = conn.client.take() {
            let _ = client.close().await;
        }
        conn.pid = None;
    }

    /// A peer to send a request to: the live connection, or a new one if the server died and
    /// its backoff has passed. What happens is reported in `notices`.
    async fn peer(&self, notices: &Notices) -> Result<Peer<RoleClient>, ToolError> {
        let mut conn = self.conn.lock().await;
        if let Some(client) = &conn.client {
            if !client.is_closed() {
                return Ok(client.peer().clone());
            }
            notices.push(
                "mcp_server_exited",
                &self.spec.name,
                format!(
                    "the server{} stopped{}; restarting it",
                    conn.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    stderr_tail(&conn.stderr)
                ),
            );
            conn.client = None;
            conn.pid = None;
        }
        self.restart(&mut conn, notices).await
    }

    async fn restart(
        &self,
        conn: &mut Conn,
        notices: &Notices,
    ) -> Result<Peer<RoleClient>, ToolError> {
        if let Some(at) = conn.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(ToolError::Failed(format!(
                    "MCP server `{}` is down; the next restart is tried in {} ms",
                    self.spec.name,
                    (at - now).as_millis()
                )));
            }
        }
        conn.stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        match start(&self.spec, self.secrets.as_ref(), &conn.stderr).await {
            Ok((client, pid, listed)) => {
                let starts = 1 + self
                    .starts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                notices.push(
                    "mcp_server_restarted",
                    &self.spec.name,
                    format!(
                        "started again{} (start {starts}) with {} tools",
                        pid.map(|p| format!(" as pid {p}")).unwrap_or_default(),
                        listed.len()
                    ),
                );
                for tool in &listed {
                    if self
                        .pinned
                        .get(&tool.remote)
                        .is_some_and(|p| *p != tool.fingerprint)
                        && lock(&self.changed).insert(tool.remote.clone())
                    {
                        let full = format!("{}.{}", self.spec.name, tool.remote);
                        let notice = changed_notice(&full);
                        notices.push(&notice.kind, &notice.subject, notice.detail);
                    }
                }
                let peer = client.peer().clone();
                conn.client = Some(client);
                conn.pid = pid;
                conn.failures = 0;
                conn.retry_at = None;
                Ok(peer)
            }
            Err(message) => {
                conn.failures += 1;
                let wait = FIRST_RESTART_BACKOFF
                    .saturating_mul(1 << conn.failures.saturating_sub(1).min(8))
                    .min(MAX_RESTART_BACKOFF);
                conn.retry_at = Some(Instant::now() + wait);
                notices.push(
                    "mcp_server_restart_failed",
                    &self.spec.name,
                    format!(
                        "{message}; failure {} in a row, next try in {} ms",
                        conn.failures,
                        wait.as_millis()
                    ),
                );
                Err(ToolError::Failed(format!(
                    "MCP server `{}` is down and could not be restarted: {message}",
                    self.spec.name
                )))
            }
        }
    }

    /// Marks the connection dead after a transport failure, so the next call restarts it.
    async fn forget(&self, notices: &Notices) {
        let mut conn = self.conn.lock().await;
        if let Some(mut client) = conn.client.take() {
            notices.push(
                "mcp_server_exited",
                &self.spec.name,
                format!(
                    "the connection to the server{} broke during a call{}",
                    conn.pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    stderr_tail(&conn.stderr)
                ),
            );
            conn.pid = None;
            let _ = client.close().await;
        }
    }

    async fn call(&self, remote: &str, args: Value, notices: &Notices) -> Result<Value, ToolError> {
        if self.is_changed(remote) {
            return Err(ToolError::Refused(format!(
                "the definition of `{}.{remote}` changed since it was first listed; an operator must review it and accept the change (`rein tools list <agent-dir> --accept-changes`)",
                self.spec.name
            )));
        }
        let peer = self.peer(notices).await?;
        let mut params = CallToolRequestParams::new(remote.to_owned());
        params.arguments = match args {
            Value::Object(map) => Some(map),
            _ => None,
        };
        // Dropping the request on timeout sends `notifications/cancelled` to the server.
        let answer = tokio::time::timeout(self.spec.timeout, peer.call_tool(params)).await;
        match answer {
            Err(_) => {
                notices.push(
                    "mcp_call_timed_out",
                    &format!("{}.{remote}", self.spec.name),
                    format!(
                        "no answer within {} ms; the request was cancelled",
                        self.spec.timeout.as_millis()
                    ),
                );
                Err(ToolError::Timeout(self.spec.timeout))
            }
            Ok(Ok(result)) => {
                let (value, cut) = cut_result(result, self.spec.max_output_bytes)?;
                if let Some(total) = cut {
                    notices.push(
                        "mcp_result_cut",
                        &format!("{}.{remote}", self.spec.name),
                        format!(
                            "the result was {total} bytes; the first {} were kept",
                            self.spec.max_output_bytes
                        ),
                    );
                }
                Ok(value)
            }
            Ok(Err(ServiceError::McpError(e))) => Err(ToolError::Failed(format!(
                "MCP error {}: {}",
                e.code.0, e.message
            ))),
            Ok(Err(e @ (ServiceError::TransportClosed | ServiceError::TransportSend(_)))) => {
                self.forget(notices).await;
                Err(ToolError::Interrupted(format!(
                    "the connection to MCP server `{}` broke during the call ({e}); whether the call took effect is unknown; the server is restarted on the next call",
                    self.spec.name
                )))
            }
            Ok(Err(ServiceError::UnexpectedResponse)) => Err(ToolError::BadOutput(
                "the server answered with something that is not a tool result".into(),
            )),
            Ok(Err(e)) => Err(ToolError::Failed(format!("MCP call failed: {e}"))),
        }
    }
}

fn changed_notice(full: &str) -> rein_tools::ToolNotice {
    rein_tools::ToolNotice {
        kind: "mcp_tool_changed".into(),
        subject: full.to_owned(),
        detail: "the server changed this tool's description or schema since it was first listed; calls to it are refused until an operator accepts the change".into(),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn stderr_tail(buffer: &std::sync::Mutex<Vec<u8>>) -> String {
    let bytes = lock(buffer);
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with: {}", text.replace('\n', " | "))
    }
}

/// Starts a server and lists its tools, within the startup timeout.
async fn start(
    spec: &McpServerSpec,
    secrets: &dyn SecretSource,
    stderr: &Arc<std::sync::Mutex<Vec<u8>>>,
) -> Result<(Client, Option<u32>, Vec<ListedTool>), String> {
    let config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("rein", env!("CARGO_PKG_VERSION")),
    );
    let resolve = |field: &str, map: &BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| match rein_core::secrets::secret_ref(v) {
                Some(name) => secrets
                    .secret(name)
                    .map(|value| (k.clone(), value))
                    .map_err(|e| format!("{field} `{k}`: {e}")),
                None => Ok((k.clone(), v.clone())),
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let starting = async {
        let (client, pid) = match &spec.transport {
            McpTransportSpec::Stdio { program, args, env } => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).env_clear();
                // A fixed environment, as for command tools: what the server needs to run.
                for var in ["PATH", "HOME", "LANG", "TMPDIR", "NODE_PATH", "SYSTEMROOT"] {
                    if let Some(value) = std::env::var_os(var) {
                        command.env(var, value);
                    }
                }
                command.envs(resolve("env", env)?);
                let mut wrapped = process_wrap::tokio::CommandWrap::from(command);
                wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
                wrapped.wrap(process_wrap::tokio::KillOnDrop);
                let (process, err) = TokioChildProcess::builder(wrapped)
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start `{}`: {e}", program.display()))?;
                let pid = process.id();
                if let Some(mut err) = err {
                    let buffer = stderr.clone();
                    tokio::spawn(async move {
                        let mut chunk = [0u8; 1024];
                        while let Ok(n) = err.read(&mut chunk).await {
                            if n == 0 {
                                break;
                            }
                            let mut b = lock(&buffer);
                            b.extend_from_slice(&chunk[..n]);
                            let excess = b.len().saturating_sub(STDERR_TAIL_BYTES);
                            b.drain(..excess);
                        }
                    });
                }
                let client = config
                    .serve(process)
                    .await
                    .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                (client, pid)
            }
            McpTransportSpec::Http { url, headers } => {
                // reqwest is built without a default TLS provider; rein uses ring.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut config_http = StreamableHttpClientTransportConfig::with_uri(url.as_str());
                for (name, value) in resolve("header", headers)? {
                    let header = reqwest::header::HeaderName::try_from(name.as_str())
                        .map_err(|e| format!("header `{name}`: {e}"))?;
                    let value = reqwest::header::HeaderValue::try_from(value)
                        .map_err(|e| format!("header `{name}`: {e}"))?;
                    config_http.custom_headers.insert(header, value);
                }
                let transport = StreamableHttpClientTransport::from_config(config_http);
                let client = config
                    .serve(transport)
                    .await
                    .map_err(|e| format!("cannot connect to {url}: {e}"))?;
                (client, None)
            }
        };
        let tools = client
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| format!("listing its tools failed: {e}"))?;
        Ok::<_, String>((client, pid, tools))
    };
    let (client, pid, tools) = match tokio::time::timeout(spec.startup_timeout, starting).await {
        Ok(result) => result.map_err(|e| format!("{e}{}", stderr_tail(stderr)))?,
        Err(_) => {
            return Err(format!(
                "it did not start and list its tools within {} ms (`startup_timeout_ms`){}",
                spec.startup_timeout.as_millis(),
                stderr_tail(stderr)
            ));
        }
    };
    let mut listed: Vec<ListedTool> = tools
        .into_iter()
        .map(|t| {
            let description = t.description.as_deref().unwrap_or_default().to_owned();
            let schema = Value::Object((*t.input_schema).clone());
            let mut hash = Sha256::new();
            hash.update(description.as_bytes());
            hash.update([0]);
            hash.update(schema.to_string().as_bytes());
            ListedTool {
                remote: t.name.into_owned(),
                description,
                schema,
                fingerprint: hex::encode(hash.finalize()),
            }
        })
        .collect();
    listed.sort_by(|a, b| a.remote.cmp(&b.remote));
    Ok((client, pid, listed))
}

/// One MCP tool, offered as `server.tool`.
pub struct McpTool {
    server: Arc<McpServer>,
    remote: String,
    manifest: ToolManifest,
    policy: McpToolPolicy,
}

impl std::fmt::Debug for McpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "McpTool({})", self.manifest.name)
    }
}

impl McpTool {
    /// The tool `listed` of `server`, with the operator's manifest.
    pub fn new(server: Arc<McpServer>, listed: &ListedTool) -> McpTool {
        let spec = server.spec();
        let policy = spec.tool_policy(&listed.remote);
        let description = match &policy.description {
            Some(own) => own.clone(),
            None => {
                let text: String = listed
                    .description
                    .chars()
                    .take(MAX_DESCRIPTION_CHARS)
                    .collect();
                format!("[MCP server `{}`] {text}", spec.name)
            }
        };
        let mut schema = listed.schema.clone();
        if let Some(map) = schema.as_object_mut() {
            // Drawn from the server but not needed to validate or to type the arguments.
            map.remove("$schema");
            map.entry("type")
                .or_insert_with(|| Value::String("object".into()));
        }
        McpTool {
            manifest: ToolManifest {
                name: format!("{}.{}", spec.name, listed.remote),
                description,
                parameters: schema,
                idempotent: policy.idempotent,
                // The server's own timeout is enforced here, with a grace for the engine's.
                timeout: spec.timeout + Duration::from_secs(1),
            },
            server,
            remote: listed.remote.clone(),
            policy,
        }
    }

    /// The operator's manifest for it (or the restrictive defaults).
    pub fn policy(&self) -> &McpToolPolicy {
        &self.policy
    }

    /// Its server.
    pub fn server(&self) -> &Arc<McpServer> {
        &self.server
    }
}

impl Tool for McpTool {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }
    fn call<'a>(
        &'a self,
        ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(self.server.call(&self.remote, args, &ctx.notices))
    }
}

/// Where the fingerprints of an agent's MCP tools are kept between processes.
pub fn pins_path(state_dir: &Path, agent: &str) -> PathBuf {
    state_dir.join("mcp-pins").join(format!("{agent}.json"))
}

/// Reads a pins file; a missing file means nothing is pinned yet.
pub fn read_pins(path: &Path) -> Result<BTreeMap<String, String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            format!(
                "{}: not a pins file ({e}); delete it to pin the tools again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes a pins file (atomically: a temporary file renamed over it).
pub fn write_pins(path: &Path, pins: &BTreeMap<String, String>) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // A file of this process's own, renamed into place: processes writing pins at once never
    // read or rename each other's half-written file.
    let tmp = path.with_extension(format!(
        "json.{}.{:?}.tmp",
        std::process::id(),
        std::thread::current().id()
    ));
    let text = serde_json::to_string_pretty(pins).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
