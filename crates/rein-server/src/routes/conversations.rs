//! `/v1/conversations`: the gateway's conversations of the caller's tenant (the labels each has
//! seen, the calls held for it), forgetting one, and pruning those unused for days. All need
//! `admin`: a conversation's name and labels say what its user's agent did, and forgetting its
//! labels lets its next request do what they forbade (the audit trail names the token that
//! asked). Each reads or writes the conversations' file off the request threads (another
//! process may hold its lock for a while).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use rein_api::{ConversationQuery, v1};
use serde::Deserialize;

use crate::auth::{Auth, Body, Q};
use crate::problem::{ApiResult, Problem, blocking};
use crate::state::AppState;

/// `GET /v1/conversations` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Only this gateway's.
    #[serde(default)]
    pub agent: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Q(q): Q<ListQuery>,
) -> ApiResult<axum::Json<Vec<v1::Conversation>>> {
    caller.require("admin")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`limit` is 1 to 1000",
        ));
    }
    let rein = state.rein.clone();
    let listed = blocking(move || {
        let query = ConversationQuery {
            tenant: Some(&caller.tenant),
            agent: q.agent.as_deref(),
        };
        rein.list_conversations(query, limit)
    })
    .await?;
    Ok(axum::Json(listed))
}

pub(crate) async fn forget(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Body(body): Body<v1::ForgetConversation>,
) -> ApiResult<StatusCode> {
    caller.require("admin")?;
    let rein = state.rein.clone();
    blocking(move || {
        let key = v1::ConversationKey {
            // The caller's tenant's only.
            tenant: caller.tenant.clone(),
            user: body.user,
            agent: body.agent,
            conversation: body.conversation,
        };
        rein.forget_conversation(key, Some(&caller))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn prune(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Body(body): Body<v1::PruneConversations>,
) -> ApiResult<axum::Json<v1::Pruned>> {
    caller.require("admin")?;
    let rein = state.rein.clone();
    let pruned = blocking(move || {
        let query = ConversationQuery {
            // The caller's tenant's only.
            tenant: Some(&caller.tenant),
            agent: body.agent.as_deref(),
        };
        rein.prune_conversations(query, body.unused_for_days, crate::now_ms(), Some(&caller))
    })
    .await?;
    Ok(axum::Json(v1::Pruned {
        pruned: pruned as u64,
    }))
}
