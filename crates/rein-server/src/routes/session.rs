//! `/v1/session`: the dashboard signs in with a token, which the server keeps in an HttpOnly,
//! SameSite=Strict cookie (the page's scripts never hold it), reads who it is signed in as, and
//! signs out.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Body, SESSION_COOKIE};
use crate::problem::{ApiResult, Problem};
use crate::state::AppState;

/// `POST /v1/session`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignIn {
    /// A token made with `rein tokens create`.
    pub token: String,
}

/// Who a session (or a bearer token) acts as, and what it may do.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct Session {
    /// The tenant: everything the session sees is this tenant's.
    pub tenant: String,
    /// The user: approvals it decides are decided by them.
    pub user: String,
    /// The token's scopes.
    pub scopes: Vec<String>,
}

impl Session {
    fn of(caller: &rein_api::Caller) -> Session {
        Session {
            tenant: caller.tenant.clone(),
            user: caller.user.clone(),
            scopes: caller.scopes.clone(),
        }
    }
}

/// The cookie for `token`, for twelve hours.
fn cookie(token: &str, max_age: u64) -> String {
    format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}")
}

pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    Body(body): Body<SignIn>,
) -> ApiResult<Response> {
    let token = body.token.trim();
    // Only what a token is made of goes into a cookie.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "that is not a rein token (rein_<id>_<secret>)",
        ));
    }
    let caller = state.rein.authenticate(token, crate::now_ms())?;
    state.rate.admit(&caller.token_id)?;
    let mut response = axum::Json(Session::of(&caller)).into_response();
    if let Ok(v) = cookie(token, 12 * 3600).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

pub(crate) async fn show(Auth(caller): Auth) -> axum::Json<Session> {
    axum::Json(Session::of(&caller))
}

pub(crate) async fn sign_out(_headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = cookie("", 0).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}
