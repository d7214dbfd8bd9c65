//! Prometheus metrics: counters fed by the events of the runs the server drives, gauges read at
//! scrape time (approvals pending and their age, budget use, runs driven now), and latency
//! histograms fed by rein's tracing spans (`gate`, `chat`, `execute_tool`, `invoke_agent`) and
//! by the HTTP layer.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rein_api::v1;
use tracing::span;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentTenant {
    agent: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunEnd {
    agent: String,
    tenant: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ToolCall {
    agent: String,
    tool: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTenant {
    model: String,
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tokens {
    model: String,
    tenant: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Budget {
    key: String,
    period: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpanName {
    span: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Http {
    route: String,
    status: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

fn histogram() -> Histogram {
    // 50 µs to about 100 s.
    Histogram::new(exponential_buckets(0.000_05, 2.5, 16))
}

/// rein's metrics.
pub struct Metrics {
    registry: Registry,
    runs_started: Family<AgentTenant, Counter>,
    runs_ended: Family<RunEnd, Counter>,
    steps: Family<AgentTenant, Counter>,
    tool_calls: Family<ToolCall, Counter>,
    approvals_requested: Family<AgentTenant, Counter>,
    model_calls: Family<ModelTenant, Counter>,
    tokens: Family<Tokens, Counter>,
    cost: Family<ModelTenant, FloatCounter>,
    runs_driven: Gauge,
    approvals_pending: Family<Tenant, Gauge>,
    approval_age: Family<Tenant, FloatGauge>,
    budget_used: Family<Budget, FloatGauge>,
    spans: Family<SpanName, Histogram, fn() -> Histogram>,
    http_requests: Family<Http, Counter>,
    http_seconds: Family<Http, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish()
    }
}

static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();

/// The process's metrics (one registry per process, shared by the tracing layer and the server).
pub fn metrics() -> Arc<Metrics> {
    METRICS.get_or_init(|| Arc::new(Metrics::new())).clone()
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rein");
        let m = Metrics {
            runs_started: Family::default(),
            runs_ended: Family::default(),
            steps: Family::default(),
            tool_calls: Family::default(),
            approvals_requested: Family::default(),
            model_calls: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
            runs_driven: Gauge::default(),
            approvals_pending: Family::default(),
            approval_age: Family::default(),
            budget_used: Family::default(),
            spans: Family::new_with_constructor(histogram),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(histogram),
            registry: Registry::default(),
        };
        registry.register(
            "runs_started",
            "Runs started, by agent and tenant",
            m.runs_started.clone(),
        );
        registry.register(
            "runs_ended",
            "Runs that reached an end state, by agent, tenant and status",
            m.runs_ended.clone(),
        );
        registry.register("steps", "Model steps answered", m.steps.clone());
        registry.register(
            "tool_calls",
            "Tool calls judged, by agent, tool and verdict",
            m.tool_calls.clone(),
        );
        registry.register(
            "approvals_requested",
            "Approval requests, by agent and tenant",
            m.approvals_requested.clone(),
        );
        registry.register(
            "model_calls",
            "Model calls answered, by model and tenant",
            m.model_calls.clone(),
        );
        registry.register(
            "model_tokens",
            "Tokens used, by model, tenant and direction",
            m.tokens.clone(),
        );
        registry.register(
            "model_cost_usd",
            "What model calls cost, in US dollars, by model and tenant",
            m.cost.clone(),
        );
        registry.register(
            "runs_driven",
            "Runs this process drives now",
            m.runs_driven.clone(),
        );
        registry.register(
            "approvals_pending",
            "Approval requests waiting for a person, by tenant",
            m.approvals_pending.clone(),
        );
        registry.register(
            "approval_oldest_age_seconds",
            "How long the oldest pending approval request has waited, by tenant",
            m.approval_age.clone(),
        );
        registry.register(
            "budget_used_ratio",
            "Spent over the limit of each budget line with a limit",
            m.budget_used.clone(),
        );
        registry.register(
            "span_duration_seconds",
            "How long rein's spans took: gate (a policy decision), chat (a model call), execute_tool, invoke_agent (a run's drive)",
            m.spans.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "How long HTTP requests took, by route and status",
            m.http_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts what an event of a run says.
    pub fn observe(&self, agent: &str, tenant: &str, event: &v1::Event) {
        let at = || AgentTenant {
            agent: agent.to_owned(),
            tenant: tenant.to_owned(),
        };
        match event {
            v1::Event::RunStarted(_) => {
                self.runs_started.get_or_create(&at()).inc();
            }
            v1::Event::RunEnded { status, .. } => {
                let status = serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.runs_ended
                    .get_or_create(&RunEnd {
                        agent: agent.to_owned(),
                        tenant: tenant.to_owned(),
                        status,
                    })
                    .inc();
            }
            v1::Event::ModelReplied {
                usage,
                model,
                cost_micros,
                ..
            } => {
                self.steps.get_or_create(&at()).inc();
                let mt = ModelTenant {
                    model: model.clone(),
                    tenant: tenant.to_owned(),
                };
                self.model_calls.get_or_create(&mt).inc();
                self.cost
                    .get_or_create(&mt)
                    .inc_by(*cost_micros as f64 / 1e6);
                for (direction, n) in [
                    ("input", usage.input_tokens),
                    ("output", usage.output_tokens),
                ] {
                    self.tokens
                        .get_or_create(&Tokens {
                            model: model.clone(),
                            tenant: tenant.to_owned(),
                            direction: direction.into(),
                        })
                        .inc_by(n);
                }
            }
            v1::Event::ToolJudged { tool, verdict, .. } => {
                let verdict = serde_json::to_value(verdict)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                self.tool_calls
                    .get_or_create(&ToolCall {
                        agent: agent.to_owned(),
                        tool: tool.clone(),
                        verdict,
                    })
                    .inc();
            }
            v1::Event::ApprovalRequested { .. } => {
                self.approvals_requested.get_or_create(&at()).inc();
            }
            _ => {}
        }
    }

    /// Counts an HTTP request.
    pub fn request(&self, route: &str, status: u16, seconds: f64) {
        let labels = Http {
            route: route.to_owned(),
            status: status.to_string(),
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_seconds.get_or_create(&labels).observe(seconds);
    }

    /// The exposition text, with the gauges read now.
    pub fn render(
        &self,
        driven: usize,
        pending: &[v1::ApprovalSummary],
        usage: &[v1::UsageRow],
        now_ms: u64,
    ) -> String {
        self.runs_driven.set(driven as i64);
        self.approvals_pending.clear();
        self.approval_age.clear();
        for a in pending {
            let t = Tenant {
                tenant: a.tenant.clone(),
            };
            self.approvals_pending.get_or_create(&t).inc();
            let age = now_ms.saturating_sub(a.created_ms) as f64 / 1000.0;
            let gauge = self.approval_age.get_or_create(&t);
            if age > gauge.get() {
                gauge.set(age);
            }
        }
        self.budget_used.clear();
        for row in usage {
            for (resource, spent, limit) in [
                ("tokens", row.tokens, row.max_tokens),
                ("cost", row.cost_micros, row.max_cost_micros),
            ] {
                if let Some(limit) = limit.filter(|l| *l > 0) {
                    self.budget_used
                        .get_or_create(&Budget {
                            key: row.key.clone(),
                            period: row.period.clone(),
                            resource: resource.into(),
                        })
                        .set(spent as f64 / limit as f64);
                }
            }
        }
        let mut open_metrics = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut open_metrics, &self.registry);
        to_prometheus_text(&open_metrics)
    }
}

/// The Prometheus text format (0.0.4) from OpenMetrics text: a counter's HELP and TYPE name its
/// `_total` samples, and the OpenMetrics-only lines (`# EOF`, `# UNIT`) go.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Feeds the span histograms: each of rein's spans, timed from creation to close.
#[derive(Debug, Default)]
pub struct SpanTimer;

struct Began(Instant);

impl<S> Layer<S> for SpanTimer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Began(Instant::now()));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let name = span.name();
        if !matches!(name, "gate" | "chat" | "execute_tool" | "invoke_agent") {
            return;
        }
        if let Some(began) = span.extensions().get::<Began>() {
            metrics()
                .spans
                .get_or_create(&SpanName { span: name.into() })
                .observe(began.0.elapsed().as_secs_f64());
        }
    }
}
