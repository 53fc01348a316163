//! Test harness: spawns the real application on random ports against this machine's
//! PostgreSQL, NATS and Redis, isolated per test (its own database, NATS namespace and
//! stream names, Redis key prefix), and cleans up after itself.
#![allow(dead_code)]

pub mod db;
pub mod pg;
pub mod pki;
pub mod receiver;
pub mod rfc9162;
pub mod servers;
pub mod smtp;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use mailledger::config::Settings;
use mailledger::startup::{Application, Reloader};
use mailledger::transport::tls::ServerTls;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// PostgreSQL server the tests create their databases on: MAILLEDGER_TEST_DATABASE_URL,
/// else the server of MAILLEDGER_DATABASE_URL (the one `make test` made sure of).
pub fn server_url() -> String {
    if let Ok(url) = std::env::var("MAILLEDGER_TEST_DATABASE_URL") {
        return url.trim_end_matches('/').to_owned();
    }
    let url = std::env::var("MAILLEDGER_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/mailledger".into());
    let mut url = url::Url::parse(&url).expect("MAILLEDGER_DATABASE_URL is a URL");
    url.set_path("");
    url.set_query(None);
    url.to_string().trim_end_matches('/').to_owned()
}

/// NATS server used by the tests: MAILLEDGER_TEST_NATS_URL, else MAILLEDGER_NATS_URL.
pub fn nats_url() -> String {
    std::env::var("MAILLEDGER_TEST_NATS_URL")
        .or_else(|_| std::env::var("MAILLEDGER_NATS_URL"))
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Names that keep one test out of every other test's way.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub suffix: String,
    pub database: String,
    pub namespace: String,
    pub stream_prefix: String,
}

impl Isolation {
    pub fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Self {
            database: format!("mailledger_test_{suffix}"),
            namespace: format!("t{suffix}.mail"),
            stream_prefix: format!("T{suffix}"),
            suffix,
        }
    }

    /// Settings for an application in this isolation: random ports, small pool.
    /// `MAILLEDGER_CONFIG` among `extra` names a settings file, as `--config` would.
    pub fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        let mut env = self.env();
        env.push(("MAILLEDGER__REDIS__KEY_PREFIX".to_owned(), format!("t{}:", self.suffix)));
        env.push(("MAILLEDGER__SHUTDOWN_GRACE".to_owned(), "5s".to_owned()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let file = extra.iter().find(|(k, _)| *k == "MAILLEDGER_CONFIG").map(|(_, v)| std::path::PathBuf::from(v));
        Settings::load_from(file.as_deref(), env).expect("test settings are valid")
    }

    pub fn database_url(&self) -> String {
        format!("{}/{}", server_url(), self.database)
    }
}

/// A running application plus direct handles on what it talks to.
pub struct TestApp {
    pub iso: Isolation,
    pub http: String,
    pub grpc: String,
    pub metrics: String,
    /// Plain HTTP, sending the admin key; tests of a TLS app put a client that trusts
    /// their CA here.
    pub client: reqwest::Client,
    /// An API key with every scope (tenant `default`), made when the app was spawned.
    pub key: String,
    /// The REST and gRPC listeners' TLS, when the settings turn it on.
    pub tls: Option<ServerTls>,
    /// What SIGHUP does to the delivery settings.
    pub reloader: Reloader,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    stop: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// Whether dropping this app deletes the isolation (false for a second instance).
    owns: bool,
}

impl TestApp {
    /// Spawns an application in a fresh isolation.
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Spawns with extra settings (environment-style names).
    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        Self::spawn_in(Isolation::new(), extra).await
    }

    /// Spawns in an existing isolation (to restart "the same" service).
    pub async fn spawn_in(iso: Isolation, extra: &[(&str, &str)]) -> Self {
        init_logs();
        let settings = iso.settings(extra);
        let nats_url = settings.nats.url.first().to_string();
        let scheme = if settings.tls.enabled() { "https" } else { "http" };
        // The key exists before the service loads its keyring.
        let key = make_key(&fresh_database(&iso).await, "tests", "all", None).await;
        let app = Application::build(settings).await.expect("application starts");
        let http = format!("{scheme}://{}", app.http_addr());
        let grpc = format!("{scheme}://{}", app.grpc_addr());
        let tls = app.tls();
        let reloader = app.reloader();
        let metrics = format!("http://{}/metrics", app.metrics_addr());
        let stop = app.stopper();
        let handle = tokio::spawn(app.run_until_stopped());
        let pool = PgPool::connect(&iso.database_url()).await.expect("test pool");
        let nats = async_nats::connect(nats_url).await.expect("test NATS client");
        let js = jetstream::new(nats.clone());
        let app = Self {
            iso,
            http,
            grpc,
            metrics,
            client: client_with_key(&key),
            key,
            tls,
            reloader,
            pool,
            nats,
            js,
            stop,
            handle: Some(handle),
            owns: true,
        };
        app.wait_for_intake().await;
        app
    }

    /// Spawns with the sender on, delivering to `smtp_url`, polling every 100 ms.
    pub async fn delivering_to(smtp_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut env = vec![
            ("MAILLEDGER_SMTP_URL", smtp_url),
            ("MAILLEDGER__DELIVERY__ENABLED", "true"),
            ("MAILLEDGER__DELIVERY__POLL_INTERVAL", "100ms"),
        ];
        env.extend_from_slice(extra);
        Self::spawn_with(&env).await
    }

    /// Spawns a sender with quick retries for tests of delivery: 100 ms back-off, no
    /// jitter, 3 attempts, delivering to `sink`.
    pub async fn sending_to(sink: &smtp::SmtpSink, extra: &[(&str, &str)]) -> Self {
        let mut env: Vec<(&str, &str)> = vec![
            ("MAILLEDGER_DELIVERY_BACKOFF", "100ms"),
            ("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "3"),
            ("MAILLEDGER__DELIVERY__JITTER", "0"),
        ];
        env.extend_from_slice(extra);
        Self::delivering_to(&sink.url(), &env).await
    }

    /// An email's events over REST, in order.
    pub async fn history(&self, id: &str) -> Vec<serde_json::Value> {
        self.get_json(&format!("/api/v1/emails/{id}/events")).await.1.as_array().cloned().unwrap_or_default()
    }

    /// The types of an email's events, in order.
    pub async fn types(&self, id: &str) -> Vec<String> {
        self.history(id).await.iter().map(|e| e["type"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// Waits (30 s at most) until an email's events are of these types.
    pub async fn wait_types(&self, id: &str, want: &[&str]) {
        eventually(Duration::from_secs(30), || async { self.types(id).await == want }).await;
    }

    /// A second instance of the same service (same database, streams and consumer).
    pub async fn sibling(&self, extra: &[(&str, &str)]) -> TestApp {
        let mut app = Self::spawn_in(self.iso.clone(), extra).await;
        app.owns = false;
        app
    }

    /// Waits until the intake's consumer exists (the service creates it in the background;
    /// on a three-server cluster, with replicated streams, while every other test runs
    /// beside it, that took more than 10 s once).
    pub async fn wait_for_intake(&self) {
        let stream = format!("{}_COMMANDS", self.iso.stream_prefix);
        let consumer = format!("intake-{}", self.iso.suffix);
        eventually(Duration::from_secs(30), || async {
            match self.js.get_stream(&stream).await {
                Ok(s) => s.get_consumer::<jetstream::consumer::pull::Config>(&consumer).await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    /// Stops the application and waits for it to finish; returns how long that took.
    pub async fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await.expect("app task").expect("clean shutdown");
        }
        started.elapsed()
    }

    /// A gRPC client that sends this app's admin key.
    pub async fn grpc_client(&self) -> Grpc {
        let channel = tonic::transport::Endpoint::from_shared(self.grpc.clone()).unwrap().connect().await.unwrap();
        grpc_with_key(channel, &self.key)
    }

    /// Makes a key over the admin API (so this instance knows it at once); returns it.
    pub async fn new_key(&self, body: serde_json::Value) -> String {
        let r = self.post_json("/api/v1/keys", &body).await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        r.json::<serde_json::Value>().await.unwrap()["key"].as_str().unwrap().to_owned()
    }

    /// `Authorization: Bearer <admin key>`, for clients a test builds itself.
    pub fn auth_headers(&self) -> reqwest::header::HeaderMap {
        auth_headers(&self.key)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.http)
    }

    /// POSTs JSON to a path.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request sent")
    }

    /// Publishes a command and waits for JetStream's ack.
    pub async fn publish(&self, payload: impl Into<bytes::Bytes>, msg_id: Option<&str>) -> u64 {
        let subject = format!("{}.commands.create", self.iso.namespace);
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert("Nats-Msg-Id", id);
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        ack.sequence
    }

    /// Number of events for one email (or for all when `id` is None).
    pub async fn event_count(&self, id: Option<&str>) -> i64 {
        db::event_count(&self.pool, id).await
    }

    /// Event types of one email, in order.
    pub async fn event_types(&self, id: &str) -> Vec<String> {
        db::events_of(&self.pool, id).await.into_iter().map(|e| e.event_type).collect()
    }

    /// Event `sequence` of email `id`, as stored.
    pub async fn stored(&self, id: &str, sequence: i64) -> db::Stored {
        db::events_of(&self.pool, id)
            .await
            .into_iter()
            .find(|e| e.sequence == sequence)
            .unwrap_or_else(|| panic!("email {id} has no event {sequence}"))
    }

    /// Waits until the `emails` read model holds `n` rows, each with all its events.
    pub async fn wait_projected(&self, n: i64) {
        eventually(Duration::from_secs(15), || async { db::read_model_state(&self.pool).await == (n, 0) }).await;
    }

    /// Creates an email over REST and returns its id.
    pub async fn create(&self, body: &serde_json::Value) -> String {
        let r = self.post_json("/api/v1/emails", body).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        r.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    /// GETs a path and returns (status, JSON body).
    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.client.get(self.url(path)).send().await.expect("request sent");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Distinct emails in the store.
    pub async fn email_count(&self) -> i64 {
        db::email_count(&self.pool).await
    }

    /// Messages in the commands stream not yet acknowledged (work queue: acked ones are gone).
    pub async fn commands_left(&self) -> u64 {
        let mut s = self.js.get_stream(format!("{}_COMMANDS", self.iso.stream_prefix)).await.expect("stream");
        s.info().await.expect("stream info").state.messages
    }

    /// Every dead letter published so far.
    pub async fn dead_letters(&self) -> Vec<async_nats::jetstream::message::StreamMessage> {
        let mut s = self.js.get_stream(format!("{}_DLQ", self.iso.stream_prefix)).await.expect("dlq stream");
        let last = s.info().await.expect("dlq info").state.last_sequence;
        let mut out = vec![];
        for seq in 1..=last {
            if let Ok(m) = s.get_raw_message(seq).await {
                out.push(m);
            }
        }
        out
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        if !self.owns {
            return;
        }
        let iso = self.iso.clone();
        // Clean up on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(cleanup(&iso));
        })
        .join();
    }
}

/// Deletes the isolation's streams and database.
pub async fn cleanup(iso: &Isolation) {
    if let Ok(nats) = async_nats::connect(nats_url()).await {
        let js = jetstream::new(nats);
        for suffix in ["COMMANDS", "DLQ", "EVENTS", "CHECKPOINTS"] {
            let _ = js.delete_stream(format!("{}_{suffix}", iso.stream_prefix)).await;
        }
    }
    if let Ok(pool) = PgPool::connect(&format!("{}/postgres", server_url())).await {
        db::drop_database(&pool, &iso.database).await;
    }
}

/// Polls `check` until it holds or `limit` passes (then panics).
pub async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A valid request body in the original service's shape.
pub fn original_payload(subject: &str) -> serde_json::Value {
    serde_json::json!({
        "from": "sender@example.com",
        "to": "rcpt@example.org",
        "subject": subject,
        "message": format!("body of {subject}"),
    })
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Deletes an isolation's database and streams when dropped (for tests without a TestApp).
pub struct Cleanup(pub Isolation);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let iso = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(cleanup(&iso));
        })
        .join();
    }
}

impl Isolation {
    /// The environment a `mailledger` process needs to run in this isolation.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("MAILLEDGER_DATABASE_URL".into(), self.database_url()),
            ("MAILLEDGER_NATS_URL".into(), nats_url()),
            ("MAILLEDGER_HTTP_ADDR".into(), "127.0.0.1:0".into()),
            ("MAILLEDGER_GRPC_ADDR".into(), "127.0.0.1:0".into()),
            ("MAILLEDGER_METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("MAILLEDGER__DATABASE__MAX_CONNECTIONS".into(), "4".into()),
            ("MAILLEDGER__NATS__NAMESPACE".into(), self.namespace.clone()),
            ("MAILLEDGER__NATS__STREAM_PREFIX".into(), self.stream_prefix.clone()),
            ("MAILLEDGER__NATS__CONSUMER".into(), format!("intake-{}", self.suffix)),
            ("MAILLEDGER__LOG__FORMAT".into(), "json".into()),
            // Tests that deliver turn the sender on themselves.
            ("MAILLEDGER__DELIVERY__ENABLED".into(), "false".into()),
            ("MAILLEDGER__LOG__FILTER".into(), "info".into()),
        ]
    }
}

/// A fresh, migrated database in `iso` (without an application).
pub async fn fresh_database(iso: &Isolation) -> PgPool {
    let settings = iso.settings(&[]);
    let pool = mailledger::store::connect(&settings.database).await.expect("database");
    mailledger::store::migrate(&pool).await.expect("migrations");
    pool
}

/// The stored JSON of a `Requested` + `Persisted` pair for a new email, as the ledger
/// would write them (for tests that write the store directly).
pub fn accepted_events(id: uuid::Uuid, subject: &str) -> [(String, serde_json::Value); 2] {
    use mailledger::command::*;
    let draft = EmailDraft {
        from: Some("sender@example.com".into()),
        to: vec!["rcpt@example.org".into()],
        subject: Some(subject.into()),
        text: Some(format!("body of {subject}")),
        ..Default::default()
    };
    let email = draft.validate(&Limits::default()).unwrap();
    let now = mailledger::ledger::now();
    let requested = events::EmailEvent::Requested(events::Requested {
        email_id: id,
        source: Source::Rest,
        idempotency_key: None,
        request: draft,
        requested_at: now,
    });
    let persisted = events::EmailEvent::Persisted(events::Persisted {
        message_id: message_id_for(id, &email),
        date: now,
        from: email.from.clone(),
        to: email.to.clone(),
        cc: vec![],
        bcc: vec![],
        reply_to: vec![],
        subject: email.subject.clone(),
        headers: Default::default(),
        size_bytes: 1,
        sha256: String::new(),
        request_digest: email.digest(),
    });
    [
        ("Requested".into(), serde_json::to_value(requested).unwrap()),
        ("Persisted".into(), serde_json::to_value(persisted).unwrap()),
    ]
}

/// Inserts one stored event on `conn` (inside whatever transaction it is in).
pub async fn insert_event(
    conn: &mut sqlx::PgConnection,
    id: uuid::Uuid,
    sequence: i64,
    event: &(String, serde_json::Value),
) {
    db::insert_event_as(conn, id, sequence, event, "1.0", None).await;
}

/// Commits a new email's two events directly to the store; returns its id.
pub async fn commit_email(pool: &PgPool, subject: &str) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    for (s, e) in accepted_events(id, subject).iter().enumerate() {
        insert_event(&mut tx, id, s as i64 + 1, e).await;
    }
    tx.commit().await.unwrap();
    id
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` of a test's own, on `port`, killed when dropped.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/ensure-services.sh installs it)");
        let mut server = Self { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server.stop();
        panic!("redis-server did not start");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Debian's nats-server (in /usr/sbin, often not on a user's PATH), else the one on PATH.
pub fn nats_server_binary() -> &'static str {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server")
}

/// Makes an API key straight in the database (as `mailledger keys create` does).
pub async fn make_key(pool: &PgPool, name: &str, scopes: &str, tenant: Option<&str>) -> String {
    // Tests fire hundreds of requests at once: their keys are not the ones rate-limited.
    let new = mailledger::access::keys::NewKey {
        name: name.into(),
        scopes: scopes.into(),
        tenant: tenant.map(str::to_owned),
        rate_per_second: Some(1_000_000.0),
        burst: Some(1_000_000),
        ..Default::default()
    };
    let by = mailledger::access::Principal::operator("tests");
    mailledger::access::keys::create(pool, &new, &by).await.expect("key made").1
}

/// `Authorization: Bearer <key>`.
pub fn auth_headers(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().unwrap());
    headers
}

/// A REST client that sends `key`.
pub fn client_with_key(key: &str) -> reqwest::Client {
    reqwest::Client::builder().default_headers(auth_headers(key)).build().unwrap()
}

/// Adds `authorization: Bearer <key>` to every gRPC call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The gRPC client the tests use.
pub type Grpc = mailledger::transport::grpc::proto::email_service_client::EmailServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A gRPC client on `channel` that sends `key`.
pub fn grpc_with_key(channel: tonic::transport::Channel, key: &str) -> Grpc {
    let bearer = Bearer(format!("Bearer {key}").parse().unwrap());
    mailledger::transport::grpc::proto::email_service_client::EmailServiceClient::with_interceptor(channel, bearer)
}
