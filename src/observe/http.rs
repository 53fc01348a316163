//! A tower layer for the REST routes: a span per request (child of the caller's
//! `traceparent`), and `mailledger_http_requests_total` /
//! `mailledger_http_request_duration_seconds` by method and route template
//! (`/api/v1/emails/{id}`, never the raw path).
//!
//! Per request it allocates nothing: the method and route are not copied into strings,
//! the status label is the status code's own text, and the counter and histogram of a
//! (route, method, status) are looked up once per worker thread and kept (label lookups
//! hash every label and take the metric family's lock).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use http::{Method, StatusCode};
use prometheus::{Histogram, IntCounter};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::metrics;
use crate::telemetry::{HeaderCarrier, continue_trace};

/// The layer (a route layer: the route template is known once routing has matched).
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

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = request.method().clone();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let span = tracing::info_span!(
            "http.request",
            http.method = %method,
            http.route = route.as_ref().map_or("unmatched", MatchedPath::as_str),
            trace_id = tracing::field::Empty
        );
        // A span no subscriber takes (the log filter leaves it out, which also keeps it
        // from the exporter) has no parent to set and no trace id to record.
        if !span.is_disabled() {
            continue_trace(&span, &HeaderCarrier(request.headers()));
        }
        ObserveFuture { inner: self.inner.call(request).instrument(span), started, method, route }
    }
}

pin_project_lite::pin_project! {
    /// The wrapped service's future; counts the answer when it comes.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        started: Instant,
        method: Method,
        route: Option<MatchedPath>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            record(this.method, this.route.as_ref(), response.status(), this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(result)
    }
}

/// A (route, method, status): the route by the address of its template, which the
/// router shares with every request it matches (the entry keeps a copy of the text, so
/// that an address used again for another text is never taken for it).
type Key = (usize, &'static str, u16);

/// The route's text, its counter and its histogram.
type Handles = (Box<str>, IntCounter, Histogram);

thread_local! {
    static HANDLES: RefCell<HashMap<Key, Handles>> = RefCell::new(HashMap::new());
}

/// Counts one answer of `status` to (`method`, `route`) that took `seconds`, on the
/// handles this thread keeps for them (looked up by their labels the first time).
fn record(method: &Method, route: Option<&MatchedPath>, status: StatusCode, seconds: f64) {
    let name = route.map_or("unmatched", MatchedPath::as_str);
    let method = method_label(method);
    let key = (name.as_ptr() as usize, method, status.as_u16());
    HANDLES.with(|cell| {
        if let Some((kept, requests, duration)) = cell.borrow().get(&key)
            && **kept == *name
        {
            requests.inc();
            duration.observe(seconds);
            return;
        }
        let requests = metrics::HTTP_REQUESTS.with_label_values(&[method, name, status.as_str()]);
        let duration = metrics::HTTP_DURATION.with_label_values(&[method, name]);
        requests.inc();
        duration.observe(seconds);
        cell.borrow_mut().insert(key, (name.into(), requests, duration));
    });
}

/// The method as a label: one of HTTP's own, else `OTHER` (a client inventing methods
/// would otherwise add a series, and a kept handle, per name it invents).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn get_path(router: &Router, path: &str) -> StatusCode {
        let request = http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        router.clone().oneshot(request).await.unwrap().status()
    }

    /// Each answer is counted on its own (method, route template, status), every time:
    /// the handles kept per thread are those of the route matched, never another's.
    #[tokio::test]
    async fn answers_are_counted_by_route_template_method_and_status() {
        let router = Router::new()
            .route("/observed-a/{id}", get(|| async { "a" }))
            .route("/observed-b/{id}", get(|| async { StatusCode::NOT_FOUND }).post(|| async { "b" }))
            .route_layer(ObserveLayer);
        let count = |route: &str, method: &str, status: &str| {
            metrics::HTTP_REQUESTS.with_label_values(&[method, route, status]).get()
        };
        for i in 0..3 {
            assert_eq!(get_path(&router, &format!("/observed-a/{i}")).await, StatusCode::OK);
        }
        for i in 0..2 {
            assert_eq!(get_path(&router, &format!("/observed-b/{i}")).await, StatusCode::NOT_FOUND);
        }
        let request = http::Request::post("/observed-b/1").body(axum::body::Body::empty()).unwrap();
        assert_eq!(router.clone().oneshot(request).await.unwrap().status(), StatusCode::OK);
        assert_eq!(count("/observed-a/{id}", "GET", "200"), 3);
        assert_eq!(count("/observed-b/{id}", "GET", "404"), 2);
        assert_eq!(count("/observed-b/{id}", "POST", "200"), 1);
        assert_eq!(count("/observed-b/{id}", "GET", "200"), 0);
        // An invented method is counted under one label, whatever its name.
        for name in ["FROB", "TWIDDLE"] {
            let request = http::Request::builder()
                .method(Method::from_bytes(name.as_bytes()).unwrap())
                .uri("/observed-a/1")
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(router.clone().oneshot(request).await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
        }
        assert_eq!(count("/observed-a/{id}", "OTHER", "405"), 2);
        assert_eq!(count("/observed-a/{id}", "FROB", "405"), 0);
        let histogram = metrics::HTTP_DURATION.with_label_values(&["GET", "/observed-a/{id}"]);
        assert_eq!(histogram.get_sample_count(), 3);
    }
}
