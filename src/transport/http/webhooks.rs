//! `/api/v1/webhooks`: a tenant's webhook endpoints, their delivery logs and replays.
//! Everything takes the `webhooks` scope; a key sees and changes only its tenant's
//! endpoints (another tenant's is `404`, as an unknown one), an admin key any tenant's.
//! The secret is in the answer to `POST /api/v1/webhooks` and `…/rotate` only.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use crate::access::Scope;
use crate::access::keyring::Authenticated;
use crate::command::{FieldError, ValidationErrors};
use crate::webhooks::{self, Delivery, Endpoint, EndpointChange, LogFilter, NewEndpoint, Replay, WebhookError};

/// Largest request body of these routes.
const MAX_BODY: usize = 16 * 1024;

/// Longest rotation grace period.
const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid { field, reason } => {
                ApiError::Unprocessable(ValidationErrors::single(FieldError::invalid(field, reason)))
            }
            WebhookError::Conflict(m) => ApiError::Conflict(m),
            WebhookError::NotFound(id) => ApiError::NotFound(format!("no webhook endpoint {id}")),
            WebhookError::Store(e) => e.into(),
            WebhookError::Sealing(m) => ApiError::Internal(m.into()),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::TooLarge(ValidationErrors::single(FieldError::too_large(
            "body",
            format!("is {} bytes; at most {MAX_BODY}", body.len()),
        ))));
    }
    if body.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::BadRequest(format!("malformed {what}: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed {what}: {e}")))
}

fn endpoint_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::NotFound(format!("no webhook endpoint {}", crate::text::echo(text))))
}

/// A new endpoint, with its secret: the only time the secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEndpoint {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// `whsec_…`: the HMAC-SHA256 key of `Mailledger-Signature`. Keep it; it is not shown again.
    pub secret: String,
}

/// Register an endpoint: its secret is in this answer, and only here.
#[utoipa::path(
    post, path = "/api/v1/webhooks", tag = "webhooks", request_body = NewEndpoint,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered; `secret` is shown this once", body = CreatedEndpoint),
        (status = 400, description = "Malformed JSON, or an unknown field", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `webhooks` scope, or names another tenant", body = ErrorBody),
        (status = 409, description = "The tenant has an endpoint for this URL already, or 50 endpoints", body = ErrorBody),
        (status = 413, description = "A body over 16 KiB", body = ErrorBody),
        (status = 422, description = "A bad URL (not http/https, credentials, not resolving, or a private address), no or unknown kinds, a bad description", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let new: NewEndpoint = parse(&body, "webhook endpoint")?;
    let tenant = by.principal.acting_tenant(new.tenant.as_deref())?;
    let (endpoint, secret) = webhooks::create(&state.pool, &tenant, &new, &by.principal.name, &state.webhooks).await?;
    Ok((StatusCode::CREATED, Json(CreatedEndpoint { endpoint, secret })).into_response())
}

/// Which endpoints.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this tenant's (admin keys; other keys see only their own).
    pub tenant: Option<String>,
}

/// List the tenant's endpoints (never their secrets).
#[utoipa::path(
    get, path = "/api/v1/webhooks", tag = "webhooks", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoints, oldest first", body = [Endpoint]),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `webhooks` scope, or names another tenant", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let Query(p) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let tenant = by.principal.reading_tenant(p.tenant.as_deref())?;
    Ok(Json(webhooks::list(&state.pool, tenant.as_deref()).await?))
}

/// One endpoint (never its secret).
#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 403, description = "The key lacks the `webhooks` scope", body = ErrorBody),
        (status = 404, description = "No such endpoint in the key's tenant", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    Ok(Json(webhooks::get(&state.pool, id, by.principal.tenant_filter()).await?))
}

/// Change an endpoint: URL, kinds, description, enabled. `{"enabled": true}` also
/// resumes a paused endpoint, or one a 410 disabled.
#[utoipa::path(
    patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", request_body = EndpointChange,
    params(("id" = Uuid, Path, description = "The endpoint")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed", body = Endpoint),
        (status = 400, description = "Malformed JSON, or an unknown field", body = ErrorBody),
        (status = 403, description = "The key lacks the `webhooks` scope", body = ErrorBody),
        (status = 404, description = "No such endpoint in the key's tenant", body = ErrorBody),
        (status = 409, description = "The tenant has an endpoint for this URL already", body = ErrorBody),
        (status = 422, description = "A bad URL, kinds or description", body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Endpoint>, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let change: EndpointChange = parse(&body, "webhook change")?;
    let tenant = by.principal.tenant_filter();
    let allow = state.webhooks.allow_private;
    Ok(Json(webhooks::update(&state.pool, id, tenant, &change, &by.principal.name, allow).await?))
}

/// Remove an endpoint and its delivery log; nothing more is sent to it.
#[utoipa::path(
    delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path, description = "The endpoint")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "The key lacks the `webhooks` scope", body = ErrorBody),
        (status = 404, description = "No such endpoint in the key's tenant", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    webhooks::delete(&state.pool, id, by.principal.tenant_filter(), &by.principal.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A rotation's request.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the old secret goes on signing (`24h`, `90m`; 0s ends it now; at most
    /// 30 days). Default `webhooks.rotation_grace`.
    pub grace: Option<String>,
}

/// A new secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rotation {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: Endpoint,
    /// The new `whsec_…`. Keep it; it is not shown again.
    pub secret: String,
}

/// Rotate the secret: a new one (shown once) signs from now on; the old one signs as
/// well (a second `v1=`) for the grace period.
#[utoipa::path(
    post, path = "/api/v1/webhooks/{id}/rotate", tag = "webhooks", request_body = RotateBody,
    params(("id" = Uuid, Path, description = "The endpoint")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Rotated; `secret` is shown this once", body = Rotation),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "The key lacks the `webhooks` scope", body = ErrorBody),
        (status = 404, description = "No such endpoint in the key's tenant", body = ErrorBody),
        (status = 422, description = "A grace that is not a duration, or over 30 days", body = ErrorBody),
    )
)]
pub async fn rotate(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Rotation>, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let body: RotateBody = parse(&body, "rotation")?;
    let grace = match body.grace.as_deref() {
        None => state.webhooks.rotation_grace,
        Some(g) => humantime::parse_duration(g).map_err(|e| {
            ApiError::Unprocessable(ValidationErrors::single(FieldError::invalid(
                "grace",
                format!("{} is not a duration: {e}", crate::text::echo(g)),
            )))
        })?,
    };
    if grace > MAX_GRACE {
        return Err(ApiError::Unprocessable(ValidationErrors::single(FieldError::invalid(
            "grace",
            "is longer than 30 days",
        ))));
    }
    let (endpoint, secret) =
        webhooks::rotate(&state.pool, id, by.principal.tenant_filter(), grace, &by.principal.name, &state.webhooks)
            .await?;
    Ok(Json(Rotation { endpoint, secret }))
}

/// Which deliveries.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// Only `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// Only events at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only events before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only deliveries with an id below this (the last id of the page before).
    pub before: Option<i64>,
    /// Rows, 1 to 500 (50).
    pub limit: Option<i64>,
}

/// A page of the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deliveries {
    /// Newest first, each with its attempts.
    pub items: Vec<Delivery>,
    /// Give it as `before` for the next page; absent on the last.
    pub next_before: Option<i64>,
}

/// The delivery log of an endpoint: every delivery with each attempt's status,
/// latency and the answer's first 1 KiB.
#[utoipa::path(
    get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks", params(("id" = Uuid, Path, description = "The endpoint"), LogParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page, newest first", body = Deliveries),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 403, description = "The key lacks the `webhooks` scope", body = ErrorBody),
        (status = 404, description = "No such endpoint in the key's tenant", body = ErrorBody),
    )
)]
pub async fn deliveries(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
    params: Result<Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Deliveries>, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let Query(p) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(s) = &p.status
        && !matches!(s.as_str(), "pending" | "delivered" | "failed")
    {
        return Err(ApiError::BadRequest(format!(
            "status {} is not pending, delivered or failed",
            crate::text::echo(s)
        )));
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 500".into()));
    }
    webhooks::get(&state.pool, id, by.principal.tenant_filter()).await?;
    let filter = LogFilter { status: p.status, since: p.since, until: p.until, before: p.before };
    let items = webhooks::deliveries(&state.pool, id, &filter, limit).await?;
    let next_before = (items.len() as i64 == limit).then(|| items.last().map(|d| d.id)).flatten();
    Ok(Json(Deliveries { items, next_before }))
}

/// How many deliveries a replay queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// Deliveries queued again.
    pub queued: u64,
}

/// Send again one delivery (`delivery_id`) or every delivery of events in a time range
/// (`since`, `until`): same body and event id, newly signed, retried afresh.
#[utoipa::path(
    post, path = "/api/v1/webhooks/{id}/replay", tag = "webhooks", request_body = Replay,
    params(("id" = Uuid, Path, description = "The endpoint")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Queued again", body = Replayed),
        (status = 400, description = "Malformed JSON, or an unknown field", body = ErrorBody),
        (status = 403, description = "The key lacks the `webhooks` scope", body = ErrorBody),
        (status = 404, description = "No such endpoint in the key's tenant", body = ErrorBody),
        (status = 422, description = "Neither delivery_id nor since; until not after since; a delivery of another endpoint", body = ErrorBody),
    )
)]
pub async fn replay(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Webhooks)?;
    let id = endpoint_id(&id)?;
    let what: Replay = parse(&body, "replay")?;
    webhooks::get(&state.pool, id, by.principal.tenant_filter()).await?;
    let queued = webhooks::replay(&state.pool, id, &what).await?;
    Ok((StatusCode::ACCEPTED, Json(Replayed { queued })).into_response())
}
