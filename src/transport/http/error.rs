//! The one mapping from errors to HTTP answers. Every error body is JSON:
//! `{"error": {"code", "message", "fields"?}}`. A 5xx says only "internal error" or
//! "temporarily unavailable"; the cause goes to the log, never to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::access::AccessError;
use crate::command::{FieldError, ValidationErrors};
use crate::ledger::LedgerError;
use crate::proof::ProofLogError;
use crate::transport::payload::PayloadError;

/// An error answer.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body is not JSON, or a header is unusable.
    BadRequest(String),
    /// 413: the request or one of its fields is over a limit.
    TooLarge(ValidationErrors),
    /// 415: not JSON.
    UnsupportedMediaType,
    /// 422: fields that do not validate.
    Unprocessable(ValidationErrors),
    /// 404: no such resource.
    NotFound(String),
    /// 405: the path does not take this method.
    MethodNotAllowed(String),
    /// 409: the idempotency key was used for another email, or the state forbids it.
    Conflict(String),
    /// 408: the request was not answered in time (its body never came, say).
    Timeout,
    /// 401: no usable API key.
    Unauthenticated(String),
    /// 403: the key may not do this.
    Forbidden(String),
    /// 429: a rate or quota is spent; retry after this many seconds.
    TooMany(String, u64),
    /// 503: a dependency is down; retry.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// 500: a bug.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

/// Body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (`validation_failed`, `malformed_json`, …).
    #[schema(example = "validation_failed")]
    pub code: &'static str,
    /// For a person.
    #[schema(example = "to[0]: is not a valid address: Missing separator character '@'.")]
    pub message: String,
    /// Each refused field, when the error is about fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldErrorBody>,
}

/// One refused field.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldErrorBody {
    /// Path of the field (`to[1]`, `headers.X-Tag`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
    /// `missing`, `invalid` or `too_large`.
    pub kind: String,
}

impl From<&FieldError> for FieldErrorBody {
    fn from(e: &FieldError) -> Self {
        let kind = serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        Self { field: e.field.clone(), reason: e.reason.clone(), kind }
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Invalid(v) if v.is_too_large() => ApiError::TooLarge(v),
            LedgerError::Invalid(v) => ApiError::Unprocessable(v),
            LedgerError::Conflict => {
                ApiError::Conflict("this Idempotency-Key was already used with a different request".into())
            }
            LedgerError::Refused(e) => ApiError::Conflict(e.to_string()),
            LedgerError::Denied(e) => e.into(),
            LedgerError::Unavailable(e) => ApiError::Unavailable(e),
            LedgerError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<ProofLogError> for ApiError {
    fn from(e: ProofLogError) -> Self {
        match e {
            ProofLogError::BadRequest(m) => ApiError::BadRequest(m),
            ProofLogError::NotFound(m) => ApiError::NotFound(m),
            ProofLogError::Store(e) => e.into(),
        }
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Unauthenticated(m) => ApiError::Unauthenticated(m),
            AccessError::Forbidden(m) => ApiError::Forbidden(m),
            AccessError::RateLimited(s) | AccessError::QuotaExceeded(s) => ApiError::TooMany(e.to_string(), s),
        }
    }
}

impl From<PayloadError> for ApiError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::Malformed(m) => ApiError::BadRequest(format!("malformed JSON: {m}")),
            PayloadError::Invalid(v) => ApiError::Unprocessable(v),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, fields) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m, vec![]),
            ApiError::TooLarge(v) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", v.to_string(), fields(&v)),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the request as application/json".into(),
                vec![],
            ),
            ApiError::Unprocessable(v) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", v.to_string(), fields(&v))
            }
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m, vec![]),
            ApiError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", m, vec![]),
            ApiError::Unauthenticated(m) => {
                let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthenticated", m);
                let challenge = HeaderValue::from_static("Bearer realm=\"mailledger\"");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
                return response;
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m, vec![]),
            ApiError::TooMany(m, retry_after) => {
                let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                return response;
            }
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request was not complete in time; send it again".into(),
                vec![],
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m, vec![]),
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, source = e.source().map(tracing::field::display), "request failed: dependency unavailable");
                let body = ErrorBody {
                    error: ErrorDetail {
                        code: "unavailable",
                        message: "temporarily unavailable; retry later".into(),
                        fields: vec![],
                    },
                };
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            ApiError::Internal(e) => {
                tracing::error!(error = %e, source = e.source().map(tracing::field::display), "request failed: internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), vec![])
            }
        };
        (status, Json(ErrorBody { error: ErrorDetail { code, message, fields } })).into_response()
    }
}

fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, Json(ErrorBody { error: ErrorDetail { code, message, fields: vec![] } })).into_response()
}

fn fields(v: &ValidationErrors) -> Vec<FieldErrorBody> {
    v.0.iter().map(FieldErrorBody::from).collect()
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::store::is_unavailable(&e) {
            ApiError::Unavailable(Box::new(e))
        } else {
            ApiError::Internal(Box::new(e))
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
        if crate::store::is_unavailable(boxed.as_ref()) {
            ApiError::Unavailable(boxed)
        } else {
            ApiError::Internal(boxed)
        }
    }
}
