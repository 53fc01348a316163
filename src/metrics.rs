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
        "Email view cache lookups, by result (hit, miss, error)",
        &["result"],
    )
});

/// `mailledger_projection_events_total{projection}`: events applied by each projection.
pub static PROJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec("mailledger_projection_events_total", "Events applied, by projection", &["projection"])
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

/// Registers every metric (so each is exported from the start).
pub fn init() {
    LazyLock::force(&COMMANDS);
    LazyLock::force(&APPEND_BATCH);
    LazyLock::force(&EVENTS_APPENDED);
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&GRPC_REQUESTS);
    LazyLock::force(&GRPC_DURATION);
    LazyLock::force(&NATS_MESSAGES);
    LazyLock::force(&NATS_PENDING);
    LazyLock::force(&NATS_ACK_PENDING);
    LazyLock::force(&CACHE);
    LazyLock::force(&PROJECTED);
    LazyLock::force(&PROOF_TREE_SIZE);
    LazyLock::force(&PROOF_CHECKPOINT_SIZE);
    LazyLock::force(&PROJECTION_LAG_EVENTS);
    LazyLock::force(&PROJECTION_LAG_SECONDS);
    LazyLock::force(&DELIVERIES);
    LazyLock::force(&SMTP_DURATION);
    LazyLock::force(&QUEUE_DEPTH);
    LazyLock::force(&DEAD_LETTERED);
    LazyLock::force(&POOL);
    LazyLock::force(&POOL_MAX);
    LazyLock::force(&TLS_HANDSHAKE_FAILURES);
    LazyLock::force(&EVENTS_BY_REFERENCE);
    LazyLock::force(&EVENTS_UNPUBLISHABLE);
    LazyLock::force(&KEY_REQUESTS);
    LazyLock::force(&DOMAIN_DELIVERIES);
    LazyLock::force(&DOMAIN_IN_FLIGHT);
    LazyLock::force(&DOMAIN_QUEUED);
    LazyLock::force(&DOMAIN_THROTTLED);
    LazyLock::force(&SUPPRESSIONS);
    LazyLock::force(&WEBHOOKS_QUEUED);
    LazyLock::force(&WEBHOOK_LATENCY);
    LazyLock::force(&WEBHOOK_PAUSES);
    LazyLock::force(&WEBHOOK_ENDPOINTS_DISABLED);
    LazyLock::force(&WEBHOOK_ENDPOINTS_PAUSED);
    LazyLock::force(&WEBHOOK_DUE);
    for outcome in ["delivered", "retry", "gone", "gave_up"] {
        WEBHOOK_DELIVERIES.with_label_values(&[outcome]);
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
}
