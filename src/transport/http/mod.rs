//! REST over axum: routes, shared state, OpenAPI document and Swagger UI.

pub mod emails;
pub mod error;
pub mod guard;
pub mod keys;
pub mod ledger;
pub mod read;
pub mod redrives;
pub mod server;
pub mod suppressions;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
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

/// What every handler can reach: one shared [`Shared`], so that the clones axum makes
/// of the state for each request (the router, each middleware and each extractor take
/// their own) cost one reference count, not a clone of every handle in it.
#[derive(Clone)]
pub struct HttpState(Arc<Shared>);

impl HttpState {
    /// The state of a router serving `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for HttpState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`HttpState`] shares.
pub struct Shared {
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
    /// Webhook settings (the SSRF guard, the rotation grace).
    pub webhooks: crate::config::WebhookSettings,
}

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "mailledger", description = "An event-sourced mail ledger: queue emails, look them up, audit their history."),
    paths(
        emails::create_email, emails::create_email_original, emails::redrive, read::search, read::get_email, read::history,
        read::get_email_original, read::search_original, keys::create, keys::list, keys::revoke,
        suppressions::list, suppressions::export, suppressions::add, suppressions::remove,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete, webhooks::rotate,
        webhooks::deliveries, webhooks::replay,
        redrives::start, redrives::list, redrives::get, redrives::resume, ledger::checkpoint, ledger::inclusion,
        ledger::consistency, health, ready
    ),
    components(schemas(crate::transport::payload::CreateEmailPayload, emails::CreatedBody, emails::RedriveBody,
        error::ErrorBody, ReadinessReport, crate::access::keys::NewKey, crate::access::keys::KeyView, keys::CreatedKey,
        crate::suppression::Suppression, suppressions::Page, suppressions::ChangeBody, suppressions::RemovedBody,
        crate::webhooks::Endpoint, crate::webhooks::NewEndpoint, crate::webhooks::EndpointChange,
        crate::webhooks::Delivery, crate::webhooks::Attempt, crate::webhooks::Replay, webhooks::CreatedEndpoint,
        webhooks::Rotation, webhooks::RotateBody, webhooks::Replayed, webhooks::Deliveries,
        crate::redrive::Run, crate::redrive::Filter, crate::redrive::Preview, redrives::RedriveRequest,
        crate::proof::body::CheckpointBody, crate::proof::body::InclusionBody, crate::proof::body::InclusionEntry,
        crate::proof::body::ConsistencyBody)),
    modifiers(&BearerScheme, &ContractResponses),
    security(("bearer" = [])),
    tags((name = "emails", description = "Queue and read emails"), (name = "operations", description = "Health and dead-letter redrive"),
         (name = "keys", description = "API keys (the `admin` scope)"),
         (name = "suppressions", description = "Recipients not attempted again, per tenant"),
         (name = "webhooks", description = "Signed status webhooks: endpoints, delivery logs, replays (the `webhooks` scope)"),
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

/// What every operation can answer besides its own: on the API (`/api/…`) 401
/// (with `WWW-Authenticate`), 403, 408, 429 and 503 (with `Retry-After`) and 500; and
/// on every answer the `X-Request-Id` header, taken from the request or made.
struct ContractResponses;

impl utoipa::Modify for ContractResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, ResponseBuilder, Type};
        let string = || utoipa::openapi::ObjectBuilder::new().schema_type(Type::String).build();
        let header = |description: &str| HeaderBuilder::new().schema(string()).description(Some(description)).build();
        let error = |description: &str, extra: Option<(&str, &str)>| {
            let mut r = ResponseBuilder::new().description(description).content(
                "application/json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
            );
            if let Some((name, about)) = extra {
                r = r.header(name, header(about));
            }
            r.build()
        };
        let common = [
            ("401", error("No usable API key", Some(("WWW-Authenticate", "Bearer realm=\"mailledger\"")))),
            ("403", error("The key lacks the scope, or acts outside its tenant", None)),
            ("408", error("The request was not complete in time", None)),
            ("429", error("The key's rate or daily quota is spent", Some(("Retry-After", "Seconds to wait")))),
            ("500", error("Internal error (the cause is logged, never returned)", None)),
            ("503", error("A dependency is unavailable; retry", Some(("Retry-After", "Seconds to wait")))),
        ];
        let request_id = ParameterBuilder::new()
            .name("X-Request-Id")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("Correlation id (1 to 128 visible ASCII characters); made when absent"))
            .schema(Some(string()))
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/");
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                if api {
                    for (status, response) in &common {
                        op.responses
                            .responses
                            .entry((*status).to_owned())
                            .or_insert_with(|| RefOr::T(response.clone()));
                    }
                }
                for response in op.responses.responses.values_mut() {
                    if let RefOr::T(r) = response {
                        r.headers.insert("X-Request-Id".into(), header("The request's id, as sent or as made"));
                    }
                }
                op.parameters.get_or_insert_with(Vec::new).push(request_id.clone());
            }
        }
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

/// The API's routes (every `/api/v1` path), before authentication is layered on:
/// bodies up to `max_request_bytes` where a body is taken. [`router`] serves them
/// behind [`authenticate`]; the contract test walks them against the OpenAPI document.
pub fn api_routes(max_request_bytes: usize) -> Router<HttpState> {
    Router::new()
        .route("/api/v1/emails", post(emails::create_email).get(read::search))
        .route("/api/v1/email", post(emails::create_email_original))
        .layer(DefaultBodyLimit::max(max_request_bytes))
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
        .route("/api/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route("/api/v1/webhooks/{id}", get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route("/api/v1/webhooks/{id}/rotate", post(webhooks::rotate))
        .route("/api/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/api/v1/webhooks/{id}/replay", post(webhooks::replay))
        .route("/api/v1/redrives", post(redrives::start).get(redrives::list))
        .route("/api/v1/redrives/{id}", get(redrives::get))
        .route("/api/v1/redrives/{id}/resume", post(redrives::resume))
        .route("/api/v1/ledger/checkpoint", get(ledger::checkpoint))
        .route("/api/v1/ledger/proof/inclusion", get(ledger::inclusion))
        .route("/api/v1/ledger/proof/consistency", get(ledger::consistency))
}

/// The routes open without a key: liveness and readiness.
pub fn open_routes() -> Router<HttpState> {
    Router::new().route("/health", get(health)).route("/ready", get(ready))
}

/// All REST routes: the API's behind [`guard::Authenticate`] (each request observed,
/// then authenticated), the open ones observed. The layers every request passes, matched
/// or not, go around the router as a whole: [`service`].
///
/// Each layer put on a router (rather than around it) wraps every route in a boxed
/// service of its own, cloned and boxed again for each request: the API's two route
/// layers are one stack here, and the outer ones are not on the router at all.
pub fn router(state: HttpState) -> Router {
    let protected = api_routes(state.max_request_bytes).route_layer(
        tower::ServiceBuilder::new()
            .layer(crate::observe::http::ObserveLayer)
            .layer(guard::AuthenticateLayer::new(state.keyring.clone())),
    );
    let open = open_routes().route_layer(crate::observe::http::ObserveLayer);
    Router::new()
        .merge(protected)
        .merge(open)
        .merge(SwaggerUi::new("/swagger-ui").url("/api-docs/openapi.json", ApiDoc::openapi()))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(state)
}

/// [`router`] behind what every request passes, outermost first: `X-Min-Position`
/// (`consistency`), the request id (kept, taken from `X-Correlation-Id` or made; echoed),
/// and the request timeout (408).
pub fn service(
    state: HttpState,
    consistency: crate::transport::consistency::ConsistencyLayer,
) -> impl tower::Service<
    axum::http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let timeout = state.request_timeout;
    tower::ServiceBuilder::new()
        .layer(consistency)
        .layer(super::request_id::layers())
        .layer(guard::DeadlineLayer::new(timeout))
        .map_request(|request: axum::http::Request<hyper::body::Incoming>| request.map(axum::body::Body::new))
        .service(router(state))
}

/// 404 for a path no route has, in the JSON error shape.
async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {}", crate::text::echo(uri.path())))
}

/// 405 for a method a path does not take, in the JSON error shape (axum adds `Allow`).
async fn no_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", crate::text::echo(uri.path())))
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
