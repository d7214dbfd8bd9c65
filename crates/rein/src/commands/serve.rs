//! `rein serve` and `rein tokens`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rein_api::Rein;
use rein_server::{Limits, ServeOptions, Server};

use crate::out::{self, outln};

/// What `rein serve` was asked.
pub(crate) struct Serve {
    pub(crate) listen: String,
    pub(crate) agents: Vec<PathBuf>,
    pub(crate) limits: Limits,
    pub(crate) drain: Duration,
}

/// Resolves on SIGTERM or SIGINT.
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub(crate) async fn serve(rein: Rein, s: Serve) -> anyhow::Result<u8> {
    let server = Server::new(
        Arc::new(rein),
        ServeOptions {
            agents: s.agents,
            limits: s.limits,
            drain: s.drain,
        },
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(&s.listen)
        .await
        .with_context(|| format!("cannot listen on {}", s.listen))?;
    let addr = listener.local_addr()?;
    outln!("rein serve: listening on http://{addr}");
    server.serve(listener, terminated()).await?;
    eprintln!("rein serve: stopped; runs in flight were left resumable");
    Ok(0)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn create_token(
    rein: &Rein,
    tenant: &str,
    user: Option<&str>,
    scopes: &[String],
    expires_in_days: Option<u64>,
    json: bool,
) -> anyhow::Result<u8> {
    let now = now_ms();
    let expires = expires_in_days.map(|d| now.saturating_add(d.saturating_mul(86_400_000)));
    let (token, info) = rein.create_token(tenant, user.unwrap_or(tenant), scopes, expires, now)?;
    if json {
        out::json(&serde_json::json!({"token": token, "info": info}))?;
    } else {
        outln!("{token}");
        eprintln!(
            "token {} for tenant {} as user {} ({}); it is shown only now",
            info.id,
            info.tenant,
            info.user,
            info.scopes.join(", ")
        );
    }
    Ok(0)
}

pub(crate) fn list_tokens(rein: &Rein, tenant: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let tokens = rein.list_tokens(tenant)?;
    if json {
        out::json(&tokens)?;
        return Ok(0);
    }
    outln!(
        "{:<12}  {:<16}  {:<16}  {:<40}  state",
        "id",
        "tenant",
        "user",
        "scopes"
    );
    for t in tokens {
        let state = match (t.revoked_ms, t.expires_ms) {
            (Some(_), _) => "revoked",
            (None, Some(at)) if at <= now_ms() => "expired",
            _ => "active",
        };
        outln!(
            "{:<12}  {:<16}  {:<16}  {:<40}  {state}",
            t.id,
            t.tenant,
            t.user,
            t.scopes.join(",")
        );
    }
    Ok(0)
}

pub(crate) fn revoke_token(rein: &Rein, id: &str) -> anyhow::Result<u8> {
    rein.revoke_token(id, now_ms())?;
    outln!("token {id} revoked");
    Ok(0)
}
