//! `rein serve`: the second face of the engine API, over HTTP.
//!
//! One process serves the agents it was given: runs started by other services go on in it,
//! approvals are decided from anywhere, events stream live, metrics and traces go where the
//! operator's tools are. Every request carries a bearer token that fixes the tenant and user it
//! acts as; another tenant's run, approval or record answers 404. Errors are problem documents.
//! On SIGTERM the server stops taking requests, lets runs reach a durable point, and exits; the
//! next start resumes them.

mod auth;
mod dashboard;
mod events;
mod gateway;
pub mod metrics;
pub mod mock_upstream;
mod openapi;
mod problem;
mod unread;
mod routes {
    pub(crate) mod admin;
    pub(crate) mod approvals;
    pub(crate) mod conversations;
    pub(crate) mod runs;
    pub(crate) mod session;
}
mod state;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rein_api::Rein;

pub use metrics::{SpanTimer, metrics};
pub use openapi::document as openapi_document;

/// The OpenAPI document as `rein schema openapi` prints it (and docs/openapi.json holds it).
pub fn openapi_text() -> String {
    let mut text = serde_json::to_string_pretty(&openapi::document()).unwrap_or_default();
    text.push('\n');
    text
}
pub use state::Limits;

use crate::auth::{Auth, RateLimiter};
use crate::problem::Problem;
use crate::state::{Agents, AppState};

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The folders of the agents served: an agent folder, or a folder of agent folders.
    pub agents: Vec<PathBuf>,
    /// Request limits.
    pub limits: Limits,
    /// How long a shutdown waits for runs to reach a durable point.
    pub drain: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            agents: vec![],
            limits: Limits::default(),
            drain: Duration::from_secs(60),
        }
    }
}

/// A server that has loaded its agents and resumed what a previous one left, ready to serve.
#[derive(Debug)]
pub struct Server {
    state: Arc<AppState>,
    drain: Duration,
}

impl Server {
    /// Loads the agents (a folder that cannot be loaded is an error naming it) and resumes the
    /// runs a previous server left interrupted.
    pub async fn new(rein: Arc<Rein>, options: ServeOptions) -> Result<Server, rein_api::Error> {
        let state = Arc::new(AppState {
            rein,
            agents: Agents::new(options.agents.clone()),
            hub: Default::default(),
            metrics: metrics(),
            rate: RateLimiter::new(options.limits.rate_per_second, options.limits.rate_burst),
            limits: options.limits,
            stopping: Default::default(),
            shutdown: tokio::sync::watch::channel(false).0,
            tools_listed: Default::default(),
            streams: Default::default(),
            tasks: Default::default(),
        });
        let problems = state.agents.refresh(&state.rein).await;
        if let Some(first) = problems.first() {
            return Err(rein_api::Error::Invalid(first.clone()));
        }
        let server = Server {
            state,
            drain: options.drain,
        };
        server.resume_interrupted()?;
        Ok(server)
    }

    /// Resumes what a previous server left: every run no process drives that is neither ended
    /// nor waiting for approval, and every run suspended for approvals that have all been
    /// decided (a decision made while that server stopped). A sub-agent's run is left to its
    /// root, whose resume drives it under the parent's policies.
    fn resume_interrupted(&self) -> Result<(), rein_api::Error> {
        let runs = self.state.rein.list_runs(&rein_api::RunQuery {
            limit: usize::MAX >> 1,
            ..Default::default()
        })?;
        let pending: std::collections::HashSet<String> = self
            .state
            .rein
            .list_approvals(false, None)?
            .into_iter()
            .map(|a| a.run_id)
            .collect();
        let awaiting = rein_api::v1::RunStatus::Ended(rein_api::v1::EndState::AwaitingApproval);
        let mut roots = std::collections::BTreeMap::new();
        for run in runs {
            let decided = run.status == awaiting && !pending.contains(&run.id);
            if run.status == rein_api::v1::RunStatus::Interrupted || decided {
                let root = self.state.rein.root_run(&run.id)?;
                roots.entry(root).or_insert(run.tenant);
            }
        }
        for (root, tenant) in roots {
            tracing::info!(run = %root, "resuming a run a previous server left");
            events::resume(&self.state, root, tenant);
        }
        Ok(())
    }

    /// The routes.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then takes no more requests, asks the
    /// runs in flight to stop at their next durable point, and waits for them (at most the
    /// drain time).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let app = self.router();
        let stop_state = state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: no new requests; runs stop at their next durable point");
            stop_state.begin_stop();
        };
        let serving = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal)
        .into_future();
        // Streams and long polls end at shutdown, and other requests have their time limit; a
        // request exempt from it (an audit export) still gets no more than the drain time.
        let late = state.clone();
        let drain = self.drain;
        tokio::select! {
            served = serving => served?,
            () = async move {
                late.stopped().await;
                tokio::time::sleep(drain).await;
            } => tracing::warn!("requests still open after the drain time were closed"),
        }
        // Requests are done; the runs driven in the background stop at a durable point.
        state.begin_stop();
        let deadline = Instant::now() + self.drain;
        let mut tasks = std::mem::take(&mut *state.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while !tasks.is_empty() && Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(200), tasks.join_next()).await;
        }
        tasks.abort_all();
        for agent in state.agents.all().await {
            agent.close().await;
        }
        Ok(())
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.stopping() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    "ready".into_response()
}

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

async fn prometheus(State(state): State<Arc<AppState>>, Auth(caller): Auth) -> Response {
    if let Err(e) = caller.require("metrics:read") {
        return Problem::from(e).into_response();
    }
    // Metrics are the operator's: they cover every tenant (`metrics:read` is for the
    // operator's scraper, not for a tenant's token). Budget use is the current day's and
    // month's shared lines; a run's own line ends with it.
    let pending = state.rein.list_approvals(false, None).unwrap_or_default();
    let now = now_ms();
    let current = [
        rein_api::budget::period_key(rein_api::budget::Period::Day, now),
        rein_api::budget::period_key(rein_api::budget::Period::Month, now),
    ];
    let usage: Vec<_> = state
        .rein
        .usage(None, None, None, None)
        .unwrap_or_default()
        .into_iter()
        .filter(|row| !row.key.starts_with("run:") && current.contains(&row.period))
        .collect();
    let text = state
        .metrics
        .render(state.rein.driving(), &pending, &usage, now);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Counts and times every request by its route.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let began = Instant::now();
    let (request, unread) = unread::watch(request);
    let mut response = next.run(request).await;
    state.metrics.request(
        &route,
        response.status().as_u16(),
        began.elapsed().as_secs_f64(),
    );
    unread.mark(&mut response);
    response
}

/// Answers 408 for a request that takes longer than the limit.
async fn deadline(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s",
                state.limits.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// A path nothing serves: in the shape of the API an SDK expects when it asked for one of that
/// API's endpoints (`gateway::meant_for`), else a problem document.
async fn not_found(
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(dialect) = gateway::meant_for(uri.path(), &headers) {
        return gateway::unknown_endpoint(dialect, method.as_str(), uri.path());
    }
    Problem::new(
        StatusCode::NOT_FOUND,
        "no such route: GET /v1/openapi.json lists them",
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take that method: GET /v1/openapi.json lists what each takes",
    )
    .into_response()
}

fn router(state: Arc<AppState>) -> Router {
    use routes::{admin, approvals, conversations, runs, session};
    // Requests answered at once are held to the time limit; streams and waits are not.
    let timed = Router::new()
        .route("/v1/runs", post(runs::start).get(runs::list))
        .route("/v1/runs/{id}", get(runs::show))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route("/v1/runs/{id}/resume", post(runs::resume))
        .route("/v1/runs/{id}/reconcile", post(runs::reconcile))
        .route(
            "/v1/approvals/{id}",
            get(approvals::show).post(approvals::decide),
        )
        .route("/v1/models", get(gateway::openai::models))
        .route("/v1/models/{model}", get(gateway::openai::model))
        .route(
            "/v1/session",
            post(session::sign_in)
                .get(session::show)
                .delete(session::sign_out),
        )
        .route("/v1/agents", get(admin::agents))
        .route("/v1/agents/{name}/tools", get(admin::tools))
        .route("/v1/agents/{name}/explain", post(admin::explain))
        .route("/v1/usage", get(admin::usage))
        .route("/v1/spend", get(admin::spend))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/conversations/forget", post(conversations::forget))
        .route("/v1/conversations/prune", post(conversations::prune))
        .route("/v1/audit/proof/{seq}", get(admin::proof))
        .layer(middleware::from_fn_with_state(state.clone(), deadline));
    // The gateway's model calls are held to each model's own timeout, not the request limit.
    let gateway = Router::new()
        .route(
            "/v1/chat/completions",
            post(gateway::openai::chat_completions).fallback(gateway::wrong_method),
        )
        .route(
            "/v1/responses",
            post(gateway::responses::responses).fallback(gateway::wrong_method),
        )
        .route(
            "/v1/messages",
            post(gateway::anthropic::messages).fallback(gateway::wrong_method),
        )
        .route_service("/mcp", gateway::mcp::service(state.clone()))
        // The token first: nothing of a body is read for a caller without one.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            gateway::authenticate,
        ));
    // (The model endpoints read their bodies themselves, to the gateway's limit and within the
    // request time limit, and `/mcp` through rmcp with the same limit: no default limit applies.)
    let open = Router::new()
        .merge(gateway)
        .route("/v1/runs/{id}/events", get(runs::follow))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/audit/verify", get(admin::verify))
        .route("/v1/audit/export", get(admin::export))
        .route("/metrics", get(prometheus))
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/app.css", get(dashboard::app_css))
        .route("/healthz", get(health))
        .route("/readyz", get(ready))
        .route("/v1/openapi.json", get(openapi));
    timed
        .merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.limits.max_body_bytes,
        ))
        .with_state(state)
}
