//! The agents served (their tools, a policy explanation), usage, and the audit trail (verify,
//! proofs, export streamed as JSON lines). Audit records and usage are the caller's tenant's;
//! verifying the whole log needs `admin`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rein_api::{RunQuery, v1};
use serde::{Deserialize, Serialize};

use crate::auth::{Auth, Body, P, Q};
use crate::problem::{ApiResult, Problem, blocking};
use crate::state::AppState;

/// One agent served.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(crate) struct AgentRow {
    /// Its name.
    pub name: String,
    /// The digest of its configuration as loaded.
    pub digest: String,
}

pub(crate) async fn agents(
    State(state): State<Arc<AppState>>,
    Auth(_caller): Auth,
) -> ApiResult<axum::Json<Vec<AgentRow>>> {
    for p in state.agents.refresh(&state.rein).await {
        tracing::warn!(problem = %p, "an agent could not be loaded");
    }
    Ok(axum::Json(
        state
            .agents
            .all()
            .await
            .iter()
            .map(|a| AgentRow {
                name: a.name().to_owned(),
                digest: a.digest().to_owned(),
            })
            .collect(),
    ))
}

async fn agent(state: &AppState, name: &str) -> ApiResult<Arc<rein_api::LoadedAgent>> {
    state.agents.get(&state.rein, name).await.ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            format!("no agent `{name}` is served here"),
        )
    })
}

pub(crate) async fn tools(
    State(state): State<Arc<AppState>>,
    Auth(_caller): Auth,
    P(name): P<String>,
) -> ApiResult<axum::Json<v1::ToolsList>> {
    let a = agent(&state, &name).await?;
    // Listed once per configuration (listing starts the agent's MCP servers), not per request.
    let mut listed = state.tools_listed.lock().await;
    if let Some(list) = listed.get(a.digest()) {
        return Ok(axum::Json(list.clone()));
    }
    let list = state.rein.tools_list(a.dir(), false).await?;
    listed.insert(a.digest().to_owned(), list.clone());
    Ok(axum::Json(list))
}

pub(crate) async fn explain(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(name): P<String>,
    Body(mut request): Body<v1::ExplainRequest>,
) -> ApiResult<axum::Json<v1::Decision>> {
    let a = agent(&state, &name).await?;
    // The caller's tenant and user, whatever the body says.
    request.tenant = caller.tenant.clone();
    request.user = caller.user.clone();
    Ok(axum::Json(state.rein.policy_explain_on(&a, &request)?))
}

/// `GET /v1/usage` parameters.
#[derive(Debug, Deserialize)]
pub(crate) struct UsageQuery {
    /// Only periods from this one on (`2026-11-01`, `2026-11`).
    #[serde(default)]
    pub since: Option<String>,
}

pub(crate) async fn usage(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Q(q): Q<UsageQuery>,
) -> ApiResult<axum::Json<Vec<v1::UsageRow>>> {
    // The tenant's own lines, whatever the token's scopes: another tenant's spending is not
    // its business.
    Ok(axum::Json(state.rein.usage(
        None,
        None,
        Some(caller.tenant.as_str()),
        q.since.as_deref(),
    )?))
}

/// `GET /v1/spend`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpendQuery {
    /// Days back, today included (default 14, at most 366).
    #[serde(default)]
    pub days: Option<u64>,
}

pub(crate) async fn spend(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Q(q): Q<SpendQuery>,
) -> ApiResult<axum::Json<Vec<v1::SpendRow>>> {
    let days = q.days.unwrap_or(14);
    if !(1..=366).contains(&days) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`days` is 1 to 366",
        ));
    }
    // The tenant's own spending only.
    let rein = state.rein.clone();
    let tenant = caller.tenant.clone();
    let rows = blocking(move || rein.spend(&tenant, days, crate::now_ms())).await?;
    Ok(axum::Json(rows))
}

pub(crate) async fn verify(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
) -> ApiResult<axum::Json<v1::AuditVerify>> {
    caller.require("admin")?;
    let rein = state.rein.clone();
    let report = blocking(move || rein.audit_verify(None, None)).await?;
    // The whole log is verified (it is one chain), but the runs named are the tenant's.
    let mine = tenant_runs(&state, &caller.tenant)?;
    let mut report = report;
    report.trail.in_progress.retain(|run| mine.contains(run));
    report.trail.legacy.retain(|run| mine.contains(run));
    for problem in &mut report.trail.problems {
        if !mine.iter().any(|run| problem.contains(run.as_str())) {
            *problem = "a problem in another tenant's run".into();
        }
    }
    Ok(axum::Json(report))
}

/// The ids of the tenant's runs.
fn tenant_runs(state: &AppState, tenant: &str) -> ApiResult<HashSet<String>> {
    Ok(state
        .rein
        .list_runs(&RunQuery {
            limit: usize::MAX >> 1,
            tenant: Some(tenant.to_owned()),
            ..RunQuery::default()
        })?
        .into_iter()
        .map(|r| r.id)
        .collect())
}

pub(crate) async fn proof(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    P(seq): P<u64>,
) -> ApiResult<axum::Json<v1::InclusionProof>> {
    caller.require("audit:read")?;
    let rein = state.rein.clone();
    let proof = tokio::task::spawn_blocking(move || rein.audit_proof(seq, None))
        .await
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            rein_api::Error::Invalid(_) | rein_api::Error::Verification(_) => {
                Problem::not_found("audit record")
            }
            other => other.into(),
        })?;
    let runs = tenant_runs(&state, &caller.tenant)?;
    let record = serde_json::from_str::<serde_json::Value>(&proof.record).unwrap_or_default();
    let kind = record
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let run = record.get("run_id").and_then(|v| v.as_str());
    let data = record.get("data").cloned().unwrap_or_default();
    if tenants(kind, run, &data, &runs, &caller.tenant) {
        Ok(axum::Json(proof))
    } else {
        Err(Problem::not_found("audit record"))
    }
}

/// Whether an audit record (of kind `kind`, of run `run`, with `data`) is `tenant`'s, whose
/// runs are `runs`: of the records of no run, only a forgotten conversation's is a tenant's (the
/// one it names); the others (a key's rotation) are no tenant's.
fn tenants(
    kind: &str,
    run: Option<&str>,
    data: &serde_json::Value,
    runs: &HashSet<String>,
    tenant: &str,
) -> bool {
    match run {
        Some(run) => runs.contains(run),
        None => {
            kind == rein_api::CONVERSATION_FORGOTTEN
                && data.get("tenant").and_then(|t| t.as_str()) == Some(tenant)
        }
    }
}

/// `GET /v1/audit/export` parameters.
#[derive(Debug, Deserialize)]
pub(crate) struct ExportQuery {
    /// Only records from this time on (ms since the epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only this run's records.
    #[serde(default)]
    pub run: Option<String>,
}

pub(crate) async fn export(
    State(state): State<Arc<AppState>>,
    Auth(caller): Auth,
    Q(q): Q<ExportQuery>,
) -> ApiResult<Response> {
    caller.require("audit:read")?;
    let runs = tenant_runs(&state, &caller.tenant)?;
    let tenant = caller.tenant.clone();
    let rein = state.rein.clone();
    let run = q.run.clone();
    let records = blocking(move || rein.audit_records(run.as_deref(), q.since_ms)).await?;
    // Streamed as JSON lines, a chunk at a time.
    let lines = records
        .into_iter()
        .filter(move |r| tenants(&r.kind, r.run_id.as_deref(), &r.data, &runs, &tenant))
        .map(|r| {
            let mut line = serde_json::to_vec(&r).unwrap_or_default();
            line.push(b'\n');
            Ok::<_, std::convert::Infallible>(line)
        });
    let stream = futures_util::stream::iter(lines);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        HttpBody::from_stream(stream),
    )
        .into_response())
}
