//! Prometheus metrics, served on their own port (`MAILLEDGER_METRICS_ADDR`) at `/metrics`.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};

/// The registry every mailledger metric lives in.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY.register(Box::new(c.clone())).expect("registered once");
    c
}

/// `mailledger_commands_total{source, outcome}`: create-email commands handled.
pub static COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_commands_total",
        "Create-email commands handled, by source and outcome",
        &["source", "outcome"],
    )
});

/// `mailledger_nats_messages_total{outcome}`: command messages consumed, by what became of them.
pub static NATS_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_nats_messages_total",
        "NATS command messages consumed, by outcome (acked, nacked, dead_lettered)",
        &["outcome"],
    )
});

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

/// `mailledger_delivery_attempts_total{outcome}`: SMTP attempts (sent, transient_failure, permanent_failure).
pub static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "mailledger_delivery_attempts_total",
        "Delivery attempts, by outcome (sent, transient_failure, permanent_failure)",
        &["outcome"],
    )
});

/// The `/metrics` route.
pub fn router() -> Router {
    for metric in [&COMMANDS, &NATS_MESSAGES, &CACHE, &PROJECTED, &DELIVERIES] {
        LazyLock::force(metric);
    }
    Router::new().route("/metrics", get(render))
}

async fn render() -> impl IntoResponse {
    let text = TextEncoder::new().encode_to_string(&REGISTRY.gather()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
