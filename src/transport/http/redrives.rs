//! `/api/v1/redrives`: bulk redrives by filter (the `redrive` scope), run in the
//! background on the instance that was asked, resumable on any. A tenant's key redrives
//! its own dead letters; an admin key any tenant's, or every tenant's.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use crate::access::keyring::Authenticated;
use crate::access::{Principal, Scope};
use crate::redrive::{self, Filter, Preview, Rate, RedriveError, Run};

impl From<RedriveError> for ApiError {
    fn from(e: RedriveError) -> Self {
        match e {
            RedriveError::NotFound(id) => ApiError::NotFound(format!("no redrive run {id}")),
            RedriveError::Busy(..) => ApiError::Conflict(e.to_string()),
            RedriveError::Ledger(e) => e.into(),
            RedriveError::Store(e) => e.into(),
        }
    }
}

/// Which dead letters to redrive, and how fast.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Dead-lettered at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this instant.
    pub until: Option<DateTime<Utc>>,
    /// The dead letter's reason contains this text (case-insensitive).
    pub reason_like: Option<String>,
    /// A recipient at this domain.
    pub to_domain: Option<String>,
    /// The tenant (admin keys; default: the key's own, or every tenant for an admin).
    pub tenant: Option<String>,
    /// `50/s` (the default), `3000/m`, or `0` for no limit.
    pub rate: Option<String>,
    /// Count and show a sample; redrive nothing.
    #[serde(default)]
    pub dry_run: bool,
}

fn id_of(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::BadRequest(format!("{} is not a run id (a UUID)", crate::text::echo(raw))))
}

fn spawn_run(state: &HttpState, id: Uuid, principal: Principal) {
    let (pool, ledger) = (state.pool.clone(), state.ledger.clone());
    tokio::spawn(async move {
        let stop = tokio_util::sync::CancellationToken::new();
        match redrive::execute(&pool, &ledger, id, &principal, &crate::ops::progress::Silent, stop).await {
            Ok(run) => tracing::info!(run = %id, redriven = run.redriven, done = run.done, total = run.total,
                finished = run.finished_at.is_some(), "bulk redrive ended"),
            Err(e) => tracing::warn!(run = %id, error = %e, "bulk redrive stopped; resume it"),
        }
    });
}

fn accepted(run: Run) -> Response {
    let location = format!("/api/v1/redrives/{}", run.id);
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(run)).into_response()
}

/// Redrive every dead letter a filter matches: counted first, then run in the
/// background at the given pace (or, with `dry_run`, only counted).
#[utoipa::path(
    post, path = "/api/v1/redrives", tag = "operations", request_body = RedriveRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Started; `total` dead letters will be redriven. Follow it at `Location`", body = Run,
            headers(("Location" = String, description = "/api/v1/redrives/{id}"))),
        (status = 200, description = "A dry run: what would be redriven", body = Preview),
        (status = 400, description = "Malformed JSON, or a rate that is not one", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `redrive` scope, or names another tenant", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn start(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Redrive)?;
    let asked: RedriveRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed redrive request: {e}")))?;
    let rate: Rate = asked.rate.as_deref().unwrap_or("50/s").parse().map_err(ApiError::BadRequest)?;
    let filter = Filter {
        tenant: by.principal.reading_tenant(asked.tenant.as_deref())?,
        since: asked.since,
        until: asked.until,
        reason_like: asked.reason_like,
        to_domain: asked.to_domain,
    };
    if asked.dry_run {
        return Ok(Json(redrive::preview(&state.pool, &filter).await?).into_response());
    }
    let run = redrive::start(&state.pool, &filter, rate, &by.principal).await?;
    tracing::info!(run = %run.id, total = run.total, by = %by.principal.name, "bulk redrive started");
    spawn_run(&state, run.id, by.principal.clone());
    Ok(accepted(run))
}

/// A bulk redrive's progress.
#[utoipa::path(
    get, path = "/api/v1/redrives/{id}", tag = "operations",
    params(("id" = Uuid, Path, description = "The run's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The run: `done` of `total`, `finished_at` once over", body = Run),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `redrive` scope", body = ErrorBody),
        (status = 404, description = "No such run (in this tenant)", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<Run>, ApiError> {
    by.principal.require(Scope::Redrive)?;
    let id = id_of(&id)?;
    let run = redrive::get(&state.pool, id, by.principal.tenant_filter()).await?;
    Ok(Json(run.ok_or(RedriveError::NotFound(id))?))
}

/// The latest bulk redrives (50), newest first.
#[utoipa::path(
    get, path = "/api/v1/redrives", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Runs, newest first", body = Vec<Run>),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `redrive` scope", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
) -> Result<Json<Vec<Run>>, ApiError> {
    by.principal.require(Scope::Redrive)?;
    Ok(Json(redrive::list(&state.pool, by.principal.tenant_filter(), 50).await?))
}

/// Go on with an interrupted bulk redrive: what is done stays done.
#[utoipa::path(
    post, path = "/api/v1/redrives/{id}/resume", tag = "operations",
    params(("id" = Uuid, Path, description = "The run's id")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Resumed in the background", body = Run,
            headers(("Location" = String, description = "/api/v1/redrives/{id}"))),
        (status = 200, description = "It had finished: nothing to do", body = Run),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `redrive` scope", body = ErrorBody),
        (status = 404, description = "No such run (in this tenant)", body = ErrorBody),
        (status = 409, description = "A worker is running it now", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Redrive)?;
    let id = id_of(&id)?;
    let run = redrive::get(&state.pool, id, by.principal.tenant_filter()).await?.ok_or(RedriveError::NotFound(id))?;
    if run.finished_at.is_some() {
        return Ok(Json(run).into_response());
    }
    let live =
        run.heartbeat.is_some_and(|h| Utc::now() - h < chrono::Duration::from_std(redrive::STALE).unwrap_or_default());
    if let (Some(worker), true) = (&run.worker, live) {
        return Err(RedriveError::Busy(id, worker.clone()).into());
    }
    spawn_run(&state, id, by.principal.clone());
    Ok(accepted(run))
}
