//! The OpenAPI 3.1 document, generated from the code: the route table below names each
//! operation's parameters, body and answer by their Rust types, whose JSON Schemas come from the
//! wire types themselves (`schemars`). `docs/openapi.json` is a copy, checked current by a test.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::routes::{admin, approvals, runs, session};
use rein_api::v1;

/// A query or path parameter.
struct Param {
    name: &'static str,
    location: &'static str,
    schema: Value,
    description: &'static str,
}

fn path(name: &'static str, schema: Value, description: &'static str) -> Param {
    Param {
        name,
        location: "path",
        schema,
        description,
    }
}

fn query(name: &'static str, schema: Value, description: &'static str) -> Param {
    Param {
        name,
        location: "query",
        schema,
        description,
    }
}

fn run_id() -> Param {
    path(
        "id",
        json!({"type": "string"}),
        "The run's id (32 lower-case hex digits)",
    )
}

/// What an operation answers with on success.
enum Answer {
    Json(u16, Value),
    Text(&'static str, &'static str),
    /// A stream whose every item has this schema.
    Stream(&'static str, Value),
    /// No content (204).
    Empty,
}

struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    params: Vec<Param>,
    body: Option<Value>,
    answer: Answer,
    secured: bool,
}

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    serde_json::to_value(generator.subschema_for::<T>()).unwrap_or(Value::Null)
}

fn ops(g: &mut SchemaGenerator) -> Vec<Op> {
    let op = |method, path, id, summary, params, body, answer| Op {
        method,
        path,
        id,
        summary,
        params,
        body,
        answer,
        secured: true,
    };
    vec![
        op(
            "post",
            "/v1/runs",
            "startRun",
            "Start a run; answered at once, the run goes on in the server",
            vec![],
            Some(schema::<runs::StartRequest>(g)),
            Answer::Json(202, schema::<runs::Started>(g)),
        ),
        op(
            "get",
            "/v1/runs",
            "listRuns",
            "The tenant's most recent runs",
            vec![
                query(
                    "limit",
                    json!({"type": "integer", "minimum": 0, "maximum": 1000}),
                    "At most this many (default 50)",
                ),
                query("agent", json!({"type": "string"}), "Only this agent's"),
                query("user", json!({"type": "string"}), "Only this user's"),
            ],
            None,
            Answer::Json(200, schema::<Vec<v1::RunSummary>>(g)),
        ),
        op(
            "get",
            "/v1/runs/{id}",
            "showRun",
            "A run with its whole log",
            vec![run_id()],
            None,
            Answer::Json(200, schema::<v1::RunDetail>(g)),
        ),
        op(
            "get",
            "/v1/runs/{id}/events",
            "followRun",
            "The run's events as Server-Sent Events (`id` is the event's sequence number, `data` an EventRecord), from after `from` or `Last-Event-ID`, until it ends",
            vec![
                run_id(),
                query(
                    "from",
                    json!({"type": "integer", "minimum": 0}),
                    "Events after this sequence number",
                ),
            ],
            None,
            Answer::Stream("text/event-stream", schema::<v1::EventRecord>(g)),
        ),
        op(
            "post",
            "/v1/runs/{id}/cancel",
            "cancelRun",
            "Cancel a run",
            vec![run_id()],
            None,
            Answer::Json(200, schema::<v1::CancelOutcome>(g)),
        ),
        op(
            "post",
            "/v1/runs/{id}/resume",
            "resumeRun",
            "Resume an interrupted or suspended run in the server",
            vec![run_id()],
            None,
            Answer::Json(
                202,
                json!({"type": "object", "properties": {"run_id": {"type": "string"}, "events": {"type": "string"}}, "required": ["run_id", "events"]}),
            ),
        ),
        op(
            "post",
            "/v1/runs/{id}/reconcile",
            "reconcileRun",
            "Settle the call a run stopped in doubt on",
            vec![run_id()],
            Some(schema::<runs::ReconcileRequest>(g)),
            Answer::Json(
                200,
                json!({"type": "object", "properties": {"run_id": {"type": "string"}, "call": {"type": "string"}, "next": {"type": "string"}}, "required": ["run_id", "call", "next"]}),
            ),
        ),
        op(
            "get",
            "/v1/approvals",
            "listApprovals",
            "The tenant's pending approval requests (all with `all`); `wait` waits for one",
            vec![
                query("all", json!({"type": "boolean"}), "Decided ones too"),
                query(
                    "wait",
                    json!({"type": "integer", "minimum": 0, "maximum": 60}),
                    "When none is pending, wait up to this many seconds for one",
                ),
            ],
            None,
            Answer::Json(200, schema::<Vec<v1::ApprovalSummary>>(g)),
        ),
        op(
            "get",
            "/v1/approvals/{id}",
            "showApproval",
            "The approval card",
            vec![path("id", json!({"type": "string"}), "The approval's id")],
            None,
            Answer::Json(200, schema::<v1::ApprovalCard>(g)),
        ),
        op(
            "post",
            "/v1/approvals/{id}",
            "decideApproval",
            "Approve or deny, as the token's user; the run is resumed",
            vec![path("id", json!({"type": "string"}), "The approval's id")],
            Some(schema::<approvals::Decision>(g)),
            Answer::Json(200, schema::<v1::ApprovalSummary>(g)),
        ),
        op(
            "get",
            "/v1/agents",
            "listAgents",
            "The agents served",
            vec![],
            None,
            Answer::Json(200, schema::<Vec<admin::AgentRow>>(g)),
        ),
        op(
            "get",
            "/v1/agents/{name}/tools",
            "listTools",
            "An agent's tools",
            vec![path("name", json!({"type": "string"}), "The agent's name")],
            None,
            Answer::Json(200, schema::<v1::ToolsList>(g)),
        ),
        op(
            "post",
            "/v1/agents/{name}/explain",
            "explainPolicy",
            "The verdict the agent's policies give a request, and why",
            vec![path("name", json!({"type": "string"}), "The agent's name")],
            Some(schema::<v1::ExplainRequest>(g)),
            Answer::Json(200, schema::<v1::Decision>(g)),
        ),
        op(
            "get",
            "/v1/usage",
            "usage",
            "Spending against budgets: the tenant's line (every line for an admin)",
            vec![query(
                "since",
                json!({"type": "string"}),
                "Only periods from this one on (2026-11-01, 2026-11)",
            )],
            None,
            Answer::Json(200, schema::<Vec<v1::UsageRow>>(g)),
        ),
        op(
            "get",
            "/v1/spend",
            "spend",
            "What the tenant's model calls cost, by day (UTC), model, agent and user",
            vec![query(
                "days",
                json!({"type": "integer", "minimum": 1, "maximum": 366}),
                "Days back, today included (default 14)",
            )],
            None,
            Answer::Json(200, schema::<Vec<v1::SpendRow>>(g)),
        ),
        op(
            "get",
            "/v1/conversations",
            "listConversations",
            "The tenant's gateway conversations, most recently changed first: the labels each has seen and the calls held for it (admin)",
            vec![
                query("agent", json!({"type": "string"}), "Only this gateway's"),
                query(
                    "limit",
                    json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                    "At most this many (default 100)",
                ),
            ],
            None,
            Answer::Json(200, schema::<Vec<v1::Conversation>>(g)),
        ),
        Op {
            method: "post",
            path: "/v1/conversations/forget",
            id: "forgetConversation",
            summary: "Forget the labels one of the tenant's gateway conversations has seen: its next request is judged only on what its own history carries; calls held for it stay held (admin)",
            params: vec![],
            body: Some(schema::<v1::ForgetConversation>(g)),
            answer: Answer::Empty,
            secured: true,
        },
        op(
            "post",
            "/v1/conversations/prune",
            "pruneConversations",
            "Forget the tenant's gateway conversations no request has used for days that hold no call for a person's approval (admin)",
            vec![],
            Some(schema::<v1::PruneConversations>(g)),
            Answer::Json(200, schema::<v1::Pruned>(g)),
        ),
        op(
            "get",
            "/v1/audit/verify",
            "verifyAudit",
            "Verify the whole audit log (admin)",
            vec![],
            None,
            Answer::Json(200, schema::<v1::AuditVerify>(g)),
        ),
        op(
            "get",
            "/v1/audit/proof/{seq}",
            "auditProof",
            "An inclusion proof of one of the tenant's audit records",
            vec![path(
                "seq",
                json!({"type": "integer", "minimum": 1}),
                "The record's position",
            )],
            None,
            Answer::Json(200, schema::<v1::InclusionProof>(g)),
        ),
        op(
            "get",
            "/v1/audit/export",
            "exportAudit",
            "The tenant's audit records as JSON lines",
            vec![
                query(
                    "since_ms",
                    json!({"type": "integer", "minimum": 0}),
                    "Only records from this time on",
                ),
                query("run", json!({"type": "string"}), "Only this run's records"),
            ],
            None,
            Answer::Text("application/x-ndjson", "One AuditRecord per line"),
        ),
        Op {
            method: "post",
            path: "/v1/session",
            id: "signIn",
            summary: "Sign the dashboard in with a token: the browser gets a session of its own (same tenant, user and scopes; 12 hours; revoked at sign-out) in an HttpOnly, SameSite=Strict cookie; a cookie-signed request that changes anything must carry `x-rein-dashboard: 1`",
            params: vec![],
            body: Some(schema::<session::SignIn>(g)),
            answer: Answer::Json(200, schema::<session::Session>(g)),
            secured: false,
        },
        op(
            "get",
            "/v1/session",
            "session",
            "Who the token or the dashboard's session acts as, and its scopes",
            vec![],
            None,
            Answer::Json(200, schema::<session::Session>(g)),
        ),
        Op {
            method: "delete",
            path: "/v1/session",
            id: "signOut",
            summary: "Sign the dashboard out: its session is revoked and the cookie cleared",
            params: vec![],
            body: None,
            answer: Answer::Empty,
            secured: false,
        },
        Op {
            method: "get",
            path: "/metrics",
            id: "metrics",
            summary: "Prometheus metrics (scope metrics:read)",
            params: vec![],
            body: None,
            answer: Answer::Text("text/plain", "The Prometheus text exposition format"),
            secured: true,
        },
        Op {
            method: "get",
            path: "/healthz",
            id: "health",
            summary: "Whether the process is up",
            params: vec![],
            body: None,
            answer: Answer::Text("text/plain", "ok"),
            secured: false,
        },
        Op {
            method: "get",
            path: "/readyz",
            id: "ready",
            summary: "Whether it takes requests (503 while shutting down)",
            params: vec![],
            body: None,
            answer: Answer::Text("text/plain", "ready"),
            secured: false,
        },
    ]
}

/// Whether an operation answers with no content.
fn content_is_empty(operation: &Value, code: u16) -> bool {
    operation["responses"][code.to_string()]["content"].is_null()
}

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let ops = ops(&mut generator);
    let problem = json!({
        "description": "What went wrong, as RFC 9457 problem details",
        "content": {"application/problem+json": {"schema": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}},
            "required": ["type", "title", "status", "detail"]
        }}}
    });
    let mut paths = Map::new();
    for op in ops {
        let (code, content) = match op.answer {
            Answer::Empty => (204, Value::Null),
            Answer::Json(code, schema) => (code, json!({"application/json": {"schema": schema}})),
            Answer::Text(kind, description) => (
                200,
                json!({kind: {"schema": {"type": "string", "description": description}}}),
            ),
            // Each event (OpenAPI 3.1 reads `schema` as one event): its id, its type, and its
            // data, an EventRecord in JSON.
            Answer::Stream(kind, item) => (
                200,
                json!({kind: {"schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": item},
                    },
                    "required": ["id", "event", "data"],
                }}}),
            ),
        };
        let mut operation = json!({
            "operationId": op.id,
            "summary": op.summary,
            "parameters": op.params.iter().map(|p| json!({
                "name": p.name, "in": p.location, "required": p.location == "path",
                "description": p.description, "schema": p.schema,
            })).collect::<Vec<_>>(),
            "responses": {
                code.to_string(): {"description": "Done", "content": content},
                "default": problem,
            },
        });
        if content_is_empty(&operation, code) {
            operation["responses"][code.to_string()] = json!({"description": "Done"});
        }
        if let Some(body) = op.body {
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": body}}});
        }
        if !op.secured {
            operation["security"] = json!([]);
        }
        let entry = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    let mut schemas = generator.take_definitions(true);
    // Definitions refer to each other by `#/components/schemas/...`.
    schemas.sort_keys();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rein",
            "version": v1::VERSION,
            "description": "The engine API of rein over HTTP: runs, approvals, agents, usage and the audit trail. Every request but health, readiness, sign-in and this document carries `Authorization: Bearer <token>` (or the dashboard's session cookie, with `x-rein-dashboard: 1` on a change); the token fixes the tenant and user.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}
