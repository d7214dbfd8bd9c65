//! Who a request acts as: the bearer token, checked by the engine API, fixes the tenant and user;
//! each token's request rate is limited (429 with Retry-After). Bodies are JSON, refused as a
//! problem document when they are not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use rein_api::Caller;
use serde::de::DeserializeOwned;

use crate::problem::Problem;
use crate::state::AppState;

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub Caller);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let bearer = token(&parts.headers, &parts.method)?;
        let caller = state.rein.authenticate(bearer, crate::now_ms())?;
        state.rate.admit(&caller.token_id)?;
        Ok(Auth(caller))
    }
}

/// The cookie the dashboard keeps its token in (HttpOnly, SameSite=Strict).
pub(crate) const SESSION_COOKIE: &str = "rein_session";

/// The header a dashboard request that changes something carries: a page on another site cannot
/// make a browser send it (a custom header needs a CORS preflight, which rein never grants), so a
/// cookie alone never authorizes a change.
pub(crate) const DASHBOARD_HEADER: &str = "x-rein-dashboard";

/// The token a request carries: `Authorization: Bearer`, or else the dashboard's session cookie
/// (for a request that changes something, only with [`DASHBOARD_HEADER`]).
pub(crate) fn token<'a>(
    headers: &'a axum::http::HeaderMap,
    method: &axum::http::Method,
) -> Result<&'a str, Problem> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return bearer(headers);
    }
    let Some(cookie) = session_cookie(headers) else {
        return bearer(headers);
    };
    let safe = matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe && headers.get(DASHBOARD_HEADER).is_none() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "a request signed in by the dashboard's cookie must carry `{DASHBOARD_HEADER}: 1`"
            ),
        ));
    }
    Ok(cookie)
}

/// The dashboard's session cookie, if the request has one.
/// Two of them (one planted by a sibling domain, say) count as none.
pub(crate) fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    let mut found = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The bearer token a request carries.
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, Problem> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <token>`; `rein tokens create` makes one",
            )
        })?;
    let bearer = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be `Bearer <token>`",
            )
        })?;
    Ok(bearer.trim())
}

/// Per-token request rates: a bucket of `burst` requests refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// A limiter letting each token make `per_second` requests a second, `burst` at once.
    pub(crate) fn new(per_second: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            per_second: per_second.max(0.001),
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the token's bucket, or says when to come back.
    pub(crate) fn admit(&self, token: &str) -> Result<(), Problem> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(token.to_owned()).or_insert((self.burst, now));
        let refilled =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            return Ok(());
        }
        *tokens = refilled;
        let wait = ((1.0 - refilled) / self.per_second).ceil() as u64;
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this token may make {} requests a second; try again in {wait} s",
                self.per_second
            ),
        );
        problem.retry_after = Some(wait.max(1));
        Err(problem)
    }
}

/// A JSON request body; a body that is not JSON, too large or of the wrong shape is refused as
/// a problem document naming what was wrong.
#[derive(Debug)]
pub(crate) struct Body<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// Query parameters; ones that do not parse are refused as a problem document.
#[derive(Debug)]
pub(crate) struct Q<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for Q<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Q(v)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}

/// Path parameters; ones that do not parse are refused as a problem document.
#[derive(Debug)]
pub(crate) struct P<T>(pub(crate) T);

impl<T, S> FromRequestParts<S> for P<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(P(v)),
            Err(rejection) => Err(Problem::new(rejection.status(), rejection.body_text())),
        }
    }
}
