//! Spans follow OpenTelemetry's GenAI conventions. In a test binary of its own: tracing caches
//! per-callsite interest process-wide, so spans recorded under a thread-local subscriber are only
//! reliable when no other test runs at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use rein_engine::NoObserver;

const SCRIPT: &str = r#"
[[turns]]
calls = [{ tool = "orders.lookup", args = { order_id = "A-1" } }]
[[turns]]
calls = [{ tool = "orders.lookup", args = { order_id = "A-2" } }, { tool = "orders.lookup", args = { order_id = "A-3" } }]
[[turns]]
text = "done"
"#;

const AGENT: &str = r#"
name = "t"
instructions = "x"
[model]
provider = "scripted"
name = "s"
script = "script.toml"
[[tools]]
name = "orders.lookup"
description = "Look up"
command = ["cat"]
idempotent = true
args_schema = { type = "object" }
"#;

/// Captures span names and their fields.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<SpanRecord>>>);

/// A span's name and the fields recorded on it, in order.
type SpanRecord = (String, Vec<(String, String)>);

struct FieldVisitor<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        ));
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
    tracing_subscriber::Layer<S> for SpanLog
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Vec::new();
        attrs.record(&mut FieldVisitor(&mut fields));
        let mut log = self.0.lock().unwrap();
        log.push((attrs.metadata().name().to_owned(), fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(log.len() - 1);
        }
    }
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(index) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<usize>().copied())
        {
            let mut log = self.0.lock().unwrap();
            values.record(&mut FieldVisitor(&mut log[index].1));
        }
    }
}

#[tokio::test]
async fn spans_follow_the_opentelemetry_genai_conventions() {
    use tracing_subscriber::layer::SubscriberExt;
    let log = SpanLog::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(log.clone()));
    let folder = rein_testkit::AgentFolder::new(AGENT).file("script.toml", SCRIPT);
    let agent = folder.agent();
    let state = tempfile::tempdir().unwrap();
    let engine = rein_testkit::engine(state.path());
    let report = engine.start(&agent, "t", &NoObserver).await.unwrap();
    assert_eq!(report.status, rein_core::EndState::Completed);
    let spans = log.0.lock().unwrap().clone();
    let field = |span: &SpanRecord, name: &str| {
        span.1
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let names: Vec<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names.iter().filter(|n| **n == "invoke_agent").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "chat").count(), 3);
    assert_eq!(names.iter().filter(|n| **n == "execute_tool").count(), 3);
    let agent = spans.iter().find(|s| s.0 == "invoke_agent").unwrap();
    assert_eq!(
        field(agent, "gen_ai.operation.name").as_deref(),
        Some("invoke_agent")
    );
    assert_eq!(
        field(agent, "gen_ai.conversation.id"),
        Some(report.run_id.clone())
    );
    assert_eq!(field(agent, "otel.name").as_deref(), Some("invoke_agent t"));
    let chat = spans.iter().find(|s| s.0 == "chat").unwrap();
    assert_eq!(
        field(chat, "gen_ai.provider.name").as_deref(),
        Some("scripted")
    );
    assert_eq!(field(chat, "gen_ai.request.model").as_deref(), Some("s"));
    assert!(
        field(chat, "gen_ai.usage.input_tokens")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let tool = spans.iter().find(|s| s.0 == "execute_tool").unwrap();
    assert_eq!(
        field(tool, "gen_ai.tool.name").as_deref(),
        Some("orders.lookup")
    );
    assert_eq!(
        field(tool, "gen_ai.tool.call.id").as_deref(),
        Some("call_1_1")
    );
    assert_eq!(
        field(tool, "otel.name").as_deref(),
        Some("execute_tool orders.lookup")
    );
}
