//! Observation at the edges: one span and two metrics (count, latency) per HTTP request
//! and gRPC call, each span continuing the caller's W3C trace context; and the monitor
//! that keeps the state gauges fresh.

pub mod grpc;
pub mod http;
pub mod monitor;
