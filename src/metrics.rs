//! Prometheus metrics, served on their own port (`MAILLEDGER_METRICS_ADDR`) at `/metrics`.
//! Every name starts with `mailledger_`; counters end in `_total`, durations are
//! histograms in seconds. `monitor` refreshes the gauges that describe state (lag,
//! queue depth, pending commands, pool usage) every few seconds.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The registry every mailledger metric lives in.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    REGISTRY.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric"))
}

/// Latency buckets from 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid metric"))
}

fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    register(HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), labels).expect("valid metric"))
}

/// `mailledger_commands_total{source, outcome}`: create-email commands handled.
pub static COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_commands_total",
        "Create-email commands handled, by source and outcome",
        &["source", "outcome"],
    )
});

/// Counts a create command refused before it reached the ledger (malformed JSON, a wrong
/// content type, an unknown subject): `mailledger_commands_total{source, outcome="invalid"}`.
pub fn invalid_command(source: &str) {
    COMMANDS.with_label_values(&[source, "invalid"]).inc();
}

/// `mailledger_append_batch_emails`: new emails per group-commit INSERT (how much the
/// write side is batching: 1 when idle, growing under load).
pub static APPEND_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "mailledger_append_batch_emails",
        "New emails appended per INSERT (group commit)",
        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
    )
});

/// `mailledger_events_appended_total{type}`: events applied to the `emails` read model,
/// by type (counted once, by the instance leading that projection).
pub static EVENTS_APPENDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec("mailledger_events_appended_total", "Events appended to the ledger, by type", &["type"])
});

/// `mailledger_search_counts_total{how}`: the capped counts of searches, `counted` (a
/// statement that counted the matches) or `remembered` (an earlier count that still
/// holds); a search whose probe saw every email counts neither.
pub static SEARCH_COUNTS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec("mailledger_search_counts_total", "Search counts, counted or remembered", &["how"]));

/// `mailledger_http_requests_total{method, route, status}`.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_http_requests_total",
        "HTTP requests, by method, route and status",
        &["method", "route", "status"],
    )
});

/// `mailledger_http_request_duration_seconds{method, route}`.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec("mailledger_http_request_duration_seconds", "HTTP request latency", &["method", "route"])
});

/// `mailledger_grpc_requests_total{method, code}`.
pub static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec("mailledger_grpc_requests_total", "gRPC calls, by method and status code", &["method", "code"])
});

/// `mailledger_grpc_request_duration_seconds{method}`.
pub static GRPC_DURATION: LazyLock<HistogramVec> =
    LazyLock::new(|| histogram_vec("mailledger_grpc_request_duration_seconds", "gRPC call latency", &["method"]));

/// `mailledger_nats_messages_total{outcome}`: command messages consumed, by what became of them.
pub static NATS_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_nats_messages_total",
        "NATS command messages consumed, by outcome (acked, nacked, dead_lettered)",
        &["outcome"],
    )
});

/// `mailledger_nats_consumer_pending`: commands in the stream not yet delivered.
pub static NATS_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge("mailledger_nats_consumer_pending", "Commands waiting in JetStream for the intake consumer")
});

/// `mailledger_nats_consumer_ack_pending`: commands delivered and not yet acknowledged.
pub static NATS_ACK_PENDING: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_nats_consumer_ack_pending", "Commands delivered and not yet acknowledged"));

/// `mailledger_replica_lag_seconds`: how long the read replica is behind the primary (0
/// when it has replayed everything; see `database.read_url`).
pub static REPLICA_LAG_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    register(
        Gauge::new("mailledger_replica_lag_seconds", "How long the read replica is behind the primary")
            .expect("valid metric"),
    )
});

/// `mailledger_replica_lag_bytes`: WAL the read replica has not replayed yet.
pub static REPLICA_LAG_BYTES: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_replica_lag_bytes", "WAL bytes the read replica has not replayed yet"));

/// `mailledger_replica_usable`: 1 while reads go to the replica, 0 while it is too far
/// behind or unreachable (reads go to the primary).
pub static REPLICA_USABLE: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_replica_usable", "1 while the read replica is read from"));

/// `mailledger_reads_total{from}`: PostgreSQL reads (lookups, searches, histories) by the
/// server that answered them: `primary` or `replica`.
pub static READS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec("mailledger_reads_total", "PostgreSQL reads by the server that answered", &["from"]));

/// `mailledger_cache_requests_total{result}`: cache lookups (hit, miss, error).
pub static CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_cache_requests_total",
        "Email view cache lookups, by result (memory: the instance's own, hit: Redis, miss, error)",
        &["result"],
    )
});

/// `mailledger_projection_events_total{projection}`: events applied by each projection.
pub static PROJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec("mailledger_projection_events_total", "Events applied, by projection", &["projection"])
});

/// `mailledger_history_reads_total{from}`: emails whose earlier events the cache
/// projection needed, found in the shared tail in memory or read from PostgreSQL.
pub static HISTORY_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_history_reads_total",
        "Earlier events of an email the cache projection needed, by where it found them (memory, database)",
        &["from"],
    )
});

/// `mailledger_feed_reads_total{from}`: batches the email projections read, from the
/// shared tail in memory or from PostgreSQL (see `store::tail`).
pub static FEED_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_feed_reads_total",
        "Feed batches read by the email projections, by where from (memory, database)",
        &["from"],
    )
});

/// `mailledger_proof_tree_size`: events sealed into the proof log.
pub static PROOF_TREE_SIZE: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_proof_tree_size", "Events sealed into the proof log (its tree size)"));

/// `mailledger_proof_checkpoint_size`: the tree size of the newest signed checkpoint.
pub static PROOF_CHECKPOINT_SIZE: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_proof_checkpoint_size", "Tree size of the newest signed checkpoint"));

/// `mailledger_projection_lag_events{projection}`: events not yet applied.
pub static PROJECTION_LAG_EVENTS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "mailledger_projection_lag_events",
        "Events in the store a projection has not applied yet",
        &["projection"],
    )
});

/// `mailledger_projection_lag_seconds{projection}`: age of the oldest event not yet applied.
pub static PROJECTION_LAG_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(
        GaugeVec::new(
            Opts::new("mailledger_projection_lag_seconds", "Age of the oldest event a projection has not applied yet"),
            &["projection"],
        )
        .expect("valid metric"),
    )
});

/// `mailledger_delivery_attempts_total{outcome}`: SMTP attempts (sent, transient_failure, permanent_failure).
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_delivery_attempts_total",
        "Delivery attempts, by outcome (sent, transient_failure, permanent_failure)",
        &["outcome"],
    )
});

/// `mailledger_smtp_send_duration_seconds`: time from connecting to the server's reply.
pub static SMTP_DURATION: LazyLock<Histogram> =
    LazyLock::new(|| histogram("mailledger_smtp_send_duration_seconds", "SMTP send latency", BUCKETS));

/// `mailledger_delivery_queue_depth`: deliveries due now and not yet made.
pub static QUEUE_DEPTH: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_delivery_queue_depth", "Deliveries due now and not yet made"));

/// `mailledger_emails_dead_lettered_total`: emails given up on by this instance's sender.
pub static DEAD_LETTERED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("mailledger_emails_dead_lettered_total", "Emails dead-lettered").expect("valid metric"))
});

/// `mailledger_domain_deliveries_total{domain,outcome}`: recipients per outcome (sent,
/// deferred, refused, suppressed) by recipient domain — a domain named in
/// `delivery.domains`, else `other` (so that the series stay few).
pub static DOMAIN_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_domain_deliveries_total",
        "Recipients by delivery outcome (sent, deferred, refused, suppressed) and recipient domain",
        &["domain", "outcome"],
    )
});

/// `mailledger_domain_in_flight{domain}`: deliveries this instance is making.
pub static DOMAIN_IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec("mailledger_domain_in_flight", "Deliveries being made, by recipient domain", &["domain"])
});

/// `mailledger_domain_queued{domain}`: deliveries due now, by recipient domain (every
/// instance's; refreshed by each sender every few seconds).
pub static DOMAIN_QUEUED: LazyLock<IntGaugeVec> =
    LazyLock::new(|| gauge_vec("mailledger_domain_queued", "Deliveries due now, by recipient domain", &["domain"]));

/// `mailledger_domain_throttled_total{domain}`: times a domain answered "slow down"
/// (421, or a 4xx saying so) and was paused.
pub static DOMAIN_THROTTLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_domain_throttled_total",
        "Times a recipient domain throttled us and was paused",
        &["domain"],
    )
});

/// `mailledger_suppressions_total{change,source}`: addresses added to or removed from
/// suppression lists (source `bounce` or `manual`).
pub static SUPPRESSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_suppressions_total",
        "Suppression list changes (added, removed) by source (bounce, manual)",
        &["change", "source"],
    )
});

/// `mailledger_events_by_reference_total`: domain events published without their
/// bodies or payload, because they would not fit the NATS server's `max_payload`.
pub static EVENTS_BY_REFERENCE: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "mailledger_events_by_reference_total",
            "Domain events published without their bodies (too large)",
        )
        .expect("valid metric"),
    )
});

/// `mailledger_events_unpublishable_total`: domain events NATS refused for good, skipped.
pub static EVENTS_UNPUBLISHABLE: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("mailledger_events_unpublishable_total", "Domain events NATS refused for good (skipped)")
            .expect("valid metric"),
    )
});

/// `mailledger_db_pool_connections{state}`: pool connections idle and in use.
pub static POOL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec("mailledger_db_pool_connections", "PostgreSQL pool connections, by state (idle, in_use)", &["state"])
});

/// `mailledger_db_pool_max_connections`: the pool's size limit.
pub static POOL_MAX: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_db_pool_max_connections", "PostgreSQL pool size limit"));

/// `mailledger_tls_handshake_failures_total{listener}`: TLS handshakes on the REST or gRPC
/// listener that failed or timed out.
pub static TLS_HANDSHAKE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out, by listener (rest, grpc)",
        &["listener"],
    )
});

/// `mailledger_key_requests_total{key, outcome}`: requests by API key name (never the
/// key) and what became of them: allowed, unauthenticated (key ""), forbidden,
/// rate_limited, quota_exceeded.
pub static KEY_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_key_requests_total",
        "Requests by API key name and outcome (allowed, unauthenticated, forbidden, rate_limited, quota_exceeded)",
        &["key", "outcome"],
    )
});

/// Counts one request of key `name`.
pub fn key_request(name: &str, outcome: &str) {
    KEY_REQUESTS.with_label_values(&[name, outcome]).inc();
}

/// The counter of key `name`'s requests with `outcome`, to keep and count on.
pub fn key_counter(name: &str, outcome: &str) -> IntCounter {
    KEY_REQUESTS.with_label_values(&[name, outcome])
}

/// The `outcome` label of an access error.
pub fn access_outcome(e: &crate::access::AccessError) -> &'static str {
    use crate::access::AccessError;
    match e {
        AccessError::Unauthenticated(_) => "unauthenticated",
        AccessError::Forbidden(_) => "forbidden",
        AccessError::RateLimited(_) => "rate_limited",
        AccessError::QuotaExceeded(_) => "quota_exceeded",
    }
}

/// `mailledger_webhooks_queued_total`: webhook deliveries queued (one per endpoint and event).
pub static WEBHOOKS_QUEUED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("mailledger_webhooks_queued_total", "Webhook deliveries queued").expect("valid metric"))
});

/// `mailledger_webhook_attempts_total{outcome}`: webhook attempts by outcome
/// (`delivered`, `retry`, `gone`, `gave_up`).
pub static WEBHOOK_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec("mailledger_webhook_attempts_total", "Webhook delivery attempts, by outcome", &["outcome"])
});

/// `mailledger_webhook_attempt_seconds`: how long an attempt took (answer or failure).
pub static WEBHOOK_LATENCY: LazyLock<Histogram> =
    LazyLock::new(|| histogram("mailledger_webhook_attempt_seconds", "Duration of webhook delivery attempts", BUCKETS));

/// `mailledger_webhook_endpoint_pauses_total`: endpoints paused for failing again and again.
pub static WEBHOOK_PAUSES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("mailledger_webhook_endpoint_pauses_total", "Webhook endpoints paused after repeated failures")
            .expect("valid metric"),
    )
});

/// `mailledger_build_info{version, git_sha}`: always 1; joins any series to the build
/// that produced it (`* on(instance) group_left(version) mailledger_build_info`).
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "mailledger_build_info",
        "The running build: always 1, labelled with its version",
        &["version", "git_sha"],
    )
});

/// `mailledger_otlp_export_failures_total`: batches of spans the OTLP exporter could not
/// send (collector unreachable, wrong protocol or port); each is also logged, at most
/// once a minute.
pub static OTLP_EXPORT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("mailledger_otlp_export_failures_total", "Span batches the OTLP exporter failed to send")
            .expect("valid metric"),
    )
});

/// `mailledger_webhook_endpoints_disabled_total`: endpoints disabled by a 410 answer.
pub static WEBHOOK_ENDPOINTS_DISABLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("mailledger_webhook_endpoints_disabled_total", "Webhook endpoints disabled by a 410 answer")
            .expect("valid metric"),
    )
});

/// `mailledger_webhook_endpoints_paused`: enabled endpoints paused now (every instance
/// with a dispatcher reports the same value).
pub static WEBHOOK_ENDPOINTS_PAUSED: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_webhook_endpoints_paused", "Webhook endpoints paused now"));

/// `mailledger_webhook_deliveries_due`: deliveries due and not yet delivered.
pub static WEBHOOK_DUE: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("mailledger_webhook_deliveries_due", "Webhook deliveries due now"));

/// Every `mailledger_*` metric, in the order of the README's table.
fn all() -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(BUILD_INFO.clone()),
        Box::new(COMMANDS.clone()),
        Box::new(EVENTS_APPENDED.clone()),
        Box::new(APPEND_BATCH.clone()),
        Box::new(SEARCH_COUNTS.clone()),
        Box::new(HTTP_REQUESTS.clone()),
        Box::new(HTTP_DURATION.clone()),
        Box::new(GRPC_REQUESTS.clone()),
        Box::new(GRPC_DURATION.clone()),
        Box::new(NATS_MESSAGES.clone()),
        Box::new(NATS_PENDING.clone()),
        Box::new(NATS_ACK_PENDING.clone()),
        Box::new(PROJECTED.clone()),
        Box::new(FEED_READS.clone()),
        Box::new(HISTORY_READS.clone()),
        Box::new(PROOF_TREE_SIZE.clone()),
        Box::new(PROOF_CHECKPOINT_SIZE.clone()),
        Box::new(PROJECTION_LAG_EVENTS.clone()),
        Box::new(PROJECTION_LAG_SECONDS.clone()),
        Box::new(DELIVERIES.clone()),
        Box::new(SMTP_DURATION.clone()),
        Box::new(QUEUE_DEPTH.clone()),
        Box::new(DEAD_LETTERED.clone()),
        Box::new(DOMAIN_DELIVERIES.clone()),
        Box::new(DOMAIN_IN_FLIGHT.clone()),
        Box::new(DOMAIN_QUEUED.clone()),
        Box::new(DOMAIN_THROTTLED.clone()),
        Box::new(SUPPRESSIONS.clone()),
        Box::new(EVENTS_BY_REFERENCE.clone()),
        Box::new(EVENTS_UNPUBLISHABLE.clone()),
        Box::new(CACHE.clone()),
        Box::new(POOL.clone()),
        Box::new(POOL_MAX.clone()),
        Box::new(TLS_HANDSHAKE_FAILURES.clone()),
        Box::new(KEY_REQUESTS.clone()),
        Box::new(WEBHOOKS_QUEUED.clone()),
        Box::new(WEBHOOK_DELIVERIES.clone()),
        Box::new(WEBHOOK_LATENCY.clone()),
        Box::new(WEBHOOK_PAUSES.clone()),
        Box::new(WEBHOOK_ENDPOINTS_DISABLED.clone()),
        Box::new(WEBHOOK_ENDPOINTS_PAUSED.clone()),
        Box::new(WEBHOOK_DUE.clone()),
        Box::new(REPLICA_LAG_SECONDS.clone()),
        Box::new(REPLICA_LAG_BYTES.clone()),
        Box::new(REPLICA_USABLE.clone()),
        Box::new(READS.clone()),
        Box::new(OTLP_EXPORT_FAILURES.clone()),
    ]
}

#[cfg(test)]
/// One metric as declared: name, type (`counter`, `gauge`, `histogram`) and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// `mailledger_…`.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its label names, in declaration order.
    pub labels: Vec<String>,
}

#[cfg(test)]
/// Every `mailledger_*` metric with its type and labels (the README's table is held to it).
pub fn catalogue() -> Vec<Declared> {
    all()
        .iter()
        .map(|c| {
            let desc = c.desc()[0];
            let kind = match c.collect().first().map(prometheus::proto::MetricFamily::get_field_type) {
                Some(prometheus::proto::MetricType::COUNTER) => "counter",
                Some(prometheus::proto::MetricType::GAUGE) => "gauge",
                Some(prometheus::proto::MetricType::HISTOGRAM) => "histogram",
                _ => "other",
            };
            Declared { name: desc.fq_name.clone(), kind, labels: desc.variable_labels.clone() }
        })
        .collect()
}

/// Registers every metric (so each is exported from the start), the `process_*` metrics
/// (resident memory, CPU seconds, open and maximum file descriptors, start time; Linux)
/// and `mailledger_build_info`.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        REGISTRY
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
    });
    drop(all());
    BUILD_INFO.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("MAILLEDGER_GIT_SHA")]).set(1);
    for outcome in ["delivered", "retry", "gone", "gave_up"] {
        WEBHOOK_DELIVERIES.with_label_values(&[outcome]);
    }
    for from in ["primary", "replica"] {
        READS.with_label_values(&[from]);
    }
    // Every series whose labels are known up front starts at 0: `rate()` and
    // `increase()` see a counter's first step only from a sample before it.
    for source in ["nats", "rest", "grpc"] {
        for outcome in ["accepted", "invalid", "conflict", "unavailable", "internal"] {
            COMMANDS.with_label_values(&[source, outcome]);
        }
    }
    for outcome in ["acked", "nacked", "dead_lettered"] {
        NATS_MESSAGES.with_label_values(&[outcome]);
    }
    for outcome in ["sent", "transient_failure", "permanent_failure"] {
        DELIVERIES.with_label_values(&[outcome]);
    }
    for outcome in ["sent", "deferred", "refused", "suppressed"] {
        DOMAIN_DELIVERIES.with_label_values(&["other", outcome]);
    }
    for (change, source) in [("added", "bounce"), ("added", "manual"), ("removed", "manual")] {
        SUPPRESSIONS.with_label_values(&[change, source]);
    }
    for result in ["hit", "miss", "error"] {
        CACHE.with_label_values(&[result]);
    }
    for how in ["counted", "remembered"] {
        SEARCH_COUNTS.with_label_values(&[how]);
    }
    for listener in ["rest", "grpc"] {
        TLS_HANDSHAKE_FAILURES.with_label_values(&[listener]);
    }
}

/// The `/metrics` route.
pub fn router() -> Router {
    init();
    Router::new().route("/metrics", get(render))
}

async fn render() -> impl IntoResponse {
    let text = TextEncoder::new().encode_to_string(&REGISTRY.gather()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_label_sets_are_exported_at_zero_from_the_start() {
        super::init();
        let text = prometheus::TextEncoder::new().encode_to_string(&super::REGISTRY.gather()).unwrap();
        for series in [
            "mailledger_commands_total{outcome=\"invalid\",source=\"rest\"} 0",
            "mailledger_nats_messages_total{outcome=\"dead_lettered\"} 0",
            "mailledger_delivery_attempts_total{outcome=\"transient_failure\"} 0",
            "mailledger_cache_requests_total{result=\"error\"} 0",
            "mailledger_tls_handshake_failures_total{listener=\"grpc\"} 0",
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing from:\n{text}");
        }
    }

    /// The README's metrics table: (name, type, labels) of each row, in order.
    fn readme_table() -> Vec<(String, String, Vec<String>)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let section = &readme[readme.find("## Observability").expect("an Observability section")..];
        let backticked =
            |text: &str| -> Vec<String> { text.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
        let mut rows = Vec::new();
        for line in section.lines().skip_while(|l| !l.starts_with("| metric |")).skip(2) {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "one metric per row, three cells: {line}");
            // Labels are the backticked words outside parentheses (which describe them).
            let mut depth = 0;
            let outside: String = cells[2]
                .chars()
                .filter(|c| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => return depth == 0,
                    }
                    false
                })
                .collect();
            let name = backticked(cells[0]).into_iter().next().unwrap_or_else(|| panic!("no name in {line}"));
            rows.push((name, cells[1].to_owned(), backticked(&outside)));
        }
        rows
    }

    #[test]
    fn the_readme_table_names_every_metric_with_its_type_and_labels() {
        super::init();
        let table = readme_table();
        let declared: Vec<_> = super::catalogue().into_iter().map(|d| (d.name, d.kind.to_owned(), d.labels)).collect();
        let table_own: Vec<_> = table.iter().filter(|(n, ..)| n.starts_with("mailledger_")).cloned().collect();
        for row in &declared {
            assert!(table_own.contains(row), "README lacks or misdescribes {row:?}; its table: {table_own:#?}");
        }
        for row in &table_own {
            assert!(declared.contains(row), "README names {row:?}, which the service does not export as such");
        }
        // Others (process_*) are exported under the names the table gives.
        let families: Vec<String> = super::REGISTRY.gather().iter().map(|f| f.name().to_owned()).collect();
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for (name, ..) in table.iter().filter(|(n, ..)| !n.starts_with("mailledger_")) {
            assert!(families.contains(name), "{name} is not exported: {families:?}");
        }
        for family in families.iter().filter(|f| f.starts_with("process_")) {
            assert!(readme.contains(&format!("`{family}`")), "README does not name {family}");
        }
    }

    #[test]
    fn build_info_names_this_build() {
        super::init();
        let text = prometheus::TextEncoder::new().encode_to_string(&super::REGISTRY.gather()).unwrap();
        let line = text.lines().find(|l| l.starts_with("mailledger_build_info{")).expect("build info exported");
        assert!(line.ends_with(" 1"), "{line}");
        assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
        assert!(line.contains("git_sha=\""), "{line}");
        assert!(text.lines().any(|l| l.starts_with("process_resident_memory_bytes ")), "no process metrics");
    }

    #[test]
    fn every_documented_route_and_grpc_method_starts_at_zero() {
        super::init();
        crate::transport::http::metrics_at_zero();
        crate::transport::grpc::metrics_at_zero();
        let text = prometheus::TextEncoder::new().encode_to_string(&super::REGISTRY.gather()).unwrap();
        for series in [
            "mailledger_http_requests_total{method=\"POST\",route=\"/api/v1/emails\",status=\"202\"}",
            "mailledger_http_requests_total{method=\"GET\",route=\"/api/v1/emails/{id}\",status=\"200\"}",
            "mailledger_http_request_duration_seconds_count{method=\"GET\",route=\"/api/v1/emails\"}",
            "mailledger_http_request_duration_seconds_count{method=\"GET\",route=\"/ready\"}",
            "mailledger_grpc_requests_total{code=\"OK\",method=\"emailService.EmailService/Create\"}",
            "mailledger_grpc_request_duration_seconds_count{method=\"emailService.EmailService/GetByID\"}",
            "mailledger_grpc_request_duration_seconds_count{method=\"grpc.health.v1.Health/Check\"}",
        ] {
            assert!(text.lines().any(|l| l.starts_with(&format!("{series} "))), "{series} missing");
        }
    }
}
