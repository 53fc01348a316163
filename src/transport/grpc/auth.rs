//! Authentication for `emailService.EmailService`: the `authorization: Bearer <key>`
//! metadata is checked before a call reaches the service; the principal goes into the
//! call's extensions, or the call ends `UNAUTHENTICATED` / `RESOURCE_EXHAUSTED` here.
//! The health and reflection services stay open.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::access::keyring::Keyring;

/// The layer.
#[derive(Clone)]
pub struct AuthLayer {
    keyring: Keyring,
}

impl AuthLayer {
    /// Authenticates against `keyring`.
    pub fn new(keyring: Keyring) -> Self {
        Self { keyring }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, keyring: self.keyring.clone() }
    }
}

/// The service it wraps.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keyring: Keyring,
}

/// Services anyone may call.
const OPEN: [&str; 3] = ["/grpc.health.v1.Health/", "/grpc.reflection.v1.", "/grpc.reflection.v1alpha."];

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !OPEN.iter().any(|p| path.starts_with(p)) {
            let values = request.headers().get_all(http::header::AUTHORIZATION).iter().map(|v| v.as_bytes());
            match self.keyring.authenticate(values) {
                Ok(authenticated) => {
                    request.extensions_mut().insert(authenticated);
                }
                Err(e) => {
                    let response = tonic::Status::from(e).into_http::<R>();
                    return Box::pin(async move { Ok(response) });
                }
            }
        }
        let future = self.inner.call(request);
        Box::pin(future)
    }
}
