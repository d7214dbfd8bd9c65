//! `/v1/approvals`: list (or wait for new ones), the card, and decisions. A decision is the
//! token's user's, and its run is resumed by the server at once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use rein_api::v1;
use serde::Deserialize;

use crate::auth::{Auth, Body, P, Q};
use crate::events;
use crate::problem::{ApiResult, Problem};
use crate::state::AppState;

/// `GET /v1/approvals` parameters.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    /// Decided ones too.
    #[serde(default)]
    pub all: Option<bool>,
    /// When none is pending, wait up to this many seconds (at most 60) for one.
    #[serde(default)]
    pub wait: Option<u64>,
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Q(q): Q<ListQuery>,
) -> ApiResult<axum::Json<Vec<v1::ApprovalSummary>>> {
    if q.wait.is_some_and(|w| w > 60) {
        return Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "`wait` is at most 60 seconds",
        ));
    }
    let all = q.all.unwrap_or(false);
    let read = || state.rein.list_approvals(all, Some(&caller.tenant));
    let mut found = read()?;
    if let Some(wait) = q.wait.filter(|_| !all && found.is_empty()) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        while found.is_empty() && tokio::time::Instant::now() < deadline {
            // Woken by a request of a run this server drives; read again every second for those
            // other processes make.
            let tick = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::timeout_at(tick, state.hub.approvals.notified()) => {}
                // Shutting down: answer with what there is rather than hold the server open.
                () = state.stopped() => break,
            }
            found = read()?;
        }
    }
    Ok(axum::Json(found))
}

/// The approval with this id, if it is the caller's tenant's.
fn owned(state: &AppState, caller: &rein_api::Caller, id: &str) -> ApiResult<v1::ApprovalCard> {
    if !crate::routes::runs::valid_id(id) {
        return Err(Problem::not_found("approval"));
    }
    match state.rein.approval_card(id) {
        Ok(card) if card.approval.tenant == caller.tenant && card.approval.id == id => Ok(card),
        Ok(_) | Err(rein_api::Error::NotFound(_)) => Err(Problem::not_found("approval")),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
) -> ApiResult<axum::Json<v1::ApprovalCard>> {
    Ok(axum::Json(owned(&state, &caller, &id)?))
}

/// `POST /v1/approvals/{id}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Decision {
    /// Approve (true) or deny (false).
    pub approved: bool,
    /// Why.
    #[serde(default)]
    pub note: Option<String>,
}

pub(crate) async fn decide(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(id): P<String>,
    Body(body): Body<Decision>,
) -> ApiResult<axum::Json<v1::ApprovalSummary>> {
    caller.require("approvals:decide")?;
    let card = owned(&state, &caller, &id)?;
    // A decision now would not resume its run here: the client decides on the next server.
    if state.stopping() {
        return Err(Problem::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down; decide on another one",
        ));
    }
    let decided = state
        .rein
        .decide(&id, body.approved, &caller.user, body.note)
        .await?;
    events::resume(&state, card.approval.run_id.clone(), caller.tenant.clone());
    Ok(axum::Json(decided))
}
