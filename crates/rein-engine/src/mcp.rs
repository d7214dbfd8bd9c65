//! An agent's MCP servers, connected: their tools ready for the registry and the gate, the pins
//! that notice a server changing a tool, and what the run should record about them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rein_config::AgentSpec;
use rein_mcp::{McpServer, McpTool};
use rein_tools::{SecretSource, ToolNotice};

use crate::EngineError;

/// The MCP servers of one agent and their tools.
#[derive(Debug, Default)]
pub struct McpSet {
    /// The servers, in the order declared.
    pub servers: Vec<Arc<McpServer>>,
    /// Every tool offered (tools the operator disabled are left out).
    pub tools: Vec<Arc<McpTool>>,
    /// What the run should record: each server's listing, tools changed since pinned.
    pub notices: Vec<ToolNotice>,
    /// The fingerprint of every listed tool as the servers describe it now, by `server.tool`.
    pub listed: BTreeMap<String, String>,
}

impl McpSet {
    /// Stops every server.
    pub async fn shutdown(&self) {
        for server in &self.servers {
            server.shutdown().await;
        }
    }
}

/// Connects the agent's MCP servers and lists their tools. `pins_file` holds fingerprints from
/// earlier listings: a tool that differs is flagged and refused; tools seen for the first time
/// are added to it. With `accept_changes`, the current definitions replace the pinned ones.
pub async fn connect_mcp(
    spec: &AgentSpec,
    secrets: Arc<dyn SecretSource>,
    pins_file: Option<&Path>,
    accept_changes: bool,
) -> Result<McpSet, EngineError> {
    let mut set = McpSet::default();
    if spec.mcp.is_empty() {
        return Ok(set);
    }
    let file = spec.dir.join(rein_config::AGENT_FILE);
    let mut pins = match pins_file {
        Some(path) if !accept_changes => rein_mcp::read_pins(path).map_err(EngineError::Agent)?,
        _ => BTreeMap::new(),
    };
    for server_spec in &spec.mcp {
        let connected = match McpServer::connect(server_spec, secrets.clone(), &pins).await {
            Ok(c) => c,
            Err(e) => {
                set.shutdown().await;
                return Err(EngineError::Agent(format!("{}: {e}", file.display())));
            }
        };
        let server = connected.server;
        set.notices.push(ToolNotice {
            kind: "mcp_server_listed".into(),
            subject: server.name().to_owned(),
            detail: format!(
                "{} tools: {}",
                connected.tools.len(),
                connected
                    .tools
                    .iter()
                    .map(|t| t.remote.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        set.notices.extend(connected.notices);
        for unknown in server_spec
            .tools
            .keys()
            .filter(|name| !connected.tools.iter().any(|t| &t.remote == *name))
        {
            set.notices.push(ToolNotice {
                kind: "mcp_tool_missing".into(),
                subject: format!("{}.{unknown}", server.name()),
                detail: "agent.toml declares this tool, but the server does not list it".into(),
            });
        }
        for listed in &connected.tools {
            set.listed.insert(
                format!("{}.{}", server.name(), listed.remote),
                listed.fingerprint.clone(),
            );
            if server_spec.tool_policy(&listed.remote).enabled {
                set.tools
                    .push(Arc::new(McpTool::new(server.clone(), listed)));
            }
        }
        pins.extend(server.pins());
        set.servers.push(server);
    }
    if let Some(Err(e)) = pins_file.map(|path| rein_mcp::write_pins(path, &pins)) {
        set.shutdown().await;
        return Err(EngineError::Agent(e));
    }
    Ok(set)
}
