//! Adapters only: parse the input, call the ledger, map its errors. No business rule
//! lives here.

pub mod grpc;
pub mod http;
pub mod nats;
pub mod payload;
