//! `http.get`: fetches a URL whose host is on the agent's allowlist.
//!
//! Redirects are followed by hand (at most five), and each hop's host must be on the allowlist
//! too, so an allowed server cannot send the agent elsewhere.

use std::time::Duration;

use rein_core::BoxFuture;
use serde_json::{Value, json};
use url::Url;

use crate::{Tool, ToolContext, ToolError, ToolManifest};

const MAX_REDIRECTS: usize = 5;

/// Fetches URLs from an allowlist of hosts.
#[derive(Debug)]
pub struct HttpGet {
    manifest: ToolManifest,
    allow_hosts: Vec<String>,
    max_bytes: usize,
    client: reqwest::Client,
}

impl HttpGet {
    /// A fetcher for these hosts. An entry is a host name (`api.example.com`, any port), a host and
    /// port (`127.0.0.1:8080`), or a wildcard for subdomains (`*.example.com`).
    pub fn new(
        allow_hosts: Vec<String>,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<HttpGet, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let description = format!(
            "HTTP GET a URL and return its status and body (text, at most {max_bytes} bytes). Allowed hosts: {}.",
            allow_hosts.join(", ")
        );
        Ok(HttpGet {
            manifest: ToolManifest {
                name: "http.get".into(),
                description,
                parameters: json!({
                    "type": "object",
                    "properties": {"url": {"type": "string", "description": "An http or https URL on an allowed host"}},
                    "required": ["url"],
                    "additionalProperties": false
                }),
                idempotent: true,
                timeout,
            },
            allow_hosts: allow_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            max_bytes,
            client,
        })
    }

    fn check(&self, url: &Url) -> Result<(), ToolError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ToolError::Refused(format!(
                "`{url}`: only http and https URLs can be fetched"
            )));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default().unwrap_or(0);
        if host_allowed(&self.allow_hosts, &host, port) {
            Ok(())
        } else {
            Err(ToolError::Refused(format!(
                "host `{host}` is not on this agent's http.get allowlist"
            )))
        }
    }
}

/// Whether `host:port` is on an allowlist of `host`, `host:port`, `*.domain` (its subdomains)
/// and `*` (any host). Hosts are compared lower-cased.
pub fn host_allowed(allow: &[String], host: &str, port: u16) -> bool {
    let host = host.to_ascii_lowercase();
    allow.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        if entry == "*" {
            true
        } else if let Some(suffix) = entry.strip_prefix("*.") {
            host.ends_with(&format!(".{suffix}"))
        } else if let Some((h, p)) = entry
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
        {
            host == h && p.parse::<u16>().ok() == Some(port)
        } else {
            host == entry
        }
    })
}

impl Tool for HttpGet {
    fn manifest(&self) -> &ToolManifest {
        &self.manifest
    }

    fn call<'a>(
        &'a self,
        _ctx: &'a ToolContext,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let raw = args.get("url").and_then(Value::as_str).unwrap_or_default();
            let mut url = Url::parse(raw)
                .map_err(|e| ToolError::Failed(format!("`{raw}` is not a URL: {e}")))?;
            let mut hops = 0;
            let mut response = loop {
                self.check(&url)?;
                let response = self.client.get(url.clone()).send().await.map_err(|e| {
                    if e.is_timeout() {
                        ToolError::Timeout(self.manifest.timeout)
                    } else {
                        ToolError::Failed(format!("GET {url} failed: {}", e.without_url()))
                    }
                })?;
                if !response.status().is_redirection() {
                    break response;
                }
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(ToolError::Failed(format!(
                        "more than {MAX_REDIRECTS} redirects"
                    )));
                }
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| ToolError::Failed("a redirect without a Location".into()))?;
                url = url
                    .join(location)
                    .map_err(|e| ToolError::Failed(format!("a redirect to a bad URL: {e}")))?;
            };
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = response.chunk().await.map_err(|e| {
                ToolError::Failed(format!("reading the body failed: {}", e.without_url()))
            })? {
                let room = self.max_bytes - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(json!({
                "url": url.as_str(),
                "status": status,
                "content_type": content_type,
                "body": String::from_utf8_lossy(&body),
                "truncated": truncated,
            }))
        })
    }
}
