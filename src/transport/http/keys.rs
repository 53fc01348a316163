//! `/api/v1/keys`: managing API keys over REST (the `admin` scope). The key itself is in
//! the answer to its creation and nowhere else, ever.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use crate::access::Scope;
use crate::access::keyring::Authenticated;
use crate::access::keys::{self, KeyError, KeyView, NewKey};

/// A key just made: its record, and the key itself — shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key's record.
    #[serde(flatten)]
    pub record: KeyView,
    /// The key: give it as `Authorization: Bearer <key>`. It is not stored and cannot
    /// be shown again.
    pub key: String,
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid { field, reason } => ApiError::Unprocessable(crate::command::ValidationErrors::single(
                crate::command::FieldError::invalid(field, reason),
            )),
            KeyError::NotFound(id) => ApiError::NotFound(format!("no key {id}")),
            KeyError::Database(e) => e.into(),
        }
    }
}

/// Make an API key (admin).
#[utoipa::path(
    post, path = "/api/v1/keys", tag = "keys", request_body = NewKey,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Made; `key` is shown this once", body = CreatedKey),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 422, description = "A field is not acceptable (named)", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    by.principal.require(Scope::Admin)?;
    let new: NewKey =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed key request: {e}")))?;
    let (record, key) = keys::create(&state.pool, &new, &by.principal).await?;
    state.keyring.reload().await?;
    tracing::info!(key_id = %record.id, name = %record.name, tenant = %record.tenant, by = %by.principal.name, "API key made");
    Ok((StatusCode::CREATED, Json(CreatedKey { record: KeyView::from(&record), key })).into_response())
}

/// List API keys (admin): never their secrets.
#[utoipa::path(
    get, path = "/api/v1/keys", tag = "keys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every key, oldest first", body = Vec<KeyView>),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    by.principal.require(Scope::Admin)?;
    let keys = keys::list(&state.pool, &by.principal).await?;
    Ok(Json(keys.iter().map(KeyView::from).collect()))
}

/// Revoke an API key (admin): it stops working everywhere within a second.
#[utoipa::path(
    delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = uuid::Uuid, Path, description = "The key's id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Revoked (or it already was)", body = KeyView),
        (status = 400, description = "Malformed id", body = ErrorBody),
        (status = 401, description = "No usable API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `admin` scope", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
        (status = 429, description = "The key's request rate is spent", body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    by.principal.require(Scope::Admin)?;
    let id =
        id.parse().map_err(|_| ApiError::BadRequest(format!("{} is not a key id (a UUID)", crate::text::echo(&id))))?;
    let record = keys::revoke(&state.pool, id, &by.principal).await?;
    state.keyring.reload().await?;
    tracing::info!(key_id = %record.id, by = %by.principal.name, "API key revoked");
    Ok(Json(KeyView::from(&record)))
}
