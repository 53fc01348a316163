//! Adapters only: parse the input, call the ledger, map its errors. No business rule
//! lives here.

pub(crate) mod consistency;
pub mod grpc;
pub(crate) mod http;
pub(crate) mod nats;
pub mod payload;
pub(crate) mod request_id;
pub mod tls;

/// A request carried two different idempotency keys (header and body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysDisagree;

/// The idempotency key of a request that can carry it in a header (or gRPC metadata)
/// and in the body: either one, or both when they agree.
pub fn idempotency_key(header: Option<String>, body: Option<String>) -> Result<Option<String>, KeysDisagree> {
    match (header, body) {
        (Some(h), Some(b)) if h != b => Err(KeysDisagree),
        (h, b) => Ok(h.or(b)),
    }
}

/// Every REST route as the router holds it (its `Debug` form, which names each path):
/// what the contract test walks to hold the OpenAPI document to the router itself.
pub fn rest_routes_debug() -> String {
    format!("{:?}", http::api_routes(1).merge(http::open_routes()))
}
