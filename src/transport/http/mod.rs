//! REST over axum: routes, shared state, OpenAPI document and Swagger UI.

pub mod emails;
pub mod error;
pub mod read;
pub mod server;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
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
    /// How long a request may take before it is answered 408.
    pub request_timeout: std::time::Duration,
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
    let timeout = state.request_timeout;
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .with_state(state)
        .layer(axum::middleware::from_fn(move |request: Request, next: Next| async move {
            match tokio::time::timeout(timeout, next.run(request)).await {
                Ok(response) => response,
                Err(_) => ApiError::Timeout.into_response(),
            }
        }))
        .layer(super::request_id::layers())
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

/// Readiness: PostgreSQL and NATS reachable (each named when not); Redis down is
/// `degraded` (reads go to PostgreSQL), still 200.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "PostgreSQL and NATS reachable (Redis may be listed in `degraded`)", body = ReadinessReport),
    (status = 503, description = "PostgreSQL or NATS is unreachable", body = ReadinessReport),
))]
pub async fn ready(State(state): State<HttpState>) -> impl IntoResponse {
    let report = state.readiness.check().await;
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}
