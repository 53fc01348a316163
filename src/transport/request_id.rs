//! `X-Request-Id` on REST and gRPC: taken from the request when the caller sent a sane
//! one (else from `X-Correlation-Id`), made (a UUID) when not, echoed on every answer,
//! and recorded as the `correlation_id` of the events the request causes.
//!
//! The layers, outermost first: [`sanitise`] (drop an unusable id, or take the
//! correlation id in its place), tower-http's `SetRequestId` (make one when there is
//! none), tower-http's `PropagateRequestId` (copy it onto the response).

use http::{HeaderMap, HeaderName, HeaderValue};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};

/// `x-request-id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Longest request id taken from a caller.
pub const MAX_LEN: usize = 128;

fn sane(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// Keeps a sane `X-Request-Id`; else puts a sane `X-Correlation-Id` in its place; else
/// removes it (so one is made).
pub fn sanitise<B>(mut request: http::Request<B>) -> http::Request<B> {
    let headers = request.headers_mut();
    if headers.get(&REQUEST_ID).is_some_and(sane) {
        return request;
    }
    match headers.get(&CORRELATION_ID).filter(|v| sane(v)).cloned() {
        Some(v) => {
            headers.insert(REQUEST_ID, v);
        }
        None => {
            headers.remove(REQUEST_ID);
        }
    }
    request
}

/// Makes a random (v4) UUID from the thread's generator: tower-http's `MakeRequestUuid`
/// asks the kernel for every one, a system call per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        HeaderValue::from_str(&id.to_string()).ok().map(RequestId::new)
    }
}

/// The three layers, for an axum router or a tonic server.
pub type Layers<B> = Stack<
    PropagateRequestIdLayer,
    Stack<SetRequestIdLayer<MakeUuid>, Stack<MapRequestLayer<fn(http::Request<B>) -> http::Request<B>>, Identity>>,
>;

/// [`sanitise`], then make one if missing, then echo it.
pub fn layers<B>() -> ServiceBuilder<Layers<B>> {
    ServiceBuilder::new()
        .layer(MapRequestLayer::new(sanitise::<B> as fn(http::Request<B>) -> http::Request<B>))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
}

/// The request's id, as the layers left it (a new UUID if they did not run).
pub fn of(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .filter(|v| sane(v))
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, &str)]) -> http::Request<()> {
        let mut r = http::Request::new(());
        for (k, v) in pairs {
            r.headers_mut().insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        r
    }

    #[test]
    fn sane_ids_are_kept_and_others_replaced() {
        let r = sanitise(request(&[("x-request-id", "abc-123")]));
        assert_eq!(of(r.headers()), "abc-123");
        let r = sanitise(request(&[("x-request-id", "has space"), ("x-correlation-id", "corr-1")]));
        assert_eq!(of(r.headers()), "corr-1");
        let r = sanitise(request(&[("x-request-id", &"x".repeat(MAX_LEN + 1))]));
        assert!(r.headers().get(REQUEST_ID).is_none());
        let r = sanitise(request(&[]));
        assert!(r.headers().get(REQUEST_ID).is_none());
    }
}
