//! The proof log over REST: the newest (or a given) signed checkpoint, inclusion
//! proofs by email (the `read` scope, tenant-scoped: another tenant's email is 404) or
//! by position (the `admin` scope: any aggregate, any tenant), and consistency proofs
//! (the `read` scope). Numbers are parsed here, so a malformed one is a 400 naming it.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use utoipa::IntoParams;

use super::HttpState;
use super::error::{ApiError, ErrorBody};
use super::read::{parse_id, query};
use crate::access::Scope;
use crate::access::keyring::Authenticated;
use crate::proof::body::{CheckpointBody, ConsistencyBody, InclusionBody};

/// `GET /api/v1/ledger/checkpoint` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckpointQuery {
    /// A tree size with a signed checkpoint (default: the newest).
    size: Option<String>,
}

/// `GET /api/v1/ledger/proof/inclusion` parameters: `email` or `position`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// Every event of this email (`read` scope; your tenant's emails only).
    email: Option<String>,
    /// The event at this position (`admin` scope).
    position: Option<String>,
    /// The checkpoint's tree size (default: the newest).
    size: Option<String>,
}

/// `GET /api/v1/ledger/proof/consistency` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// The smaller tree size (from 1).
    first: Option<String>,
    /// The larger tree size (default: the newest checkpoint's).
    second: Option<String>,
}

/// A whole number from a parameter, or a 400 naming it.
fn number<T: std::str::FromStr>(name: &str, raw: Option<&str>) -> Result<Option<T>, ApiError> {
    raw.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|_| {
                ApiError::BadRequest(format!("{name}: {} is not a whole number ≥ 0", crate::text::echo(s)))
            })
        })
        .transpose()
}

/// The newest signed checkpoint, or the one of `size`.
#[utoipa::path(
    get, path = "/api/v1/ledger/checkpoint", tag = "ledger", params(CheckpointQuery),
    responses(
        (status = 200, description = "A signed checkpoint", body = CheckpointBody),
        (status = 400, description = "A malformed size", body = ErrorBody),
        (status = 404, description = "No checkpoint (of that size) yet", body = ErrorBody),
    )
)]
pub async fn checkpoint(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    q: Result<Query<CheckpointQuery>, QueryRejection>,
) -> Result<Json<CheckpointBody>, ApiError> {
    by.principal.require(Scope::Read)?;
    let q = query(q)?;
    let size = number("size", q.size.as_deref())?;
    Ok(Json((&state.proofs.checkpoint(size).await?).into()))
}

/// Inclusion proofs in a signed checkpoint: of every event of an email, or of the event
/// at a position.
#[utoipa::path(
    get, path = "/api/v1/ledger/proof/inclusion", tag = "ledger", params(InclusionQuery),
    responses(
        (status = 200, description = "The proofs and their checkpoint", body = InclusionBody),
        (status = 400, description = "Malformed or missing parameters", body = ErrorBody),
        (status = 403, description = "A position needs the admin scope", body = ErrorBody),
        (status = 404, description = "No such email, position or checkpoint (or not covered yet)", body = ErrorBody),
    )
)]
pub async fn inclusion(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> Result<Json<InclusionBody>, ApiError> {
    by.principal.require(Scope::Read)?;
    let q = query(q)?;
    let size = number("size", q.size.as_deref())?;
    match (q.email.as_deref(), number::<i64>("position", q.position.as_deref())?) {
        (Some(email), None) => {
            let id = parse_id(email)?;
            let (checkpoint, proofs) = state.proofs.prove_email(id, &by.principal, size).await?;
            Ok(Json(InclusionBody::new(&checkpoint, &proofs)))
        }
        (None, Some(position)) => {
            by.principal.require(Scope::Admin)?;
            let (checkpoint, proof) = state.proofs.prove_position(position, size).await?;
            Ok(Json(InclusionBody::new(&checkpoint, std::slice::from_ref(&proof))))
        }
        _ => Err(ApiError::BadRequest("give one of email (an email id) or position".into())),
    }
}

/// The proof that the tree of `first` events is a prefix of the tree of `second`.
#[utoipa::path(
    get, path = "/api/v1/ledger/proof/consistency", tag = "ledger", params(ConsistencyQuery),
    responses(
        (status = 200, description = "The proof and both roots", body = ConsistencyBody),
        (status = 400, description = "Malformed sizes, 0, out of order, or past the newest checkpoint", body = ErrorBody),
        (status = 404, description = "No checkpoint yet", body = ErrorBody),
    )
)]
pub async fn consistency(
    State(state): State<HttpState>,
    Extension(by): Extension<Authenticated>,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyBody>, ApiError> {
    by.principal.require(Scope::Read)?;
    let q = query(q)?;
    let first = number("first", q.first.as_deref())?.ok_or_else(|| ApiError::BadRequest("first: required".into()))?;
    let second = number("second", q.second.as_deref())?;
    Ok(Json((&state.proofs.consistency(first, second).await?).into()))
}
