//! HTTP plumbing shared by the OpenAI and Anthropic providers: one client setup, one mapping from
//! HTTP failures to [`ProviderError`].

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::ProviderError;

/// Builds an HTTP client with rustls on the `ring` provider and the platform's roots.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    // Installing fails harmlessly when a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// The URL a provider posts to: `path` under the model's `base_url`, read once, when the provider
/// is made (a URL given as text was read again at every call: three readings of a URL were
/// about 2% of a gateway request's instructions, and this one is rein's own). A `base_url` that
/// is not an http(s) URL is refused then, naming the model, rather than failing every call.
pub(crate) fn endpoint(base_url: &str, path: &str, model: &str) -> Result<reqwest::Url, String> {
    let refused = |why: String| {
        format!(
            "model `{model}`: base_url {base_url:?} is not an http or https URL ({why}); write it \
             in full, as https://api.openai.com/v1 or http://127.0.0.1:8080/v1"
        )
    };
    let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
        .map_err(|e| refused(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refused(format!("its scheme is {:?}", url.scheme())));
    }
    Ok(url)
}

/// Posts a JSON body and returns the JSON answer, mapping every failure to a [`ProviderError`].
pub(crate) async fn post_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: HeaderMap,
    body: &(impl serde::Serialize + ?Sized),
    timeout: Duration,
) -> Result<Value, ProviderError> {
    let response = client
        .post(url.clone())
        .headers(headers)
        .json(body)
        .send()
        .await
        .map_err(|e| send_error(e, timeout))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let text = read_capped(response, timeout).await?;
    if status.is_success() {
        return serde_json::from_str(&text).map_err(|e| ProviderError::Malformed {
            detail: format!("the body is not JSON ({e}): {}", snippet(&text)),
        });
    }
    let error = ErrorBody::read(status.as_u16(), &text);
    let code = status.as_u16();
    let message = error.message;
    Err(match code {
        _ if error.account || code == 402 => ProviderError::Account {
            status: code,
            message,
        },
        429 => ProviderError::RateLimited {
            retry_after,
            message,
        },
        408 | 500..=599 => ProviderError::Server {
            status: code,
            retry_after,
            message,
        },
        _ => ProviderError::Rejected {
            status: code,
            message,
        },
    })
}

/// The most bytes rein reads of an answer: a reply larger than this is not a model's.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Reads an answer's body, refusing one past [`MAX_ANSWER_BYTES`] without reading it all.
async fn read_capped(
    mut response: reqwest::Response,
    timeout: Duration,
) -> Result<String, ProviderError> {
    let too_big = || ProviderError::Malformed {
        detail: format!("the answer is larger than {MAX_ANSWER_BYTES} bytes"),
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| send_error(e, timeout))? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn send_error(e: reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout { after: timeout }
    } else {
        // Without the URL: it may carry a key in a query string.
        ProviderError::Transport {
            message: e.without_url().to_string(),
        }
    }
}

/// Reads `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// What an error answer says: its message, and whether it refuses the account rather than the
/// request.
struct ErrorBody {
    message: String,
    account: bool,
}

/// The error types and codes by which OpenAI-compatible APIs (`insufficient_quota` and the
/// billing ones) and Anthropic (`billing_error`) say an account is out of credit or quota.
const ACCOUNT_ERRORS: &[&str] = &[
    "insufficient_quota",
    "billing_hard_limit_reached",
    "billing_not_active",
    "billing_error",
];

/// How Anthropic's 400 for a spent credit balance begins.
const NO_CREDIT: &str = "Your credit balance is too low";

impl ErrorBody {
    /// Reads `{"error": {"message", "type", "code"}}` (both APIs' shape) or `{"error": "<code>"}`;
    /// any other body is its own message.
    fn read(status: u16, body: &str) -> ErrorBody {
        let parsed = serde_json::from_str::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
        let message = field("message").map_or_else(|| snippet(body), str::to_owned);
        let named = [field("type"), field("code"), error.and_then(Value::as_str)]
            .into_iter()
            .flatten()
            .any(|k| ACCOUNT_ERRORS.contains(&k));
        // Anthropic says it with a 400 and the type of a malformed request: only its own words,
        // from the start, tell them apart. (Words a client's values put in a message, which an
        // upstream may quote, must not open the model's breaker for everyone.)
        let no_credit = status == 400
            && parsed.as_ref().and_then(|v| v.get("type")) == Some(&Value::from("error"))
            && field("type") == Some("invalid_request_error")
            && message.starts_with(NO_CREDIT);
        ErrorBody {
            message,
            account: named || no_credit,
        }
    }
}

fn snippet(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "(empty body)".into();
    }
    let mut end = trimmed.len().min(300);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    if end < trimmed.len() {
        format!("{}…", &trimmed[..end])
    } else {
        trimmed.to_owned()
    }
}
