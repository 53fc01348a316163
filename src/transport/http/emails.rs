//! `POST /api/v1/emails` (and the original `POST /api/v1/email`).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use crate::access::keyring::Authenticated;
use crate::command::{FieldError, Source, ValidationErrors};
use crate::ledger::CreateEmail;
use crate::transport::payload::CreateEmailPayload;

/// The answer to an accepted email.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedBody {
    /// The email's id; the same for every retry with the same idempotency key.
    pub id: Uuid,
}

/// Header carrying the producer's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Queue an email for delivery.
///
/// Answers 202 only once the request is committed to the ledger. With an
/// `Idempotency-Key` header (or an `idempotency_key` field), the same key and the same
/// email answer with the same id and record nothing new; the same key with a different
/// email is a 409.
#[utoipa::path(
    post,
    path = "/api/v1/emails",
    tag = "emails",
    request_body = CreateEmailPayload,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body = same email (max 255 bytes)")),
    responses(
        (status = 202, description = "Recorded and queued", body = CreatedBody,
            headers(("Location" = String, description = "The email's URL: /api/v1/emails/{id}")),
            example = json!({"id": "0193a4f2-8c1e-7d2a-9b1f-3c4d5e6f7a8b"})),
        (status = 400, description = "Malformed JSON or unusable header", body = ErrorBody),
        (status = 409, description = "Idempotency key reused with a different email", body = ErrorBody),
        (status = 413, description = "Request, body or recipient list over its limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Invalid fields; each is named with its reason", body = ErrorBody),
        (status = 503, description = "The event store is unavailable; retry", body = ErrorBody),
    )
)]
pub async fn create_email(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // Refusals of the request itself are counted here; the ledger counts the rest.
    let refused = |e: ApiError| {
        crate::metrics::invalid_command("rest");
        e
    };
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let json = content_type.to_str().ok().and_then(|v| v.split(';').next()).is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        });
        if !json {
            return Err(refused(ApiError::UnsupportedMediaType));
        }
    }
    let body = body.map_err(|rejection| {
        refused(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(ValidationErrors::single(FieldError::too_large(
                "body",
                format!("the request is larger than {} bytes", state.max_request_bytes),
            )))
        } else {
            ApiError::BadRequest(rejection.body_text())
        })
    })?;
    let header_key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| refused(ApiError::BadRequest("the Idempotency-Key header must be visible ASCII".into())))?
                .to_owned(),
        ),
    };
    let payload = CreateEmailPayload::from_json(&body).map_err(|e| refused(e.into()))?;
    let (draft, body_key) = payload.into_draft();
    let idempotency_key = crate::transport::idempotency_key(header_key, body_key).map_err(|_| {
        refused(ApiError::BadRequest("the Idempotency-Key header and the idempotency_key field disagree".into()))
    })?;
    let mut metadata = HashMap::new();
    metadata.insert("transport".into(), "rest".into());
    metadata.insert("correlation_id".into(), super::correlation_id(&headers));
    metadata.insert("caller".into(), peer.to_string());
    if let Some(agent) = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        metadata.insert("user_agent".into(), agent.chars().take(256).collect());
    }
    let accepted =
        state.ledger.create(CreateEmail { draft, source: Source::Rest, idempotency_key, metadata, by }).await?;
    let location = format!("/api/v1/emails/{}", accepted.id);
    let mut response = (StatusCode::ACCEPTED, Json(CreatedBody { id: accepted.id })).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Queue an email on the original service's path: its `models.Email` body
/// (`{"from", "to", "subject", "message"}`, `to` one or several comma-separated
/// addresses) or anything `POST /api/v1/emails` takes, with the same answers.
#[utoipa::path(
    post,
    path = "/api/v1/email",
    tag = "emails (original paths)",
    request_body = CreateEmailPayload,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key + same body = same email (max 255 bytes)")),
    responses(
        (status = 202, description = "Recorded and queued", body = CreatedBody,
            headers(("Location" = String, description = "The email's URL: /api/v1/emails/{id}"))),
        (status = 400, description = "Malformed JSON or unusable header", body = ErrorBody),
        (status = 409, description = "Idempotency key reused with a different email", body = ErrorBody),
        (status = 413, description = "Request, body or recipient list over its limit", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Invalid fields; each is named with its reason", body = ErrorBody),
        (status = 503, description = "The event store is unavailable; retry", body = ErrorBody),
    )
)]
pub async fn create_email_original(
    state: State<HttpState>,
    by: Extension<Authenticated>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    create_email(state, by, peer, headers, body).await
}

/// Who asks for a redrive.
#[derive(Debug, Default, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveBody {
    /// Operator name, recorded in the `Redriven` event (default: the `X-Operator` header,
    /// else the key's name). The key is recorded as the actor either way.
    pub by: Option<String>,
}

/// Queue a dead-lettered email for delivery again.
#[utoipa::path(
    post,
    path = "/api/v1/emails/{id}/redrive",
    tag = "operations",
    params(("id" = Uuid, Path, description = "Email id")),
    request_body(content = Option<RedriveBody>, description = "Optional: who asks"),
    responses(
        (status = 202, description = "Queued again", body = CreatedBody),
        (status = 400, description = "Malformed id or body", body = ErrorBody),
        (status = 404, description = "No such email", body = ErrorBody),
        (status = 409, description = "The email is not dead-lettered", body = ErrorBody),
    )
)]
pub async fn redrive(
    State(state): State<HttpState>,
    Extension(auth): Extension<Authenticated>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = super::read::parse_id(&id)?;
    let body: RedriveBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?
    };
    let by = body.by.or_else(|| headers.get("x-operator").and_then(|v| v.to_str().ok()).map(str::to_owned));
    if by.as_deref().is_some_and(|by| by.is_empty() || by.len() > 256 || by.chars().any(char::is_control)) {
        return Err(ApiError::BadRequest("by: give 1 to 256 printable characters".into()));
    }
    let metadata = HashMap::from([
        ("transport".to_owned(), "rest".to_owned()),
        ("correlation_id".to_owned(), super::correlation_id(&headers)),
        ("caller".to_owned(), peer.to_string()),
    ]);
    match state.ledger.redrive(id, &auth.principal, by.as_deref(), None, metadata).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(CreatedBody { id })).into_response()),
        Err(crate::ledger::LedgerError::Refused(crate::command::EmailError::NotFound)) => {
            Err(ApiError::NotFound(format!("no email {id}")))
        }
        Err(e) => Err(e.into()),
    }
}
