//! A webhook receiver of a test's own: a real HTTP server (axum) on 127.0.0.1 that
//! records every request and answers as scripted — statuses in order, then a default;
//! optionally holding every request until released (a slow endpoint), or answering
//! with a large body.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub json: serde_json::Value,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// The body's `id`.
    pub fn id(&self) -> String {
        self.json["id"].as_str().unwrap_or_default().to_owned()
    }

    /// Whether `Mailledger-Signature` has a `v1` that is the HMAC-SHA256 of "t.body"
    /// under `secret` (computed here, independently of mailledger's code).
    pub fn signed_with(&self, secret: &str) -> bool {
        let Some(header) = self.header("mailledger-signature") else { return false };
        let mut t = None;
        let mut v1 = vec![];
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("t", v)) => t = Some(v.to_owned()),
                Some(("v1", v)) => v1.push(v.to_owned()),
                _ => {}
            }
        }
        let Some(t) = t else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&self.body);
        let want = hex::encode(mac.finalize().into_bytes());
        v1.contains(&want)
    }

    /// How many `v1=` signatures the header carries.
    pub fn signatures(&self) -> usize {
        self.header("mailledger-signature").unwrap_or_default().matches("v1=").count()
    }
}

#[derive(Default)]
struct State {
    hits: Vec<Hit>,
    script: VecDeque<u16>,
    default: u16,
    answer_bytes: usize,
    answered: usize,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    release: watch::Sender<bool>,
    stop: tokio_util::sync::CancellationToken,
}

impl Receiver {
    /// Answers 200 to everything.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Holds every request until [`Self::release`] (`held`), else as [`Self::start`].
    pub async fn start_with(held: bool) -> Self {
        let state = Arc::new(Mutex::new(State { default: 200, ..Default::default() }));
        let (release, gate) = watch::channel(!held);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let state = shared.clone();
            let mut gate = gate.clone();
            async move {
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let hit = Hit { path: uri.path().to_owned(), headers, body, json };
                state.lock().unwrap().hits.push(hit);
                let _ = gate.wait_for(|open| *open).await;
                let mut s = state.lock().unwrap();
                let status = s.script.pop_front().unwrap_or(s.default);
                s.answered += 1;
                let text =
                    if s.answer_bytes > 0 { "x".repeat(s.answer_bytes) } else { format!("receiver says {status}") };
                (StatusCode::from_u16(status).unwrap(), text)
            }
        });
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(until.cancelled_owned()).await;
        });
        Self { addr, state, release, stop }
    }

    /// The URL to register.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// Answers these statuses to the next requests, in order.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses.iter().copied());
    }

    /// The answer when the script is spent.
    pub fn always(&self, status: u16) {
        self.state.lock().unwrap().default = status;
    }

    /// Answers with a body of `n` bytes.
    pub fn answer_with(&self, n: usize) {
        self.state.lock().unwrap().answer_bytes = n;
    }

    /// Lets held requests (and every later one) be answered.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }

    /// Requests answered so far.
    pub fn answered(&self) -> usize {
        self.state.lock().unwrap().answered
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.release();
        self.stop.cancel();
    }
}
