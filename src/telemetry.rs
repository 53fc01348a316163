//! Logs and traces.
//!
//! Logs: `tracing` to stderr, as text or JSON (`log.format`), filtered by `RUST_LOG` or
//! `log.filter`; JSON lines carry the current span's fields, `trace_id` included.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, spans are
//! exported over OTLP in batches, as HTTP/protobuf (the default; port 4318) or gRPC
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`; port 4317); the standard `OTEL_*` variables apply
//! (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`, …). W3C trace context (`traceparent`, `tracestate`) is read
//! from HTTP headers, gRPC metadata and NATS headers, kept in each event's metadata, and
//! written to NATS headers of the events mailledger publishes.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static OTEL: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (and so worth creating for every event).
pub fn otel_enabled() -> bool {
    OTEL.load(Ordering::Relaxed)
}

/// Installs logging (and tracing export when configured). Commands other than `serve`
/// log only warnings unless RUST_LOG says otherwise, so their output stays clean.
pub fn init(settings: &LogSettings, serving: bool) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let default = if serving { settings.filter.as_str() } else { "warn,sqlx=error" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Whatever RUST_LOG asks for: async-nats's debug lines print the server's URL with
    // its credentials (`server = nats://user:password@…`).
    let filter = filter
        .add_directive("async_nats=info".parse().expect("a valid directive"))
        .add_directive("async_nats::connector=info".parse().expect("a valid directive"));
    let otlp = serving
        && ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    let otel_layer = if otlp {
        match exporter() {
            Ok(provider) => {
                let tracer = provider.tracer("mailledger");
                global::set_tracer_provider(provider.clone());
                let _ = PROVIDER.set(provider);
                OTEL.store(true, Ordering::Relaxed);
                Some(tracing_opentelemetry::layer().with_tracer(tracer))
            }
            Err(e) => {
                eprintln!("mailledger: OTLP export disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Text => {
            registry.with(tracing_subscriber::fmt::layer().with_ansi(colour()).with_writer(std::io::stderr)).try_init()
        }
    };
}

/// Text logs are coloured only on a terminal, and never with `NO_COLOR` set: a log
/// file or a pipe gets plain text, not ANSI escape codes.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn exporter() -> anyhow::Result<SdkTracerProvider> {
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("mailledger");
    }
    let provider = SdkTracerProvider::builder().with_resource(resource.build());
    let provider = match protocol().as_str() {
        "http/protobuf" => provider.with_span_processor(batch(Reporting::new(
            opentelemetry_otlp::SpanExporter::builder().with_http().build()?,
        ))),
        "grpc" => provider.with_span_processor(batch(Reporting::new(GrpcExporter::build()?))),
        other => anyhow::bail!("OTLP protocol {other:?} is not supported (grpc or http/protobuf)"),
    };
    Ok(provider.build())
}

/// Spans queued for export when `OTEL_BSP_MAX_QUEUE_SIZE` is not set. The SDK's 2,048
/// overflowed (and dropped spans without a word) under a few hundred emails a second:
/// each email makes a dozen spans, most of them `projection.applied`.
const SPAN_QUEUE: usize = 16_384;

fn batch<E: opentelemetry_sdk::trace::SpanExporter + 'static>(
    exporter: E,
) -> opentelemetry_sdk::trace::BatchSpanProcessor {
    let mut config = opentelemetry_sdk::trace::BatchConfigBuilder::default();
    if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
        config = config.with_max_queue_size(SPAN_QUEUE);
    }
    opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).with_batch_config(config.build()).build()
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else the
/// specification's default, `http/protobuf`.
fn protocol() -> String {
    ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .map_or_else(|| "http/protobuf".to_owned(), |s| s.trim().to_ascii_lowercase())
}

/// How often a failing export is logged (each failure is counted).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// An exporter whose failures are not silent: each failed batch is counted in
/// `mailledger_otlp_export_failures_total`, and logged as a warning at most once a
/// minute with the number of failures since the last report (a collector on the wrong
/// port or protocol would otherwise drop every span without a word).
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    /// When the last warning was logged, and failures since then.
    reported: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl<E> Reporting<E> {
    fn new(inner: E) -> Self {
        Self { inner, reported: std::sync::Mutex::new((None, 0)) }
    }

    fn failed(&self, error: &opentelemetry_sdk::error::OTelSdkError) {
        crate::metrics::OTLP_EXPORT_FAILURES.inc();
        let mut reported = self.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        reported.1 += 1;
        if reported.0.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
            tracing::warn!(
                failures = reported.1,
                protocol = %protocol(),
                error = %error,
                "OTLP export failed: spans are being dropped; check OTEL_EXPORTER_OTLP_ENDPOINT and \
                 OTEL_EXPORTER_OTLP_PROTOCOL (logged at most once a minute)"
            );
            *reported = (Some(std::time::Instant::now()), 0);
        }
    }
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for Reporting<E> {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            if let Err(e) = &result {
                self.failed(e);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP/gRPC exporter on a runtime of its own: tonic needs a Tokio reactor, and
/// the SDK's batch processor exports from a plain thread that has none.
#[derive(Debug)]
struct GrpcExporter {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GrpcExporter {
    fn build() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let inner = {
            let _inside = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?
        };
        Ok(Self { inner, runtime: Some(runtime) })
    }
}

impl opentelemetry_sdk::trace::SpanExporter for GrpcExporter {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        // Called on the batch processor's thread, never on a Tokio worker.
        let result = match &self.runtime {
            Some(runtime) => runtime.block_on(self.inner.export(batch)),
            None => Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown),
        };
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

impl Drop for GrpcExporter {
    fn drop(&mut self) {
        // Dropping a runtime inside another one panics; this may be dropped anywhere.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Flushes and stops the exporter (at the end of `serve`).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.shutdown();
    }
}

/// The trace id of `span`, when it is being traced.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Makes `span` a child of the trace context `fields` carry (traceparent, tracestate),
/// and records its `trace_id` field.
pub fn continue_trace(span: &Span, fields: &dyn Extractor) {
    let cx = global::get_text_map_propagator(|p| p.extract(fields));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id.as_str());
    }
}

/// The current span's trace context as `traceparent` / `tracestate` entries.
pub fn inject_current(into: &mut HashMap<String, String>) {
    let cx: Context = Span::current().context();
    if cx.span().span_context().is_valid() {
        global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MapInjector(into)));
    }
}

/// HTTP headers (and gRPC metadata, which travel as HTTP/2 headers) as a carrier.
pub struct HeaderCarrier<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// NATS message headers as a carrier.
pub struct NatsCarrier<'a>(pub Option<&'a async_nats::HeaderMap>);

impl Extractor for NatsCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0?.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Event metadata (a JSON object) as a carrier.
pub struct MetadataCarrier<'a>(pub &'a serde_json::Value);

impl Extractor for MetadataCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.as_str()
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
