//! `/v1/session`: the dashboard signs in with a token, which the server keeps in an HttpOnly,
//! SameSite=Strict cookie (the page's scripts never hold it), reads who it is signed in as, and
//! signs out.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Body, SESSION_COOKIE};
use crate::problem::ApiResult;
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

/// How long a dashboard session lasts.
const SESSION_MS: u64 = 12 * 3600 * 1000;

/// The session cookie: HttpOnly, SameSite=Strict, and Secure when the request came over TLS
/// (through a proxy that says so), so it is never sent in clear after that.
fn cookie(token: &str, max_age_secs: u64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether the request reached the proxy in front of rein over TLS.
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// Signs in: the token is checked, and the cookie gets a session of its own, a token with the
/// same tenant, user and scopes that expires in twelve hours and is revoked at sign-out, so the
/// token typed in never sits in a browser.
pub(crate) async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Body(body): Body<SignIn>,
) -> ApiResult<Response> {
    let token = body.token.trim();
    let now = crate::now_ms();
    let caller = state.rein.authenticate(token, now)?;
    state.rate.admit(&caller.token_id)?;
    let (session, _) = state.rein.create_token(
        &caller.tenant,
        &caller.user,
        &caller.scopes,
        Some(now + SESSION_MS),
        now,
    )?;
    let mut response = axum::Json(Session::of(&caller)).into_response();
    if let Ok(v) = cookie(&session, SESSION_MS / 1000, over_tls(&headers)).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

pub(crate) async fn show(Auth(caller): Auth) -> axum::Json<Session> {
    axum::Json(Session::of(&caller))
}

/// Signs out: the session's token is revoked and the cookie cleared.
pub(crate) async fn sign_out(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(session) = crate::auth::session_cookie(&headers)
        && let Ok(caller) = state.rein.authenticate(session, crate::now_ms())
    {
        let _ = state.rein.revoke_token(&caller.token_id, crate::now_ms());
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = cookie("", 0, over_tls(&headers)).parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}
