//! `/api/v1/suppressions`: the suppression list of the key's tenant (an admin key names
//! any tenant, or lists them all). Reading takes the `read` scope; adding and removing
//! take `redrive` (the scope of delivery operations) and are recorded as events with
//! who and why.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use crate::access::keyring::Authenticated;
use crate::access::{Principal, Scope};
use crate::suppression::{self, Change, Cursor, Filter, Suppression, SuppressionError};

/// Most rows on one page.
const MAX_PAGE: i64 = 1000;

impl From<SuppressionError> for ApiError {
    fn from(e: SuppressionError) -> Self {
        match e {
            SuppressionError::Invalid { field, reason } => ApiError::Unprocessable(
                crate::command::ValidationErrors::single(crate::command::FieldError::invalid(field, reason)),
            ),
            SuppressionError::Store(e) => e.into(),
        }
    }
}

/// Which suppressions: every filter is optional.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this tenant's (admin keys; other keys see only their own).
    pub tenant: Option<String>,
    /// Only addresses at this domain.
    pub domain: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    pub reason: Option<String>,
    /// Only those added at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only `bounce` or `manual`.
    pub source: Option<String>,
    /// Rows per page, 1 to 1000 (100).
    pub limit: Option<i64>,
    /// Where the page starts: `next_cursor` of the page before.
    pub cursor: Option<String>,
    /// For `/export`: `csv` (the default) or `ndjson`.
    pub format: Option<String>,
}

/// One page of the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// Newest first.
    pub items: Vec<Suppression>,
    /// Give it as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<String>,
}

/// Adding or removing an address.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// The address (any case; kept in lower case).
    pub address: Option<String>,
    /// Why (recorded with the change; required).
    pub reason: String,
    /// The tenant (admin keys only; others act in their own).
    pub tenant: Option<String>,
}

fn filter(principal: &Principal, p: &ListParams) -> Result<Filter, ApiError> {
    let tenant = principal.reading_tenant(p.tenant.as_deref())?;
    if let Some(source) = &p.source
        && !matches!(source.as_str(), "bounce" | "manual")
    {
        return Err(ApiError::BadRequest(format!("source {} is not bounce or manual", crate::text::echo(source))));
    }
    Ok(Filter {
        tenant,
        domain: p.domain.clone(),
        reason_like: p.reason.clone(),
        since: p.since,
        source: p.source.clone(),
    })
}

fn metadata(by: &Authenticated, headers: &axum::http::HeaderMap) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::from([
        ("transport".to_owned(), "rest".to_owned()),
        ("correlation_id".to_owned(), super::correlation_id(headers)),
    ]);
    by.principal.stamp(&mut m);
    m
}

/// List suppressed recipients, newest first, a page at a time.
#[utoipa::path(
    get, path = "/api/v1/suppressions", tag = "suppressions", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page", body = Page),
        (status = 400, description = "A malformed parameter or cursor", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope, or names another tenant", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    by.principal.require(Scope::Read)?;
    let Query(p) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = filter(&by.principal, &p)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let cursor = match &p.cursor {
        Some(c) => {
            Some(Cursor::decode(c).ok_or_else(|| ApiError::BadRequest("cursor is not one this API gave".into()))?)
        }
        None => None,
    };
    let (items, next) = suppression::list(&state.pool, &filter, cursor.as_ref(), limit).await?;
    Ok(Json(Page { items, next_cursor: next.map(|c| c.encode()) }))
}

/// Export the list (every page) as CSV or NDJSON, streamed.
#[utoipa::path(
    get, path = "/api/v1/suppressions/export", tag = "suppressions", params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "`text/csv` (a header row, then one row each) or `application/x-ndjson`", body = String),
        (status = 400, description = "A malformed parameter, or a format other than csv and ndjson", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope, or names another tenant", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn export(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Read)?;
    let Query(p) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = filter(&by.principal, &p)?;
    let csv = match p.format.as_deref().unwrap_or("csv") {
        "csv" => true,
        "ndjson" => false,
        other => return Err(ApiError::BadRequest(format!("format {} is not csv or ndjson", crate::text::echo(other)))),
    };
    let stream = suppression::export(state.pool.clone(), filter, csv);
    let kind = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    Ok(([(header::CONTENT_TYPE, kind)], Body::from_stream(stream)).into_response())
}

/// Suppress a recipient: mail to it is not attempted again (recorded, per email, as
/// `Suppressed`).
#[utoipa::path(
    post, path = "/api/v1/suppressions", tag = "suppressions", request_body = ChangeBody,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Added", body = Suppression),
        (status = 200, description = "It was on the list already (unchanged)", body = Suppression),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `redrive` scope, or names another tenant", body = ErrorBody),
        (status = 422, description = "Not an address; no reason, or one too long (500 characters) or with control characters", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn add(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Redrive)?;
    let body: ChangeBody =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed suppression: {e}")))?;
    let tenant = by.principal.acting_tenant(body.tenant.as_deref())?;
    let address = body.address.as_deref().unwrap_or_default();
    let change = Change {
        tenant: &tenant,
        address,
        reason: &body.reason,
        by: &by.principal.name,
        metadata: metadata(&by, &headers),
    };
    let added = suppression::add(&state.pool, change, None).await?;
    let row = suppression::get(&state.pool, &tenant, address).await?;
    let row = row.ok_or_else(|| ApiError::Conflict("the suppression was removed as it was added".into()))?;
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(row)).into_response())
}

/// Lift a suppression: mail to the address is attempted again.
#[utoipa::path(
    delete, path = "/api/v1/suppressions/{address}", tag = "suppressions",
    params(("address" = String, Path, description = "The address"),
           ("reason" = String, Query, description = "Why (recorded; required)"),
           ("tenant" = Option<String>, Query, description = "The tenant (admin keys)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Removed", body = RemovedBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `redrive` scope, or names another tenant", body = ErrorBody),
        (status = 404, description = "Not on the list", body = ErrorBody),
        (status = 422, description = "Not an address; no reason, or one too long (500 characters) or with control characters", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn remove(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    headers: axum::http::HeaderMap,
    Path(address): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<RemovedBody>, ApiError> {
    by.principal.require(Scope::Redrive)?;
    let reason = q.get("reason").map(String::as_str).unwrap_or_default();
    let tenant = by.principal.acting_tenant(q.get("tenant").map(String::as_str))?;
    let change = Change {
        tenant: &tenant,
        address: &address,
        reason,
        by: &by.principal.name,
        metadata: metadata(&by, &headers),
    };
    if !suppression::remove(&state.pool, change).await? {
        return Err(ApiError::NotFound(format!(
            "{} is not suppressed in tenant {tenant}",
            crate::text::echo(&address)
        )));
    }
    Ok(Json(RemovedBody { tenant, address: suppression::normalise(&address)?, removed: true }))
}

/// A suppression lifted.
#[derive(Debug, Serialize, ToSchema)]
pub struct RemovedBody {
    /// The tenant.
    pub tenant: String,
    /// The address.
    pub address: String,
    /// Always true.
    pub removed: bool,
}
