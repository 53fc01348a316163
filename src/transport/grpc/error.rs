//! The one mapping from ledger errors to gRPC statuses: invalid input is
//! `INVALID_ARGUMENT` (field and reason in the message, and each field as a
//! `google.rpc.BadRequest` field violation in the details), a reused idempotency key is
//! `ALREADY_EXISTS`, a state conflict `FAILED_PRECONDITION`, a dependency outage
//! `UNAVAILABLE`, anything else `INTERNAL` with no detail (the cause is logged).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::command::ValidationErrors;

use crate::access::AccessError;
use crate::ledger::LedgerError;
use crate::proof::ProofLogError;

impl From<AccessError> for Status {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Unauthenticated(m) => Status::unauthenticated(m),
            AccessError::Forbidden(m) => Status::permission_denied(m),
            AccessError::RateLimited(_) | AccessError::QuotaExceeded(_) => Status::resource_exhausted(e.to_string()),
        }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Invalid(v) => invalid_fields(&v),
            LedgerError::Conflict => {
                Status::already_exists("this idempotency key was already used with a different request")
            }
            LedgerError::Refused(e) => Status::failed_precondition(e.to_string()),
            LedgerError::Denied(e) => e.into(),
            LedgerError::Unavailable(e) => {
                tracing::warn!(error = %e, "gRPC call failed: dependency unavailable");
                Status::unavailable("temporarily unavailable; retry later")
            }
            LedgerError::Internal(e) => {
                tracing::error!(error = %e, source = e.source().map(tracing::field::display), "gRPC call failed: internal error");
                Status::internal("internal error")
            }
        }
    }
}

impl From<ProofLogError> for Status {
    fn from(e: ProofLogError) -> Self {
        match e {
            ProofLogError::BadRequest(m) => Status::invalid_argument(m),
            ProofLogError::NotFound(m) => Status::not_found(m),
            ProofLogError::Store(e) => {
                let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
                LedgerError::Internal(boxed).into()
            }
        }
    }
}

/// The proto field a request's field path names: `to[1]` is `To[1]`, `reply_to[0]`
/// `ReplyTo[0]`, `headers.X-Tag` `Headers.X-Tag`, `text` `Message`, `q` `Search`.
pub(super) fn proto_field(path: &str) -> String {
    let split = path.find(['[', '.']).unwrap_or(path.len());
    let (head, rest) = path.split_at(split);
    let name = match head {
        "text" | "message" => "Message".to_owned(),
        "q" => "Search".to_owned(),
        // SearchReq spells these in lower case.
        "page" | "size" => head.to_owned(),
        "reply_to" => "ReplyTo".to_owned(),
        "idempotency_key" => "IdempotencyKey".to_owned(),
        "email_id" | "id" => "EmailID".to_owned(),
        other => {
            let mut c = other.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        }
    };
    name + rest
}

/// `INVALID_ARGUMENT` for refused fields: each one in the message (`Field: reason`) and
/// as a `google.rpc.BadRequest` field violation (proto field names).
pub(super) fn invalid_fields(v: &ValidationErrors) -> Status {
    invalid(v.0.iter().map(|e| (proto_field(&e.field), e.reason.clone())).collect())
}

/// `INVALID_ARGUMENT` naming `(field, reason)` pairs, in the message and the details.
pub(super) fn invalid(violations: Vec<(String, String)>) -> Status {
    let message = violations.iter().map(|(f, r)| format!("{f}: {r}")).collect::<Vec<_>>().join("; ");
    let details = ErrorDetails::with_bad_request(
        violations.into_iter().map(|(f, r)| FieldViolation::new(f, r)).collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// `INVALID_ARGUMENT` for one field.
pub(super) fn invalid_field(field: &str, reason: impl Into<String>) -> Status {
    invalid(vec![(field.to_owned(), reason.into())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_become_proto_names() {
        for (path, want) in [
            ("to[1]", "To[1]"),
            ("reply_to[0]", "ReplyTo[0]"),
            ("headers.X-Tag", "Headers.X-Tag"),
            ("text", "Message"),
            ("from", "From"),
            ("q", "Search"),
            ("since", "Since"),
        ] {
            assert_eq!(proto_field(path), want);
        }
    }

    #[test]
    fn violations_travel_in_the_details() {
        let status = invalid(vec![("From".into(), "is required".into()), ("To[0]".into(), "bad".into())]);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "From: is required; To[0]: bad");
        let bad = status.get_details_bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations.len(), 2);
        assert_eq!(bad.field_violations[1].field, "To[0]");
    }
}
