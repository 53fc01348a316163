//! `X-Min-Position`: read-your-writes when reads may go to a replica (see
//! [`crate::query::replica`]). For REST and gRPC alike:
//! - a write that succeeded (REST: any method but GET / HEAD / OPTIONS; gRPC: `Create…`,
//!   `Add…`, `Remove…`, `Redrive…`, `Revoke…`) is answered with the primary's WAL position
//!   once it committed, as `x-min-position`;
//! - a request that sends `x-min-position` back is read from the replica only when the
//!   replica has replayed that far, else from the primary. A malformed value is ignored
//!   (the read goes where it would without it).
//!
//! Without a replica the layer only tells the read side that a request sent
//! `x-min-position` (such a read skips the views kept in memory: [`crate::query::near`]).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method, Request, Response};

use crate::query::replica::{Lsn, MIN_POSITION, Replica};

/// `x-min-position`.
pub const MIN_POSITION_HEADER: HeaderName = HeaderName::from_static("x-min-position");

/// The layer; `None` when there is no replica.
#[derive(Clone, Default)]
pub struct ConsistencyLayer {
    replica: Option<Replica>,
}

impl ConsistencyLayer {
    /// Positions from and for `replica`.
    pub fn new(replica: Option<Replica>) -> Self {
        Self { replica }
    }
}

impl<S> tower::Layer<S> for ConsistencyLayer {
    type Service = Consistency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Consistency { inner, replica: self.replica.clone() }
    }
}

/// See [the module](self).
#[derive(Clone)]
pub struct Consistency<S> {
    inner: S,
    replica: Option<Replica>,
}

impl<S, B, R> tower::Service<Request<B>> for Consistency<S>
where
    S: tower::Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response<R>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was polled ready serves this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let min = request.headers().get(&MIN_POSITION_HEADER).and_then(|v| v.to_str().ok()).and_then(Lsn::parse);
        let Some(replica) = self.replica.clone() else {
            return match min {
                None => Box::pin(inner.call(request)),
                Some(_) => Box::pin(MIN_POSITION.scope(min, inner.call(request))),
            };
        };
        let write = is_write(&request);
        Box::pin(async move {
            let mut response = MIN_POSITION.scope(min, inner.call(request)).await?;
            if write
                && succeeded(&response)
                && let Some(position) = replica.write_position().await
                && let Ok(value) = HeaderValue::from_str(&position.to_string())
            {
                response.headers_mut().insert(MIN_POSITION_HEADER, value);
            }
            Ok(response)
        })
    }
}

fn is_write<B>(request: &Request<B>) -> bool {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        ["Create", "Add", "Remove", "Redrive", "Revoke"].iter().any(|w| method.starts_with(w))
    } else {
        !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// A 2xx REST answer, or a gRPC answer that is not an error already in its headers.
fn succeeded<R>(response: &Response<R>) -> bool {
    response.status().is_success() && response.headers().get("grpc-status").is_none_or(|s| s.as_bytes() == b"0")
}
