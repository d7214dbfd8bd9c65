//! The governed gateway: OpenAI- and Anthropic-compatible model endpoints, so agents built with
//! any framework get rein's governance by changing a base URL. Each face translates its wire
//! format to a [`GatewayRequest`] and the engine API's answer back; what is judged, budgeted,
//! recorded and withheld is decided once, in `rein_api::gateway`.
//!
//! A client authenticates with a rein token (`Authorization: Bearer`, or `x-api-key` as the
//! Anthropic SDK sends it) holding the `gateway` scope (or `gateway:<agent>`). The request's
//! `model` names the gateway agent; a token that may use only one gateway may name any model.
//! Errors come in the face's own shape, so the SDKs raise their usual exceptions.

pub(crate) mod anthropic;
mod error;
pub(crate) mod mcp;
pub(crate) mod openai;
pub(crate) mod responses;
pub(crate) mod settings;

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rein_api::gateway::{GatewayAnswer, GatewayRequest};
use rein_api::{Caller, LoadedAgent, v1};

pub(crate) use error::{GwError, Retry};

use crate::events::RunWatch;
use crate::state::AppState;

/// The header naming a conversation.
pub(crate) const CONVERSATION_HEADER: &str = "x-rein-conversation";

/// Which API's error shape a face answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `{"error": {"message", "type", "code"}}`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic,
}

/// Authenticates a gateway request before anything reads its body, and hands the caller to the
/// handler (as a request extension): a request without a valid token is refused with a 401 in
/// its face's shape, never buffering an upload of up to the gateway's body limit first.
pub(crate) async fn authenticate(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match caller(&state, request.headers(), dialect_of(request.uri().path())) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The face a gateway path belongs to: `/v1/messages` is Anthropic's; the others answer as
/// OpenAI's.
fn dialect_of(path: &str) -> Dialect {
    if path == "/v1/messages" {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// A gateway endpoint asked with a method other than `POST`: 405 in its face's shape, with
/// `Allow`, as the API it stands in for answers (an SDK reads the error from that shape).
pub(crate) async fn wrong_method(uri: axum::http::Uri) -> Response {
    let mut response = GwError::new(
        dialect_of(uri.path()),
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} takes POST", uri.path()),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// The first segments of the paths of the OpenAI API's other endpoints (embeddings, files, and
/// so on), which rein's gateway does not serve.
const OPENAI_FAMILIES: &[&str] = &[
    "assistants",
    "audio",
    "batches",
    "chat",
    "completions",
    "containers",
    "conversations",
    "embeddings",
    "evals",
    "files",
    "fine_tuning",
    "images",
    "models",
    "moderations",
    "realtime",
    "responses",
    "threads",
    "uploads",
    "vector_stores",
];

/// The face a request for a path nothing serves was meant for, if it was meant for one: an
/// Anthropic SDK's (it sends `anthropic-version`, or asks under `/v1/messages/`, such as
/// `count_tokens`), or an OpenAI SDK's endpoint rein does not serve. Its error then comes in
/// that API's shape, which the SDK reads; any other path is rein's own API's, answered as a
/// problem document.
pub(crate) fn meant_for(path: &str, headers: &HeaderMap) -> Option<Dialect> {
    let rest = path.strip_prefix("/v1/")?;
    if headers.contains_key("anthropic-version") || rest.starts_with("messages/") {
        return Some(Dialect::Anthropic);
    }
    let family = rest.split('/').next().unwrap_or_default();
    OPENAI_FAMILIES.contains(&family).then_some(Dialect::OpenAi)
}

/// A path the gateway does not serve, asked by an SDK: 404 in its API's shape, saying what the
/// gateway does serve.
pub(crate) fn unknown_endpoint(dialect: Dialect, method: &str, path: &str) -> Response {
    GwError::new(
        dialect,
        StatusCode::NOT_FOUND,
        format!(
            "rein's gateway does not serve {method} {path}: it serves POST /v1/chat/completions, POST /v1/responses and GET /v1/models (OpenAI) and POST /v1/messages (Anthropic)"
        ),
    )
    .into_response()
}

/// Reads a request's body, up to the gateway's limit and within the request time limit (a body
/// sent slowly holds a connection and a buffer only that long), or refuses it in the face's
/// shape: 413 past the limit, 408 past the time, 400 for a connection that broke off.
pub(crate) async fn body(
    state: &AppState,
    body: axum::body::Body,
    dialect: Dialect,
) -> Result<axum::body::Bytes, GwError> {
    let limit = state.limits.max_gateway_body_bytes;
    let read = tokio::time::timeout(
        state.limits.request_timeout,
        axum::body::to_bytes(body, limit),
    );
    match read.await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                GwError::new(
                    dialect,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body is larger than the gateway's limit of {limit} bytes"),
                )
            } else {
                GwError::new(
                    dialect,
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {e}"),
                )
            })
        }
        Err(_) => Err(GwError::new(
            dialect,
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                state.limits.request_timeout.as_secs()
            ),
        )),
    }
}

/// The caller of a gateway request: a rein token as a bearer token or an `x-api-key`.
pub(crate) fn caller(
    state: &AppState,
    headers: &HeaderMap,
    dialect: Dialect,
) -> Result<Caller, GwError> {
    let token = match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(key) if headers.get(header::AUTHORIZATION).is_none() => key.trim(),
        _ => crate::auth::bearer(headers).map_err(|p| GwError::new(dialect, p.status, p.detail))?,
    };
    let caller = state
        .rein
        .authenticate(token, crate::now_ms())
        .map_err(|e| GwError::from_api(dialect, e))?;
    state.rate.admit(&caller.token_id).map_err(|p| {
        let wait = Retry::After(p.retry_after.unwrap_or(1));
        GwError::new(dialect, p.status, p.detail).retry(wait)
    })?;
    Ok(caller)
}

/// The gateway a request names by its `model`, or the only one the caller may use.
pub(crate) async fn pick(
    state: &AppState,
    caller: &Caller,
    model: &str,
    dialect: Dialect,
) -> Result<Arc<LoadedAgent>, GwError> {
    if let Some(agent) = state.agents.get(&state.rein, model).await
        && agent.is_gateway()
    {
        if caller.may_use_gateway(agent.name()) {
            return Ok(agent);
        }
        return Err(GwError::new(
            dialect,
            StatusCode::FORBIDDEN,
            format!(
                "this token may not use gateway `{model}`; create one with `--scope gateway:{model}`"
            ),
        ));
    }
    let usable = usable(state, caller).await;
    match usable.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(GwError::new(
            dialect,
            StatusCode::FORBIDDEN,
            "this token may use no gateway served here: it needs the `gateway` scope (or `gateway:<agent>`), and `rein serve` an agent folder with a `[gateway]` section",
        )),
        many => Err(GwError::new(
            dialect,
            StatusCode::NOT_FOUND,
            format!(
                "no gateway `{model}` is served here; name one as the model: {}",
                many.iter()
                    .map(|a| a.name().to_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// The gateways the caller may use, by name.
pub(crate) async fn usable(state: &AppState, caller: &Caller) -> Vec<Arc<LoadedAgent>> {
    let mut all: Vec<Arc<LoadedAgent>> = state
        .agents
        .all()
        .await
        .into_iter()
        .filter(|a| a.is_gateway() && caller.may_use_gateway(a.name()))
        .collect();
    all.sort_by(|a, b| a.name().cmp(b.name()));
    all
}

/// The conversation a request names, if any.
pub(crate) fn conversation(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONVERSATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Asks the engine API, with the run's events feeding the metrics and live streams.
pub(crate) async fn answer(
    state: &Arc<AppState>,
    agent: &Arc<LoadedAgent>,
    caller: &Caller,
    request: GatewayRequest,
    dialect: Dialect,
) -> Result<GatewayAnswer, GwError> {
    if state.stopping() {
        return Err(GwError::new(
            dialect,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; send the request to another one",
        ));
    }
    let answer = in_server(
        state,
        agent,
        caller,
        move |rein, agent, caller, watch| async move {
            rein.gateway(&agent, &caller, request, Some(&watch)).await
        },
    )
    .await
    .map_err(|e| match e {
        Stopped => GwError::new(
            dialect,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server stopped before the request was answered; send it again",
        ),
        Failed(e) => GwError::from_api(dialect, e),
    })?;
    check(agent, &answer, dialect)?;
    Ok(answer)
}

/// The same for a call an MCP client makes of one of the gateway's own MCP tools.
pub(crate) async fn tool_call(
    state: &Arc<AppState>,
    agent: &Arc<LoadedAgent>,
    caller: &Caller,
    tool: String,
    arguments: serde_json::Value,
) -> Result<GatewayAnswer, rein_api::Error> {
    in_server(
        state,
        agent,
        caller,
        move |rein, agent, caller, watch| async move {
            rein.gateway_tool_call(&agent, &caller, &tool, arguments, Some(&watch))
                .await
        },
    )
    .await
    .map_err(|e| match e {
        Stopped => {
            rein_api::Error::Conflict("the server stopped before the call was answered".into())
        }
        Failed(e) => e,
    })
}

/// Why a turn driven in the server gave no answer.
enum InServer {
    /// The server stopped first.
    Stopped,
    /// The engine API refused or failed.
    Failed(rein_api::Error),
}
use InServer::{Failed, Stopped};

/// Runs a turn as a task of the server, not of the request: it goes on even if the client goes
/// away, so its model call is settled on the budgets and its run ends in a named state, whoever
/// is left to read the answer. `turn` is handed the API, the agent, the caller, and the watch
/// that feeds the metrics and live streams.
async fn in_server<F, Fut>(
    state: &Arc<AppState>,
    agent: &Arc<LoadedAgent>,
    caller: &Caller,
    turn: F,
) -> Result<GatewayAnswer, InServer>
where
    F: FnOnce(Arc<rein_api::Rein>, Arc<LoadedAgent>, Caller, RunWatch) -> Fut,
    Fut: std::future::Future<Output = Result<GatewayAnswer, rein_api::Error>> + Send + 'static,
{
    let watch = RunWatch {
        state: state.clone(),
        agent: agent.name().to_owned(),
        tenant: caller.tenant.clone(),
        started: Arc::new(Mutex::new(None)),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Boxed where it is made: the request's state machine holds the engine's whole run, and
    // unboxed it was copied as it moved into the task (`memcpy` under `answer` was 1.3 % of the
    // server's CPU in `rein bench gateway`; boxed, 190 to 183 µs a request, 16 at once).
    let future = Box::pin(turn(
        state.rein.clone(),
        agent.clone(),
        caller.clone(),
        watch,
    ));
    state.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.await.map_err(|_| Stopped)?.map_err(Failed)
}

/// A string field a request item must have, or a 400 naming where it is missing.
pub(crate) fn required<'a>(
    item: &'a serde_json::Value,
    name: &str,
    at: &str,
    dialect: Dialect,
) -> Result<&'a str, GwError> {
    item.get(name)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| {
            GwError::new(
                dialect,
                StatusCode::BAD_REQUEST,
                format!("{at}.{name}: missing"),
            )
        })
}

/// A request body of one of the faces, or a 400 naming what is wrong with it.
pub(crate) fn parse<R: serde::de::DeserializeOwned>(
    body: &[u8],
    dialect: Dialect,
    what: &str,
) -> Result<R, GwError> {
    serde_json::from_slice(body).map_err(|e| {
        GwError::new(
            dialect,
            StatusCode::BAD_REQUEST,
            format!("the body is not {what}: {e}"),
        )
    })
}

/// An answer with rein's headers: the run that recorded it and its conversation.
pub(crate) fn with_headers(mut response: Response, answer: &GatewayAnswer) -> Response {
    for (name, value) in rein_headers(answer) {
        if let Ok(v) = value.parse() {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// A request that did not end with an answer for the client becomes an error: the budget
/// refused it (429), the policies refused the model or the answer (403), every model refused
/// it as malformed (400: a value the client sent, which it must fix rather than retry), the
/// model failed (502, not to be sent again when every model's provider refused the operator's
/// account); and a denied call fails the request when the operator chose
/// `on_denied = "error"`.
fn check(agent: &LoadedAgent, answer: &GatewayAnswer, dialect: Dialect) -> Result<(), GwError> {
    let reason = || {
        answer
            .reason
            .clone()
            .unwrap_or_else(|| "no reason was recorded".into())
    };
    let status = match answer.status {
        v1::EndState::Completed | v1::EndState::AwaitingApproval => None,
        v1::EndState::BudgetExhausted => Some(StatusCode::TOO_MANY_REQUESTS),
        v1::EndState::Denied => Some(StatusCode::FORBIDDEN),
        v1::EndState::Cancelled => Some(StatusCode::CONFLICT),
        v1::EndState::Failed if answer.malformed => Some(StatusCode::BAD_REQUEST),
        _ => Some(StatusCode::BAD_GATEWAY),
    };
    if let Some(status) = status {
        let message = format!("rein (run {}): {}", answer.run_id, reason());
        let error = GwError::new(dialect, status, message);
        // A spent budget stays spent (a retry would be judged, refused and recorded again), and
        // a cancelled run was stopped by a person: neither is for a client to send again unasked.
        // So is a provider account out of credit, for every model.
        return Err(match answer.status {
            v1::EndState::BudgetExhausted | v1::EndState::Cancelled => error.retry(Retry::Never),
            _ if answer.out_of_credit => error.retry(Retry::Never),
            _ => error,
        });
    }
    if agent.fails_on_denied()
        && let Some(w) = answer.withheld.iter().find(|w| w.by != "awaiting_approval")
    {
        return Err(GwError::new(
            dialect,
            StatusCode::FORBIDDEN,
            format!(
                "rein (run {}) refused the model's call to `{}`: {}",
                answer.run_id, w.tool, w.reason
            ),
        ));
    }
    Ok(())
}

/// What a client reads of an answer: the model's text and rein's note about withheld calls.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Said {
    /// The text, with the note appended unless it is apart.
    pub(crate) text: Option<String>,
    /// The note, apart from the text, where the API puts a refusal.
    pub(crate) refusal: Option<String>,
}

impl Said {
    /// The note goes after the text, where the agent's model reads it on its next turn; but when
    /// the client asked for a structured output, its SDK parses the text as JSON (`parse()` in
    /// the `openai` and `anthropic` SDKs) and a note in it would break the parse, so the note
    /// goes apart, where each API puts a refusal, and the text stays the model's own.
    pub(crate) fn of(answer: &GatewayAnswer, structured: bool) -> Self {
        let notice = answer.notice();
        if structured {
            return Said {
                text: answer.text.clone(),
                refusal: notice,
            };
        }
        let text = match (answer.text.as_deref(), notice) {
            (Some(t), Some(n)) if !t.is_empty() => Some(format!("{t}\n\n{n}")),
            (_, Some(n)) => Some(n),
            (Some(t), None) => Some(t.to_owned()),
            (None, None) => None,
        };
        Said {
            text,
            refusal: None,
        }
    }
}

/// Headers every gateway answer carries: the run that recorded it and its conversation.
pub(crate) fn rein_headers(answer: &GatewayAnswer) -> [(&'static str, String); 2] {
    [
        ("x-rein-run", answer.run_id.clone()),
        (CONVERSATION_HEADER, answer.conversation.clone()),
    ]
}

/// Seconds since the epoch, for `created` fields.
pub(crate) fn created() -> u64 {
    crate::now_ms() / 1000
}

#[cfg(test)]
pub(crate) mod fixtures;
