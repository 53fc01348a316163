//! The listener side of TLS: accepts TCP connections and does each handshake in a task
//! of its own, handing out only the connections whose handshake succeeded.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{Protocol, ServerTls};
use crate::metrics;

/// How long a client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress per listener; past this, new connections wait in the backlog.
const MAX_HANDSHAKES: usize = 1024;

/// A TCP listener that hands out connections once their TLS handshake is done. Serves
/// axum ([`axum::serve::Listener`]) and tonic ([`TlsListener::into_incoming`]).
pub struct TlsListener {
    tcp: TcpListener,
    tls: ServerTls,
    protocol: Protocol,
    /// Handshakes in progress, each in a task of its own (aborted when the listener goes).
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub(super) fn new(tcp: TcpListener, tls: ServerTls, protocol: Protocol) -> Self {
        Self { tcp, tls, protocol, handshakes: JoinSet::new() }
    }

    /// The next connection whose handshake succeeded; accepts more while handshakes run.
    async fn next(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => match accepted {
                    Ok((stream, peer)) => {
                        let acceptor = self.tls.acceptor(self.protocol);
                        self.handshakes.spawn(handshake(acceptor, stream, peer, self.protocol));
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    /// The connections as the stream tonic's `serve_with_incoming_shutdown` takes.
    pub fn into_incoming(self) -> impl Stream<Item = Result<TlsStream<TcpStream>, Infallible>> {
        futures::stream::unfold(self, |mut listener| async move {
            let (stream, _) = listener.next().await;
            Some((Ok(stream), listener))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => return Some((stream, peer)),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("not done within {HANDSHAKE_TIMEOUT:?}"),
    };
    tracing::debug!(%peer, listener = protocol.label(), error, "TLS handshake failed");
    metrics::TLS_HANDSHAKE_FAILURES.with_label_values(&[protocol.label()]).inc();
    None
}

/// As axum's own TCP listener: a connection that went away is nothing; anything else
/// (out of file descriptors) is logged and waited out.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
