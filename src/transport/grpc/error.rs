//! The one mapping from ledger errors to gRPC statuses: invalid input is
//! `INVALID_ARGUMENT` (field and reason in the message), a reused idempotency key is
//! `ALREADY_EXISTS`, a state conflict `FAILED_PRECONDITION`, a dependency outage
//! `UNAVAILABLE`, anything else `INTERNAL` with no detail (the cause is logged).

use tonic::Status;

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
            LedgerError::Invalid(v) => Status::invalid_argument(v.to_string()),
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
