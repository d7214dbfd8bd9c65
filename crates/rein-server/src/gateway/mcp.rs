//! The MCP gateway: `/mcp` (Streamable HTTP, through rmcp's server) serves the MCP servers
//! configured for a gateway to agents that speak MCP. A token authenticates each request (401
//! before anything is read); `tools/list` shows a caller only the tools its policies do not deny
//! outright; `tools/call` is judged on its arguments, run on the gateway's pooled server
//! (restarted when it dies, pinned against description changes), its output labelled and capped,
//! and recorded as a run like any request. A call held for approval is answered, once decided,
//! to the same caller's next identical call.

use std::sync::Arc;

use axum::http::request::Parts;
use rein_api::{Caller, LoadedAgent};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::Value;

use super::{Dialect, GwError};
use crate::state::AppState;

/// The MCP service, mounted at `/mcp` behind [`authenticate`].
pub(crate) fn service(state: Arc<AppState>) -> StreamableHttpService<Gateway, NeverSessionManager> {
    // Stateless: each POST is answered on its own, as JSON; any Host (the operator's proxy
    // decides which names reach the server).
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_max_request_body_bytes(state.limits.max_gateway_body_bytes)
        .disable_allowed_hosts();
    let handler = Gateway { state };
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}

/// The handler: one per request, sharing the server's state.
#[derive(Clone)]
pub(crate) struct Gateway {
    state: Arc<AppState>,
}

fn refused(message: impl Into<String>) -> ErrorData {
    ErrorData::invalid_request(message.into(), None)
}

impl Gateway {
    /// The caller the middleware authenticated, and the one gateway it may use.
    async fn target(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Caller, Arc<LoadedAgent>), ErrorData> {
        let parts = ctx.extensions.get::<Parts>();
        let caller = parts
            .and_then(|p| p.extensions.get::<Caller>())
            .cloned()
            .ok_or_else(|| refused("no caller: send `Authorization: Bearer <token>`"))?;
        // `/mcp?gateway=<agent>` names the gateway for a token that may use several.
        let named = parts
            .and_then(|p| p.uri.query())
            .and_then(|q| {
                q.split('&')
                    .find_map(|pair| pair.strip_prefix("gateway="))
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let agent = super::pick(&self.state, &caller, &named, Dialect::OpenAi)
            .await
            .map_err(|e: GwError| refused(e.message))?;
        Ok((caller, agent))
    }
}

impl ServerHandler for Gateway {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("rein", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "rein's MCP gateway: every call is judged by the operator's policies and recorded",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let (_, agent) = self.target(&ctx).await?;
        let tools = agent
            .mcp_tools()
            .into_iter()
            .map(|(name, description, schema)| {
                let schema = match schema {
                    Value::Object(map) => map,
                    _ => serde_json::Map::new(),
                };
                Tool::new(name, description, schema)
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let (caller, agent) = self.target(&ctx).await?;
        if !agent.is_mcp_tool(&request.name) {
            return Err(ErrorData::invalid_params(
                format!("no tool `{}` here: tools/list names them", request.name),
                None,
            ));
        }
        if self.state.stopping() {
            return Err(refused(
                "the server is shutting down; call again on another one",
            ));
        }
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let answer = super::tool_call(
            &self.state,
            &agent,
            &caller,
            request.name.to_string(),
            arguments,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "an MCP gateway call failed");
            ErrorData::internal_error(
                "rein could not complete the call; the server's log has the cause",
                None,
            )
        })?;
        let result = if let Some((_, _, output, failed)) = answer.results.first() {
            let content = vec![ContentBlock::text(output.clone())];
            if *failed {
                CallToolResult::error(content)
            } else {
                CallToolResult::success(content)
            }
        } else {
            // Withheld: denied, refused, or held for a person (the note says which and why).
            let note = answer
                .notice()
                .or(answer.reason.clone())
                .unwrap_or_else(|| "rein did not run the call".into());
            CallToolResult::error(vec![ContentBlock::text(note)])
        };
        Ok(result.into())
    }
}
