//! REST over axum: routes, shared state, OpenAPI document and Swagger UI.

pub mod emails;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod read;
pub mod redrives;
pub mod server;
pub mod suppressions;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use error::ApiError;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::access::keyring::Keyring;
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
    /// The API keys requests are authenticated against.
    pub keyring: Keyring,
    /// For key management.
    pub pool: sqlx::PgPool,
    /// The proof log.
    pub proofs: crate::proof::ProofLog,
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "mailledger", description = "An event-sourced mail ledger: queue emails, look them up, audit their history."),
    paths(
        emails::create_email, emails::redrive, read::search, read::get_email, read::history,
        read::get_email_original, read::search_original, keys::create, keys::list, keys::revoke,
        suppressions::list, suppressions::export, suppressions::add, suppressions::remove,
        redrives::start, redrives::list, redrives::get, redrives::resume, ledger::checkpoint, ledger::inclusion,
        ledger::consistency, health, ready
    ),
    components(schemas(crate::transport::payload::CreateEmailPayload, emails::CreatedBody, emails::RedriveBody,
        error::ErrorBody, ReadinessReport, crate::access::keys::NewKey, crate::access::keys::KeyView, keys::CreatedKey,
        crate::suppression::Suppression, suppressions::Page, suppressions::ChangeBody, suppressions::RemovedBody,
        crate::redrive::Run, crate::redrive::Filter, crate::redrive::Preview, redrives::RedriveRequest,
        crate::proof::body::CheckpointBody, crate::proof::body::InclusionBody, crate::proof::body::InclusionEntry,
        crate::proof::body::ConsistencyBody)),
    modifiers(&BearerScheme),
    security(("bearer" = [])),
    tags((name = "emails", description = "Queue and read emails"), (name = "operations", description = "Health and dead-letter redrive"),
         (name = "keys", description = "API keys (the `admin` scope)"),
         (name = "suppressions", description = "Recipients not attempted again, per tenant"),
         (name = "ledger", description = "The proof log: signed checkpoints, inclusion and consistency proofs"))
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme: `Authorization: Bearer mlk_…`.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("mlk_… (mailledger keys create)".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Authenticates a request to the API (every `/api/v1` route): the principal it acts as
/// goes into its extensions, or it is answered 401 / 429 here.
async fn authenticate(State(state): State<HttpState>, mut request: Request, next: Next) -> Response {
    let result = {
        let values: Vec<&[u8]> =
            request.headers().get_all(axum::http::header::AUTHORIZATION).iter().map(|v| v.as_bytes()).collect();
        state.keyring.authenticate_fresh(&values).await
    };
    match result {
        Ok(authenticated) => {
            request.extensions_mut().insert(authenticated);
            next.run(request).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Starts `mailledger_http_requests_total` and `…_duration_seconds` at zero for every
/// documented route and method (with its first success status), so a fresh instance's
/// dashboard shows 0 rather than "No data" before the first request of each kind.
pub fn metrics_at_zero() {
    use utoipa::openapi::path::Operation;
    let doc = ApiDoc::openapi();
    for (path, item) in &doc.paths.paths {
        let operations: [(&str, &Option<Operation>); 4] =
            [("GET", &item.get), ("POST", &item.post), ("PUT", &item.put), ("DELETE", &item.delete)];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let status =
                operation.responses.responses.keys().find(|s| s.starts_with('2')).map_or("200", String::as_str);
            crate::metrics::HTTP_REQUESTS.with_label_values(&[method, path, status]);
            crate::metrics::HTTP_DURATION.with_label_values(&[method, path]);
        }
    }
}

/// Largest request body for a given body limit: JSON escaping can double a body.
pub fn max_request_bytes(max_body_bytes: usize) -> usize {
    max_body_bytes.saturating_mul(2).saturating_add(64 * 1024)
}

/// All REST routes.
pub fn router(state: HttpState) -> Router {
    let limit = state.max_request_bytes;
    let protected = Router::new()
        .route("/api/v1/emails", post(emails::create_email).get(read::search))
        .route("/api/v1/email", post(emails::create_email))
        .layer(DefaultBodyLimit::max(limit))
        .route("/api/v1/emails/{id}", get(read::get_email))
        .route("/api/v1/emails/{id}/events", get(read::history))
        .route("/api/v1/emails/{id}/redrive", post(emails::redrive))
        .route("/api/v1/email/search", get(read::search_original))
        .route("/api/v1/email/{id}", get(read::get_email_original))
        .route("/api/v1/keys", post(keys::create).get(keys::list))
        .route("/api/v1/keys/{id}", delete(keys::revoke))
        .route("/api/v1/suppressions", get(suppressions::list).post(suppressions::add))
        .route("/api/v1/suppressions/export", get(suppressions::export))
        .route("/api/v1/suppressions/{address}", delete(suppressions::remove))
        .route("/api/v1/redrives", post(redrives::start).get(redrives::list))
        .route("/api/v1/redrives/{id}", get(redrives::get))
        .route("/api/v1/redrives/{id}/resume", post(redrives::resume))
        .route("/api/v1/ledger/checkpoint", get(ledger::checkpoint))
        .route("/api/v1/ledger/proof/inclusion", get(ledger::inclusion))
        .route("/api/v1/ledger/proof/consistency", get(ledger::consistency))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authenticate));
    let api = Router::new()
        .merge(protected)
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
