//! Two tower layers of the REST stack, written as services rather than `from_fn`
//! middleware (which boxes the rest of the stack and its future for every request):
//!
//! - [`AuthenticateLayer`]: every `/api/v1` route. The principal a request acts as goes
//!   into its extensions, or it is answered 401 / 429 here. A key the keyring does not
//!   know yet (made a moment ago elsewhere) takes the slower path that reads the keys
//!   again ([`Keyring::authenticate_fresh`]).
//! - [`DeadlineLayer`]: a request not answered within `http.request_timeout` gets a 408.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use futures::future::{BoxFuture, Either, Ready, ready};
use tower::{Layer, Service};

use super::error::ApiError;
use crate::access::keyring::Keyring;

/// Authenticates each request against a keyring.
#[derive(Clone)]
pub struct AuthenticateLayer {
    keyring: Keyring,
}

impl AuthenticateLayer {
    /// Against `keyring`.
    pub fn new(keyring: Keyring) -> Self {
        Self { keyring }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate { inner, keyring: self.keyring.clone() }
    }
}

/// See [`AuthenticateLayer`].
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    keyring: Keyring,
}

type Answer = Result<Response, Infallible>;

impl<S> Service<Request> for Authenticate<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Either<S::Future, Ready<Answer>>, BoxFuture<'static, Answer>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let known =
            self.keyring.authenticate_known(request.headers().get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()));
        match known {
            Some(Ok(authenticated)) => {
                request.extensions_mut().insert(authenticated);
                Either::Left(Either::Left(self.inner.call(request)))
            }
            Some(Err(e)) => Either::Left(Either::Right(ready(Ok(ApiError::from(e).into_response())))),
            None => {
                // The service that was polled ready serves this request; a clone takes its place.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let keyring = self.keyring.clone();
                Either::Right(Box::pin(async move {
                    let result = {
                        let values: Vec<&[u8]> =
                            request.headers().get_all(AUTHORIZATION).iter().map(|v| v.as_bytes()).collect();
                        keyring.authenticate_fresh(&values).await
                    };
                    match result {
                        Ok(authenticated) => {
                            request.extensions_mut().insert(authenticated);
                            inner.call(request).await
                        }
                        Err(e) => Ok(ApiError::from(e).into_response()),
                    }
                }))
            }
        }
    }
}

/// Answers 408 to a request not answered within its timeout.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    /// Within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner, timeout: self.timeout }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        DeadlineFuture { inner: tokio::time::timeout(self.timeout, self.inner.call(request)) }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped service's future, or a 408 once the time is up.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Answer>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        Poll::Ready(match std::task::ready!(self.project().inner.poll(cx)) {
            Ok(answer) => answer,
            Err(_) => Ok(ApiError::Timeout.into_response()),
        })
    }
}
