//! Prometheus metrics, served on their own port (`MAILLEDGER_METRICS_ADDR`) at `/metrics`.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{IntCounterVec, Opts, Registry, TextEncoder};

/// The registry every mailledger metric lives in.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// `mailledger_commands_total{source, outcome}`: create-email commands handled.
pub static COMMANDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new("mailledger_commands_total", "Create-email commands handled, by source and outcome"),
        &["source", "outcome"],
    )
    .expect("valid metric");
    REGISTRY.register(Box::new(c.clone())).expect("registered once");
    c
});

/// `mailledger_nats_messages_total{outcome}`: command messages consumed, by what became of them.
pub static NATS_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "mailledger_nats_messages_total",
            "NATS command messages consumed, by outcome (acked, nacked, dead_lettered)",
        ),
        &["outcome"],
    )
    .expect("valid metric");
    REGISTRY.register(Box::new(c.clone())).expect("registered once");
    c
});

/// The `/metrics` route.
pub fn router() -> Router {
    LazyLock::force(&COMMANDS);
    LazyLock::force(&NATS_MESSAGES);
    Router::new().route("/metrics", get(render))
}

async fn render() -> impl IntoResponse {
    let text = TextEncoder::new().encode_to_string(&REGISTRY.gather()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
