//! Traces: a producer's `traceparent` on a NATS command continues into the command's
//! handling, the events' metadata, the projections and the SMTP attempt, and goes on
//! with the events published to NATS; spans reach an OTLP receiver over HTTP/protobuf
//! (the default) and over gRPC (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc`).
//!
//! The service runs as a child process: its tracing set-up is process-wide.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::smtp::SmtpSink;
use crate::support::{Cleanup, Isolation, Killed, db, eventually, free_port, original_payload};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server,
};

const WAIT: Duration = Duration::from_secs(30);

/// (trace id, span name) of every span a receiver was sent.
type Spans = Arc<Mutex<Vec<(String, String)>>>;

fn keep(store: &Spans, request: ExportTraceServiceRequest) {
    let mut s = store.lock().unwrap();
    for rs in request.resource_spans {
        for ss in rs.scope_spans {
            for span in ss.spans {
                s.push((hex::encode(&span.trace_id), span.name));
            }
        }
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf).
async fn http_receiver() -> (String, Spans) {
    use prost::Message;
    let spans = Spans::default();
    let store = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                keep(&store, ExportTraceServiceRequest::decode(body).unwrap());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), spans)
}

/// An OTLP/gRPC receiver (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
async fn grpc_receiver() -> (String, Spans) {
    struct Receiver(Spans);
    #[tonic::async_trait]
    impl trace_service_server::TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            keep(&self.0, request.into_inner());
            Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
        }
    }
    let spans = Spans::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = trace_service_server::TraceServiceServer::new(Receiver(spans.clone()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap()
    });
    (format!("http://{addr}"), spans)
}

/// Runs the service exporting to `endpoint` over `protocol`, publishes a traced command
/// and follows its trace id through everything that handles it.
async fn a_producers_trace_crosses_nats(protocol: &str, endpoint: &str, spans: Spans) {
    let sink = SmtpSink::start().await;
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let http_port = free_port();
    let logs = tempfile::NamedTempFile::new().unwrap();
    let _service = Killed(
        Command::new(env!("CARGO_BIN_EXE_mailledger"))
            .arg("serve")
            .envs(iso.env())
            .env("MAILLEDGER_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("MAILLEDGER_SMTP_URL", sink.url())
            .env("MAILLEDGER__DELIVERY__ENABLED", "true")
            .env("MAILLEDGER__DELIVERY__POLL_INTERVAL", "100ms")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("MAILLEDGER__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let nats = async_nats::connect(crate::support::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let stream = format!("{}_COMMANDS", iso.stream_prefix);
    eventually(WAIT, || async { js.get_stream(&stream).await.is_ok() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the consumer, too

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").as_str());
    let subject = format!("{}.commands.create", iso.namespace);
    js.publish_with_headers(subject, headers, original_payload("traced").to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually(WAIT, || async { sink.delivered().len() == 1 }).await;

    let want = ["nats.command", "ledger.create", "projection.applied", "smtp.deliver"];
    eventually(WAIT, || async {
        let s = spans.lock().unwrap();
        want.iter().all(|name| s.iter().any(|(t, n)| t == trace_id && n == name))
    })
    .await;

    // The JSON log line of the delivery carries the trace id.
    eventually(WAIT, || async {
        let text = std::fs::read_to_string(logs.path()).unwrap();
        let line =
            |message: &str| text.lines().find(|l| l.contains(&format!("\"message\":\"{message}\""))).map(str::to_owned);
        line("delivered").is_some_and(|l| l.contains(trace_id))
    })
    .await;

    // The trace id is in the event metadata, and on the events published to NATS.
    let pool = sqlx::PgPool::connect(&iso.database_url()).await.unwrap();
    let traceparents: Vec<String> = db::events(&pool)
        .await
        .iter()
        .map(|e| e.metadata["traceparent"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(traceparents.len() >= 3, "{traceparents:?}");
    assert!(traceparents.iter().all(|t| t.contains(trace_id)), "{traceparents:?}");
    let events_stream = format!("{}_EVENTS", iso.stream_prefix);
    eventually(WAIT, || async {
        let Ok(mut s) = js.get_stream(&events_stream).await else { return false };
        s.info().await.unwrap().state.messages >= 3
    })
    .await;
    let first = js.get_stream(&events_stream).await.unwrap().get_raw_message(1).await.unwrap();
    assert!(first.headers.get("traceparent").unwrap().as_str().contains(trace_id));
    pool.close().await;
}

#[tokio::test]
async fn a_producers_trace_crosses_nats_exported_over_otlp_http() {
    let (endpoint, spans) = http_receiver().await;
    a_producers_trace_crosses_nats("http/protobuf", &endpoint, spans).await;
}

#[tokio::test]
async fn a_producers_trace_crosses_nats_exported_over_otlp_grpc() {
    let (endpoint, spans) = grpc_receiver().await;
    a_producers_trace_crosses_nats("grpc", &endpoint, spans).await;
}

#[tokio::test]
async fn an_unknown_otlp_protocol_is_named_and_the_service_runs_without_export() {
    use std::io::{BufRead, BufReader};
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let http_port = free_port();
    let mut service = Killed(
        Command::new(env!("CARGO_BIN_EXE_mailledger"))
            .arg("serve")
            .envs(iso.env())
            .env("MAILLEDGER_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = service.0.stderr.take().unwrap();
    let first =
        tokio::task::spawn_blocking(move || BufReader::new(stderr).lines().next().unwrap().unwrap()).await.unwrap();
    assert!(first.contains("OTLP export disabled") && first.contains("carrier-pigeon"), "{first}");
    let health = format!("http://127.0.0.1:{http_port}/health");
    eventually(WAIT, || async { reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) }).await;
}

/// The compose stack's old mistake: an OTLP/gRPC receiver (Jaeger's 4317) with the default
/// protocol, HTTP/protobuf. Every export fails; that is counted and logged, at most once a
/// minute, instead of dropping every span without a word.
#[tokio::test]
async fn failing_exports_are_counted_and_logged_at_most_once_a_minute() {
    let (endpoint, spans) = grpc_receiver().await;
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let (http_port, metrics_port) = (free_port(), free_port());
    let logs = tempfile::NamedTempFile::new().unwrap();
    let _service = Killed(
        Command::new(env!("CARGO_BIN_EXE_mailledger"))
            .arg("serve")
            .envs(iso.env())
            .env("MAILLEDGER_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("MAILLEDGER_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let health = format!("http://127.0.0.1:{http_port}/health");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let failures = || async {
        let Ok(r) = reqwest::get(&metrics).await else { return 0.0 };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("mailledger_otlp_export_failures_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Each request makes a span; keep making them until three batches have failed.
    eventually(WAIT, || async {
        let _ = reqwest::get(&health).await;
        failures().await >= 3.0
    })
    .await;
    let text = std::fs::read_to_string(logs.path()).unwrap();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("OTLP export failed")).collect();
    assert_eq!(warnings.len(), 1, "one warning a minute, however many failures: {warnings:#?}");
    let warning: serde_json::Value = serde_json::from_str(warnings[0]).unwrap();
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["protocol"], "http/protobuf", "{warning}");
    assert!(warning["error"].as_str().is_some_and(|e| !e.is_empty()), "{warning}");
    assert!(spans.lock().unwrap().is_empty(), "nothing reached the receiver");
}
