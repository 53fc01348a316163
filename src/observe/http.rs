//! An axum middleware: a span per request (child of the caller's `traceparent`), and
//! `mailledger_http_requests_total` / `mailledger_http_request_duration_seconds` by
//! method and route template (`/api/v1/emails/{id}`, never the raw path).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics;
use crate::telemetry::{HeaderCarrier, continue_trace};

/// The middleware.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let span = tracing::info_span!("http.request", http.method = %method, http.route = %route, trace_id = tracing::field::Empty);
    continue_trace(&span, &HeaderCarrier(request.headers()));
    let response = next.run(request).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::HTTP_REQUESTS.with_label_values(&[&method, &route, &status]).inc();
    metrics::HTTP_DURATION.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    response
}
