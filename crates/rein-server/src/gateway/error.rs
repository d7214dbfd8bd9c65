//! A gateway error in the shape of the API its face stands in for, saying whether a retry may
//! help as the official SDKs read it (`x-should-retry`, `Retry-After`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Dialect;

/// The header the official SDKs read before deciding to send a refused request again.
const SHOULD_RETRY: &str = "x-should-retry";

/// A gateway error, answered in its face's shape.
#[derive(Debug)]
pub(crate) struct GwError {
    pub status: StatusCode,
    pub message: String,
    pub dialect: Dialect,
    /// Whether sending the request again may help, as the official SDKs read it.
    pub retry: Retry,
}

/// Whether a client should send a refused request again. The official `openai` and `anthropic`
/// SDKs retry 408, 409, 429 and 5xx on their own (twice by default) unless the answer says
/// otherwise (`x-should-retry`), waiting as `Retry-After` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// As the status says: a conflict in a second, anything else as the SDKs decide.
    AsStatus,
    /// In this many seconds (`Retry-After`, `x-should-retry: true`): a token's request rate.
    After(u64),
    /// Not: sending it again changes nothing (`x-should-retry: false`), as for a spent budget,
    /// which a retry would only be refused on again.
    Never,
}

impl GwError {
    pub(crate) fn new(dialect: Dialect, status: StatusCode, message: impl Into<String>) -> Self {
        GwError {
            status,
            message: message.into(),
            dialect,
            retry: Retry::AsStatus,
        }
    }

    pub(crate) fn from_api(dialect: Dialect, e: rein_api::Error) -> Self {
        let p = crate::problem::Problem::from(e);
        GwError::new(dialect, p.status, p.detail)
    }

    /// The same error, with what it tells a client about sending the request again.
    pub(crate) fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }
}

/// The error type names each API uses for a status.
fn kind(dialect: Dialect, status: StatusCode, retry: Retry) -> &'static str {
    match (dialect, status.as_u16()) {
        // OpenAI tells a spent quota from a rate: only the rate is worth waiting out.
        (Dialect::OpenAi, 429) if retry == Retry::Never => "insufficient_quota",
        (Dialect::OpenAi, 429) => "rate_limit_exceeded",
        (Dialect::OpenAi, 400 | 404 | 405 | 413 | 415 | 422) => "invalid_request_error",
        (Dialect::OpenAi, 401) => "authentication_error",
        (Dialect::OpenAi, 403) => "permission_denied",
        (Dialect::OpenAi, _) => "server_error",
        (Dialect::Anthropic, 400 | 405 | 413 | 415 | 422) => "invalid_request_error",
        (Dialect::Anthropic, 401) => "authentication_error",
        (Dialect::Anthropic, 403) => "permission_error",
        (Dialect::Anthropic, 404) => "not_found_error",
        (Dialect::Anthropic, 429) => "rate_limit_error",
        (Dialect::Anthropic, _) => "api_error",
    }
}

impl IntoResponse for GwError {
    fn into_response(self) -> Response {
        let mut message = self.message;
        // rein's own failures keep their cause in the log (a database message, a path); an
        // upstream's failure (502) is the client's to read.
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %message, "gateway request failed");
            message = "rein could not complete the request; the server's log has the cause".into();
        }
        let kind = kind(self.dialect, self.status, self.retry);
        let body = match self.dialect {
            Dialect::OpenAi => serde_json::json!({
                "error": {"message": message, "type": kind, "param": null, "code": kind}
            }),
            Dialect::Anthropic => serde_json::json!({
                "type": "error", "error": {"type": kind, "message": message}
            }),
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        // A conflict is a request whose first try is still being answered: worth sending again
        // in a moment.
        let retry = match self.retry {
            Retry::AsStatus if self.status == StatusCode::CONFLICT => Retry::After(1),
            retry => retry,
        };
        let headers = response.headers_mut();
        match retry {
            Retry::AsStatus => {}
            Retry::After(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                headers.insert(SHOULD_RETRY, HeaderValue::from_static("true"));
            }
            Retry::Never => {
                headers.insert(SHOULD_RETRY, HeaderValue::from_static("false"));
            }
        }
        response
    }
}
