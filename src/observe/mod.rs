//! Observation at the edges: one span and two metrics (count, latency) per HTTP request
//! and gRPC call, each span continuing the caller's W3C trace context; the monitor
//! that keeps the state gauges fresh; and the readiness checks.

pub mod grpc;
pub mod health;
pub mod http;
pub mod monitor;
