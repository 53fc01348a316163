//! Reading emails: by id (optionally as of an instant), search, and history; plus the
//! original service's paths.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use crate::access::Scope;
use crate::access::keyring::Authenticated;
use crate::query::params::RawSearch;
use crate::query::repository::HistoryEntry;
use crate::query::search::Page;
use crate::query::view::{EmailSummary, EmailView};
use axum::Extension;

/// A page of search results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchBody {
    /// This page's emails, newest first, as summaries (the start of the body in
    /// `snippet`; `GET /api/v1/emails/{id}` for the whole email).
    pub emails: Vec<EmailSummary>,
    /// Matching emails. Exact up to 10,000; past that it is 10,000 and
    /// `total_count_exact` is false.
    pub total_count: i64,
    /// Whether `total_count` is exact.
    pub total_count_exact: bool,
    /// Pages of `size` in `total_count`.
    pub total_pages: i64,
    /// This page, from 1.
    pub page: u32,
    /// Page size (capped at 100).
    pub size: u32,
    /// Whether a next page exists.
    pub has_more: bool,
}

impl From<Page<EmailSummary>> for SearchBody {
    fn from(p: Page<EmailSummary>) -> Self {
        Self {
            emails: p.items,
            total_count: p.total_count,
            total_count_exact: p.total_exact,
            total_pages: p.total_pages,
            page: p.page,
            size: p.size,
            has_more: p.has_more,
        }
    }
}

/// The original service's `models.Email`, as its REST clients decode it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginalEmail {
    /// The email's id.
    #[serde(rename = "emailID")]
    #[schema(example = "0193a4f2-8c1e-7d2a-9b1f-3c4d5e6f7a8b")]
    pub email_id: String,
    /// Sender address.
    #[schema(example = "ann@example.com")]
    pub from: String,
    /// Every recipient (to, cc), comma-separated.
    #[schema(example = "bob@example.org, carol@example.org")]
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// The plain-text body (in search results, its first 200 characters).
    pub message: String,
    /// When it was requested (RFC 3339).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<EmailView> for OriginalEmail {
    fn from(v: EmailView) -> Self {
        Self {
            email_id: v.id.to_string(),
            from: v.from,
            to: v.to.iter().chain(&v.cc).cloned().collect::<Vec<_>>().join(", "),
            subject: v.subject,
            message: v.body,
            created_at: v.created_at,
        }
    }
}

impl From<EmailSummary> for OriginalEmail {
    fn from(v: EmailSummary) -> Self {
        Self {
            email_id: v.id.to_string(),
            from: v.from,
            to: v.to.iter().chain(&v.cc).cloned().collect::<Vec<_>>().join(", "),
            subject: v.subject,
            message: v.snippet,
            created_at: v.created_at,
        }
    }
}

/// The original service's `models.EmailsList`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OriginalEmailsList {
    /// Matching emails (at least this many past 10,000).
    pub total_count: i64,
    /// Pages of `size`.
    pub total_pages: i64,
    /// This page, from 1.
    pub page: u32,
    /// Page size.
    pub size: u32,
    /// Whether a next page exists.
    pub has_more: bool,
    /// This page's emails, newest first.
    pub emails: Vec<OriginalEmail>,
}

impl From<Page<EmailSummary>> for OriginalEmailsList {
    fn from(p: Page<EmailSummary>) -> Self {
        Self {
            total_count: p.total_count,
            total_pages: p.total_pages,
            page: p.page,
            size: p.size,
            has_more: p.has_more,
            emails: p.items.into_iter().map(OriginalEmail::from).collect(),
        }
    }
}

/// `GET /api/v1/emails` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Full text over from, recipients, subject and body; every word must match, as a prefix.
    q: Option<String>,
    /// `queued`, `failed`, `sent`, `dead_lettered` (or `requested`).
    status: Option<String>,
    /// Sender address.
    from: Option<String>,
    /// Recipient address (to, cc or bcc).
    to: Option<String>,
    /// Created at or after (RFC 3339).
    since: Option<String>,
    /// Created before (RFC 3339).
    until: Option<String>,
    /// Page from 1 (default 1); `page × size` ≤ 10,000.
    page: Option<i64>,
    /// Page size (default 10, capped at 100).
    size: Option<i64>,
}

/// The original service's search parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OriginalSearchQuery {
    /// Full-text query.
    search: Option<String>,
    /// Page from 1.
    page: Option<i64>,
    /// Page size (capped at 100).
    size: Option<i64>,
}

/// `?as_of=` on a lookup.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfQuery {
    /// RFC 3339 instant: the email as it was then, folded from its events.
    as_of: Option<String>,
}

/// Parses an email id from a path, or answers 400.
pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse().map_err(|_| ApiError::BadRequest(format!("{} is not an email id (a UUID)", crate::text::echo(raw))))
}

pub(super) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no email {id}"))
}

/// The email as it was at `raw` (an RFC 3339 time), from its events.
async fn view_as_of(state: &HttpState, id: Uuid, raw: &str, by: &Authenticated) -> Result<EmailView, ApiError> {
    let at = chrono::DateTime::parse_from_rfc3339(raw)
        .map_err(|e| ApiError::BadRequest(format!("as_of: not an RFC 3339 time ({e})")))?;
    state.reads.as_of(id, at.to_utc(), &by.principal).await?.ok_or_else(|| not_found(id))
}

/// One email by id; with `as_of`, as it was at that instant.
#[utoipa::path(
    get, path = "/api/v1/emails/{id}", tag = "emails",
    params(("id" = Uuid, Path, description = "Email id"), AsOfQuery),
    responses(
        (status = 200, description = "The email", body = EmailView),
        (status = 400, description = "Malformed id or time", body = ErrorBody),
        (status = 404, description = "No such email (or none yet at as_of)", body = ErrorBody),
    )
)]
pub async fn get_email(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
    as_of: Result<Query<AsOfQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Read)?;
    let id = parse_id(&id)?;
    match query(as_of)?.as_of.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => current(&state, id, &by).await,
        Some(raw) => Ok(Json(view_as_of(&state, id, raw, &by).await?).into_response()),
    }
}

/// The current view, as the cache holds it: its JSON is `EmailView`'s own.
async fn current(state: &HttpState, id: Uuid, by: &Authenticated) -> Result<Response, ApiError> {
    let json = state.reads.get_json(id, &by.principal).await?.ok_or_else(|| not_found(id))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

/// One email on the original path, in the original service's shape (`models.Email`).
#[utoipa::path(
    get, path = "/api/v1/email/{id}", tag = "emails (original paths)",
    params(("id" = Uuid, Path, description = "Email id")),
    responses(
        (status = 200, description = "The email, as the original service answered it", body = OriginalEmail),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 404, description = "No such email", body = ErrorBody),
    )
)]
pub async fn get_email_original(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<OriginalEmail>, ApiError> {
    by.principal.require(Scope::Read)?;
    let id = parse_id(&id)?;
    let view = state.reads.get(id, &by.principal).await?.ok_or_else(|| not_found(id))?;
    Ok(Json(view.into()))
}

async fn run_search(state: &HttpState, raw: RawSearch, by: &Authenticated) -> Result<Page<EmailSummary>, ApiError> {
    by.principal.require(Scope::Read)?;
    let params = raw.parse().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(state.reads.search(&params, &by.principal).await?)
}

/// Search emails, newest first.
#[utoipa::path(
    get, path = "/api/v1/emails", tag = "emails",
    params(SearchQuery),
    responses(
        (status = 200, description = "A page of results", body = SearchBody),
        (status = 400, description = "A parameter is malformed (named in the message)", body = ErrorBody),
    )
)]
pub async fn search(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<SearchBody>, ApiError> {
    let q = query(q)?;
    let raw = RawSearch {
        q: q.q,
        status: q.status,
        from: q.from,
        to: q.to,
        since: q.since,
        until: q.until,
        page: q.page,
        size: q.size,
    };
    Ok(Json(run_search(&state, raw, &by).await?.into()))
}

/// The original search path, in the original service's shape (`models.EmailsList`);
/// `search` takes the search language of `q`.
#[utoipa::path(
    get, path = "/api/v1/email/search", tag = "emails (original paths)",
    params(OriginalSearchQuery),
    responses(
        (status = 200, description = "A page of results, as the original service answered it", body = OriginalEmailsList),
        (status = 400, description = "A malformed query (its position named) or parameter", body = ErrorBody),
    )
)]
pub async fn search_original(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    q: Result<Query<OriginalSearchQuery>, QueryRejection>,
) -> Result<Json<OriginalEmailsList>, ApiError> {
    let q = query(q)?;
    let raw = RawSearch { q: q.search, page: q.page, size: q.size, ..Default::default() };
    Ok(Json(run_search(&state, raw, &by).await?.into()))
}

/// An email's history: every event, in order, with its type, sequence, time, payload
/// and metadata.
#[utoipa::path(
    get, path = "/api/v1/emails/{id}/events", tag = "emails",
    params(("id" = Uuid, Path, description = "Email id")),
    responses(
        (status = 200, description = "The events, oldest first", body = Vec<HistoryEntry>),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn history(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    by.principal.require(Scope::Read)?;
    let id = parse_id(&id)?;
    let events = state.reads.history(id, &by.principal).await?;
    if events.is_empty() {
        return Err(not_found(id));
    }
    Ok(Json(events))
}
