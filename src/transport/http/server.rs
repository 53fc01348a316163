//! The REST server's connections: hyper, driven here rather than by `axum::serve`, for
//! the limits a server exposed to anyone needs.
//!
//! - **Header read timeout** (`http.header_timeout`, 10 s): a connection whose request
//!   headers are not all in by then is closed (slowloris).
//! - **Request timeout** (`http.request_timeout`, 30 s, in [`super::router`]): a
//!   request not answered by then — a promised body never sent, say — gets a 408.
//! - **Connection cap** (`http.max_connections`): past it, new connections wait in the
//!   kernel's backlog until one closes, so file descriptors never run out and `/health`
//!   keeps answering.
//!
//! Every connection carries its peer address (`ConnectInfo<SocketAddr>`), plain TCP and
//! TLS alike; at shutdown, connections finish what they are doing and close.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::HttpSettings;

/// Serves `router` (the router behind its outer layers: [`super::service`]) on
/// `listener` (plain TCP or TLS) until `stop`.
pub async fn serve<L, S>(mut listener: L, router: S, settings: HttpSettings, stop: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = axum::response::Response>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let service = router.clone().map_request(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection =
            builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service)).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
