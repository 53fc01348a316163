//! REST over axum: routes, shared state, OpenAPI document and Swagger UI.

pub mod emails;
pub mod error;
pub mod read;

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::{IncomingStream, Listener};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::ledger::Ledger;
use crate::observe::health::{Readiness, ReadinessReport};

/// What every handler can reach.
#[derive(Clone)]
pub struct HttpState {
    /// The write side.
    pub ledger: Ledger,
    /// The read side.
    pub reads: crate::query::ReadSide,
    /// Dependency checks.
    pub readiness: Readiness,
    /// Largest request body accepted.
    pub max_request_bytes: usize,
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "mailledger", description = "An event-sourced mail ledger: queue emails, look them up, audit their history."),
    paths(
        emails::create_email, emails::redrive, read::search, read::get_email, read::history,
        read::get_email_original, read::search_original, health, ready
    ),
    components(schemas(crate::transport::payload::CreateEmailPayload, emails::CreatedBody, emails::RedriveBody, error::ErrorBody, ReadinessReport)),
    tags((name = "emails", description = "Queue and read emails"), (name = "operations", description = "Health and dead-letter redrive"))
)]
pub struct ApiDoc;

/// Largest request body for a given body limit: JSON escaping can double a body.
pub fn max_request_bytes(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

/// All REST routes.
pub fn router(state: HttpState) -> Router {
    let limit = state.max_request_bytes;
    let api = Router::new()
        .route("/api/v1/emails", post(emails::create_email).get(read::search))
        .route("/api/v1/email", post(emails::create_email))
        .layer(DefaultBodyLimit::max(limit))
        .route("/api/v1/emails/{id}", get(read::get_email))
        .route("/api/v1/emails/{id}/events", get(read::history))
        .route("/api/v1/emails/{id}/redrive", post(emails::redrive))
        .route("/api/v1/email/search", get(read::search_original))
        .route("/api/v1/email/{id}", get(read::get_email_original))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route_layer(axum::middleware::from_fn(crate::observe::http::observe));
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .with_state(state)
        .layer(super::request_id::layers())
}

/// Serves `router` on `listener` (plain TCP or TLS) until `stop`, with each
/// connection's peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve<L>(listener: L, router: Router, stop: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
    SocketAddr: for<'a> Connected<IncomingStream<'a, L>>,
{
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// The request's correlation id: its `X-Request-Id` (see [`super::request_id`]).
pub fn correlation_id(headers: &HeaderMap) -> String {
    super::request_id::of(headers)
}

/// Liveness: answers while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "Alive", body = String, example = json!("ok"))))]
pub async fn health() -> &'static str {
    "ok"
}

/// Readiness: PostgreSQL, NATS and Redis reachable (each named when not).
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Every dependency reachable", body = ReadinessReport),
    (status = 503, description = "A dependency is unreachable", body = ReadinessReport),
))]
pub async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.readiness.check().await;
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}
