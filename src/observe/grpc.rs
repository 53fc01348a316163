//! A tower layer for the gRPC server: a span per call (child of the caller's
//! `traceparent` metadata), and `mailledger_grpc_requests_total{method, code}` /
//! `mailledger_grpc_request_duration_seconds{method}`. The code is read from the
//! response headers (where tonic puts an error's status); an answer without one is OK.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics;
use crate::telemetry::{HeaderCarrier, continue_trace};

/// The layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// The service it wraps.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let span = tracing::info_span!("grpc.request", rpc.method = %method, trace_id = tracing::field::Empty);
        continue_trace(&span, &HeaderCarrier(request.headers()));
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or("OK".to_owned(), |c| format!("{:?}", tonic::Code::from(c))),
                    Err(_) => "Unavailable".to_owned(),
                };
                metrics::GRPC_REQUESTS.with_label_values(&[&method, &code]).inc();
                metrics::GRPC_DURATION.with_label_values(&[&method]).observe(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}
