//! `/v1/runs`: start (answered at once; the run goes on in the server), list, show, follow,
//! cancel, resume and reconcile. Every run is its tenant's: another tenant's run is answered 404,
//! as if it did not exist.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rein_api::{NewRun, RunQuery, v1};
use serde::Deserialize;

use crate::auth::{Auth, Body, P, Q};
use crate::events;
use crate::problem::{ApiResult, Problem};
use crate::state::AppState;

/// `POST /v1/runs`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    /// The agent's name.
    pub agent: String,
    /// The task; the agent's `default_task` when absent.
    #[serde(default)]
    pub task: Option<String>,
    /// Grants fixed with the run.
    #[serde(default)]
    pub grants: Option<Vec<v1::Grant>>,
}

/// The answer to `POST /v1/runs`.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub(crate) struct Started {
    /// The run's id.
    pub run_id: String,
    /// Where its events stream.
    pub events: String,
}

/// A rein id (32 lower-case hex digits), or a sub-agent's run id: its parent's id and the
/// call that delegated to it (`<id>-call_<step>_<n>`, nested for deeper sub-agents).
pub(crate) fn valid_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let hex = |p: &str| {
        p.len() == 32
            && p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let call = |p: &str| {
        p.strip_prefix("call_").is_some_and(|rest| {
            let mut n = rest.split('_');
            let digits = |x: Option<&str>| {
                x.is_some_and(|x| {
                    !x.is_empty() && x.len() <= 10 && x.bytes().all(|b| b.is_ascii_digit())
                })
            };
            digits(n.next()) && digits(n.next()) && n.next().is_none()
        })
    };
    parts.next().is_some_and(hex) && parts.all(call)
}

/// The run with this exact id, if it is the caller's tenant's.
pub(crate) fn owned(state: &AppState, caller: &rein_api::Caller, id: &str) -> ApiResult<()> {
    if !valid_id(id) {
        return Err(Problem::not_found("run"));
    }
    match state.rein.run_tenant(id) {
        Ok(tenant) if tenant == caller.tenant => Ok(()),
        Ok(_) | Err(rein_api::Error::NotFound(_)) => Err(Problem::not_found("run")),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn start(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Body(body): Body<StartRequest>,
) -> ApiResult<Response> {
    caller.require("runs:write")?;
    if state.stopping() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; start the run on another one",
        ));
    }
    let agent = state
        .agents
        .get(&state.rein, &body.agent)
        .await
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no agent `{}` is served here: GET /v1/agents lists them",
                    body.agent
                ),
            )
        })?;
    let run = NewRun {
        task: body.task,
        user: caller.user.clone(),
        tenant: caller.tenant.clone(),
        grants: body.grants,
        run_id: Some(uuid::Uuid::now_v7().simple().to_string()),
        token: Some(caller.token_id.clone()),
    };
    let run_id = events::start(&state, agent, run).await?;
    let location = format!("/v1/runs/{run_id}");
    let body = Started {
        events: format!("{location}/events"),
        run_id,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response())
}

/// `GET /v1/runs` parameters.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// At most this many (default 50).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only this agent's.
    #[serde(default)]
    pub agent: Option<String>,
    /// Only this user's.
    #[serde(default)]
    pub user: Option<String>,
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Q(q): Q<ListQuery>,
) -> ApiResult<axum::Json<Vec<v1::RunSummary>>> {
    if q.limit.is_some_and(|l| l > 1000) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`limit` is at most 1000",
        ));
    }
    let runs = state.rein.list_runs(&RunQuery {
        limit: q.limit.unwrap_or(50),
        agent: q.agent,
        user: q.user,
        tenant: Some(caller.tenant.clone()),
    })?;
    Ok(axum::Json(runs))
}

pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
) -> ApiResult<axum::Json<v1::RunDetail>> {
    owned(&state, &caller, &id)?;
    Ok(axum::Json(state.rein.show_run(&id)?))
}

/// `GET /v1/runs/{id}/events` parameters.
#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// Events after this sequence number (default 0: all of them). `Last-Event-ID` wins.
    #[serde(default)]
    pub from: Option<u64>,
}

pub(crate) async fn follow(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
    Q(q): Q<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    owned(&state, &caller, &id)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = last.or(q.from).unwrap_or(0);
    let bearer = crate::auth::token(&headers, &axum::http::Method::GET)?.to_owned();
    if let Err(open) = state.open_stream(&caller.token_id) {
        let mut problem = Problem::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            format!("this token holds {open} event streams open, the most it may; close one first"),
        );
        problem.retry_after = Some(1);
        return Err(problem);
    }
    Ok(events::follow(state, id, from, bearer, caller.token_id).into_response())
}

pub(crate) async fn cancel(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
) -> ApiResult<axum::Json<v1::CancelOutcome>> {
    caller.require("runs:write")?;
    owned(&state, &caller, &id)?;
    Ok(axum::Json(state.rein.cancel_run(&id, &caller.user).await?))
}

pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
) -> ApiResult<Response> {
    caller.require("runs:write")?;
    owned(&state, &caller, &id)?;
    if state.stopping() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    // Refused at once if it has ended or another process drives it.
    let detail = state.rein.show_run(&id)?;
    if matches!(detail.run.status, v1::RunStatus::Ended(_)) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("run {id} has ended; there is nothing to resume"),
        ));
    }
    if matches!(detail.run.status, v1::RunStatus::Running) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("run {id} is being driven now"),
        ));
    }
    events::resume(&state, id.clone(), caller.tenant.clone());
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"run_id": id, "events": format!("/v1/runs/{id}/events")})),
    )
        .into_response())
}

/// `POST /v1/runs/{id}/reconcile`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileRequest {
    /// The call in doubt.
    pub call: String,
    /// Whether its effect happened.
    pub happened: bool,
    /// Its output, when it happened.
    #[serde(default)]
    pub output: serde_json::Value,
    /// Why.
    #[serde(default)]
    pub note: Option<String>,
}

pub(crate) async fn reconcile(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
    Body(body): Body<ReconcileRequest>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    caller.require("runs:write")?;
    owned(&state, &caller, &id)?;
    let call = state
        .rein
        .reconcile(
            &id,
            &body.call,
            body.happened,
            body.output,
            &caller.user,
            body.note,
        )
        .await?;
    Ok(axum::Json(
        serde_json::json!({"run_id": id, "call": call, "next": format!("POST /v1/runs/{id}/resume")}),
    ))
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn ids_of_runs_and_of_sub_agents_runs_are_valid_and_nothing_else() {
        let root = "0123456789abcdef0123456789abcdef";
        assert!(valid_id(root));
        assert!(valid_id(&format!("{root}-call_2_1")));
        assert!(valid_id(&format!("{root}-call_2_1-call_1_3")));
        for bad in [
            "",
            "0123456789ABCDEF0123456789abcdef",
            &root[1..],
            &format!("{root}-"),
            &format!("{root}-call_2"),
            &format!("{root}-call_2_1_3"),
            &format!("{root}-call_x_1"),
            &format!("{root}-../etc"),
            &format!("{root}/call_2_1"),
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
