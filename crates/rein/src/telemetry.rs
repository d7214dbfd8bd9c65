//! Where rein's tracing spans go: to stderr as they close (`REIN_LOG=debug`), to an
//! OpenTelemetry collector over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (for
//! `rein run` and `rein serve` alike; message contents are never put on spans), and into the
//! server's latency histograms.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes the exporter when dropped.
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("rein: exporting traces: {e}");
        }
    }
}

/// rein's own spans, at info level.
fn rein_spans() -> Targets {
    Targets::new()
        .with_target("rein_engine", LevelFilter::INFO)
        .with_target("rein_api", LevelFilter::INFO)
        .with_target("rein_server", LevelFilter::INFO)
}

/// Sets up the subscriber; `serving` adds the server's span timer (its latency histograms), which
/// no other command reads, so spans cost nothing there unless logged or exported. A collector
/// that cannot be set up is reported, and rein goes on without it.
pub(crate) fn init(serving: bool) -> Telemetry {
    let fmt = tracing_subscriber::fmt::layer()
        // Each span (invoke_agent, chat, execute_tool, gate) is printed with its attributes as
        // it closes.
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_filter(EnvFilter::try_from_env("REIN_LOG").unwrap_or_else(|_| "off".into()));
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .and_then(|endpoint| {
            // The OTLP/HTTP convention: the traces path is appended to the base endpoint.
            let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url)
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name(
                                    std::env::var("OTEL_SERVICE_NAME")
                                        .unwrap_or_else(|_| "rein".into()),
                                )
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("rein: OTEL_EXPORTER_OTLP_ENDPOINT is set but traces cannot be exported: {e}");
                    None
                }
            }
        });
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("rein"))
            .with_filter(rein_spans())
    });
    let timer = serving.then(|| rein_server::SpanTimer.with_filter(rein_spans()));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(timer)
        .try_init();
    Telemetry { provider }
}
