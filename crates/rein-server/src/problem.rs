//! Errors as `application/problem+json` (RFC 9457): a type, a title, the status, and a detail
//! naming what was wrong and what to do.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rein_api::Error;
use serde::Serialize;

/// Runs `f`, an engine API call that reads or writes files (the audit log, a side database
/// another process may hold locked), on a blocking thread rather than a request's worker.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(Problem::from)
}

/// An error answered as a problem document.
#[derive(Debug)]
pub(crate) struct Problem {
    /// The status.
    pub status: StatusCode,
    /// What was wrong and what to do.
    pub detail: String,
    /// For 429: seconds until a request would be let through.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem with this status and detail.
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 404, worded the same whether the thing does not exist or belongs to another tenant.
    pub(crate) fn not_found(what: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, format!("no {what} with that id"))
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        let status = match &e {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Verification(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        Problem::new(status, e.to_string())
    }
}

/// Tells apart the server errors of this process, to find one in the log.
static ERROR_REFS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl IntoResponse for Problem {
    fn into_response(mut self) -> Response {
        // A server error's cause (a database message, a path) stays in the log; the client
        // gets a reference to it.
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            let reference = format!(
                "{:x}-{}",
                std::process::id(),
                ERROR_REFS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            tracing::error!(error = %self.detail, reference = %reference, "request failed");
            self.detail = format!(
                "rein could not complete the request; the server's log has the cause under \
                 reference {reference}"
            );
        }
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::to_vec(&Body {
            kind: "about:blank",
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rein\""),
            );
        }
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        response
    }
}

/// A handler's result.
pub(crate) type ApiResult<T> = Result<T, Problem>;
