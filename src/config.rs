//! Typed, layered settings: the embedded `config/default.yaml`, then an optional YAML
//! file, then environment variables — the public names (`MAILLEDGER_DATABASE_URL`, …)
//! and `MAILLEDGER__SECTION__KEY` for any other key.
//!
//! A bad value fails start-up with one line naming the setting that holds it, as the
//! user wrote it (`MAILLEDGER_HTTP_ADDR: …` or `http.addr: …`). Secrets (the database and
//! SMTP passwords) are never printed: see [`redact`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use url::Url;

use crate::command::Limits;

const DEFAULTS: &str = include_str!("../config/default.yaml");

/// The public environment variables and the keys they set.
pub const ENV_NAMES: &[(&str, &str)] = &[
    ("MAILLEDGER_DATABASE_URL", "database.url"),
    ("MAILLEDGER_DATABASE_READ_URL", "database.read_url"),
    ("MAILLEDGER_NATS_URL", "nats.url"),
    ("MAILLEDGER_REDIS_URL", "redis.url"),
    ("MAILLEDGER_SMTP_URL", "smtp.url"),
    ("MAILLEDGER_HTTP_ADDR", "http.addr"),
    ("MAILLEDGER_GRPC_ADDR", "grpc.addr"),
    ("MAILLEDGER_METRICS_ADDR", "metrics.addr"),
    ("MAILLEDGER_TLS_CERT", "tls.cert"),
    ("MAILLEDGER_TLS_KEY", "tls.key"),
    ("MAILLEDGER_TLS_CLIENT_CA", "tls.client_ca"),
    ("MAILLEDGER_DELIVERY_BACKOFF", "delivery.backoff"),
    ("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "delivery.max_attempts"),
    ("MAILLEDGER_AUTH", "auth.mode"),
    ("MAILLEDGER_NATS_CREDS", "nats.creds"),
    ("MAILLEDGER_NATS_CA", "nats.tls_ca"),
    ("MAILLEDGER_NATS_REPLICAS", "nats.replicas"),
    ("MAILLEDGER_REDIS_CA", "redis.tls_ca"),
    ("MAILLEDGER_SIGNING_KEY", "proof.signing_key"),
];

/// Everything the service can be told.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// PostgreSQL (the event store and read models).
    pub database: DatabaseSettings,
    /// NATS JetStream (command intake, dead letters).
    pub nats: NatsSettings,
    /// Redis (the read cache).
    pub redis: RedisSettings,
    /// Outgoing mail.
    pub smtp: SmtpSettings,
    /// Retries and the sender's pace.
    pub delivery: DeliverySettings,
    /// REST listener.
    pub http: HttpSettings,
    /// gRPC listener.
    pub grpc: GrpcSettings,
    /// Prometheus listener.
    pub metrics: ListenSettings,
    /// TLS on the REST and gRPC listeners.
    pub tls: TlsSettings,
    /// API keys: on or off, and the default limits of a key.
    pub auth: AuthSettings,
    /// The proof log: sealing, checkpoints and their signing key.
    pub proof: ProofSettings,
    /// Signed status webhooks: the dispatcher, its retries and its outbound limits.
    pub webhooks: WebhookSettings,
    /// Request limits.
    pub limits: Limits,
    /// How long shutdown waits for in-flight work.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Logging.
    pub log: LogSettings,
    /// The file the settings were read from (read again on SIGHUP).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// PostgreSQL settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/database`.
    #[serde(deserialize_with = "url_with_scheme::<PgScheme, _>")]
    pub url: Url,
    /// Pool size.
    pub max_connections: u32,
    /// Create the database when it does not exist.
    pub create_if_missing: bool,
    /// A streaming replica of the database for lookups, searches and histories (see the
    /// README's "Scaling"); unset: every read goes to the primary.
    #[serde(default, deserialize_with = "optional_pg_url")]
    pub read_url: Option<Url>,
    /// The replica is read from while it is at most this far behind the primary.
    #[serde(with = "humantime_serde")]
    pub read_max_lag: Duration,
}

impl DatabaseSettings {
    /// The database's name (the URL's path), `mailledger` when the URL names none.
    pub fn name(&self) -> String {
        let name = self.url.path().trim_start_matches('/');
        if name.is_empty() { "mailledger".into() } else { name.to_owned() }
    }
}

/// NATS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// `nats://host:port`, or several servers of one cluster comma-separated
    /// (`nats://a:4222,nats://b:4222`); credentials in the first URL are honoured.
    #[serde(deserialize_with = "nats_servers")]
    pub url: NatsServers,
    /// Replication of every stream the service creates (commands, dead letters, events,
    /// checkpoints): 1 on a single server, 3 (or 5) on a JetStream cluster. Applies when a
    /// stream is created; an existing stream keeps its own (a warning says so).
    pub replicas: usize,
    /// Subject prefix (`mail`).
    pub namespace: String,
    /// Stream name prefix (`MAILLEDGER`).
    pub stream_prefix: String,
    /// Durable consumer name.
    pub consumer: String,
    /// Unacknowledged commands in flight.
    pub max_ack_pending: u32,
    /// Redelivery timeout.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries of one command at most: the last one is dead-lettered rather than
    /// handled (a command that took the service down with it every time).
    pub max_deliver: u32,
    /// JetStream duplicate window.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long the `<prefix>_EVENTS` stream keeps an event (the ledger keeps it for
    /// good): without a bound the stream grows with every event ever recorded.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
    /// Refuse (dead-letter) commands without a valid `Authorization: Bearer <key>`
    /// header. Off by default: NATS's own accounts and permissions guard the subject.
    pub require_key: bool,
    /// A `.creds` file (user JWT and nkey seed) or an nkey seed file for the service's
    /// own connection.
    #[serde(deserialize_with = "optional_path")]
    pub creds: Option<PathBuf>,
    /// PEM CA certificate(s) the server's certificate must chain to (`tls://`).
    #[serde(deserialize_with = "optional_path")]
    pub tls_ca: Option<PathBuf>,
}

/// The proof log (see the README's "Proof for auditors").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofSettings {
    /// Seal every event into the Merkle log (off only to measure what sealing costs).
    pub enabled: bool,
    /// The Ed25519 key that signs checkpoints (`PRIVATE+KEY+…`, as `mailledger ledger
    /// keygen` writes it; a file of two, one a line, while the key is changed over: each
    /// checkpoint is signed by both); unset: the log is kept, nothing is signed.
    #[serde(deserialize_with = "optional_path")]
    pub signing_key: Option<PathBuf>,
    /// The checkpoints' origin line; empty: `mailledger/<database name>`.
    pub origin: String,
    /// Sign a checkpoint once this many events were sealed since the last one…
    pub checkpoint_every: u64,
    /// …or once this long has passed and the log has grown.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

impl ProofSettings {
    /// The origin line of this log's checkpoints, for the database named `database`.
    pub fn origin(&self, database: &str) -> String {
        if self.origin.is_empty() { format!("mailledger/{database}") } else { self.origin.clone() }
    }
}

/// Signed status webhooks (see the README's "Webhooks").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Run the dispatcher on this instance (the enqueueing projection runs anyway).
    pub enabled: bool,
    /// Allow endpoints on private, loopback and link-local addresses (never in
    /// production: that is what SSRF goes after).
    pub allow_private: bool,
    /// The longest a delivery may take, connecting, sending and reading the answer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest a connection may take to open.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bytes of an answer read at most (the rest is not read; 1 KiB of it is kept).
    pub max_response_bytes: usize,
    /// Delay before attempt 2, 3, …; the last one repeats until `retry_for` is over.
    #[serde(deserialize_with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// How long a delivery is retried before it is given up.
    #[serde(with = "humantime_serde")]
    pub retry_for: Duration,
    /// Consecutive failed attempts after which an endpoint is paused (0: never).
    pub pause_after: u32,
    /// Deliveries in flight per instance, over every endpoint.
    pub concurrency: u32,
    /// Deliveries in flight to any one endpoint, across every instance.
    pub per_endpoint: u32,
    /// How often to look for due deliveries.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long the old secret stays valid after a rotation, unless the rotation says.
    #[serde(with = "humantime_serde")]
    pub rotation_grace: Duration,
    /// A file holding 32 random bytes in hex: webhook secrets are stored sealed with it
    /// (ChaCha20-Poly1305). Unset: they are stored as they are.
    #[serde(deserialize_with = "optional_path")]
    pub encryption_key: Option<PathBuf>,
    /// Delivered and given-up deliveries (and their attempts) older than this are
    /// deleted from the delivery log (0: kept for ever).
    #[serde(with = "humantime_serde")]
    pub keep_log: Duration,
}

/// The subjects and stream names derived from [`NatsSettings`].
#[derive(Debug, Clone)]
pub struct NatsNames {
    /// `<ns>` (`mail`).
    pub namespace: String,
    /// `<ns>.commands.create`
    pub create_subject: String,
    /// `<ns>.commands.>`
    pub commands_filter: String,
    /// `<ns>.dlq.commands`
    pub dlq_commands_subject: String,
    /// `<ns>.dlq.emails`
    pub dlq_emails_subject: String,
    /// `<ns>.dlq.>`
    pub dlq_filter: String,
    /// `<ns>.events.>`
    pub events_filter: String,
    /// `<prefix>_COMMANDS`
    pub commands_stream: String,
    /// `<prefix>_DLQ`
    pub dlq_stream: String,
    /// `<prefix>_EVENTS`
    pub events_stream: String,
    /// `<ns>.checkpoints`: the proof log's signed checkpoints.
    pub checkpoints_subject: String,
    /// `<prefix>_CHECKPOINTS`
    pub checkpoints_stream: String,
    /// Durable consumer name.
    pub consumer: String,
}

impl NatsNames {
    /// `<ns>.events.<kind>`: where events of `kind` (`sent`, `dead_lettered`) are published.
    pub fn event_subject(&self, kind: &str) -> String {
        format!("{}.events.{kind}", self.namespace)
    }
}

/// The NATS servers to connect to: one URL, or the members of one cluster. The client
/// connects to any of them and fails over to the others.
#[derive(Debug, Clone)]
pub struct NatsServers(Vec<Url>);

impl NatsServers {
    /// The first server: its scheme (`tls`) and credentials apply to all.
    pub fn first(&self) -> &Url {
        &self.0[0]
    }

    /// Every server, in the order given.
    pub fn all(&self) -> &[Url] {
        &self.0
    }

    /// The servers as logs may show them (see [`redact`]), comma-separated.
    pub fn redacted(&self) -> String {
        self.0.iter().map(redact).collect::<Vec<_>>().join(",")
    }
}

impl NatsSettings {
    /// The subjects and streams these settings name.
    pub fn names(&self) -> NatsNames {
        let ns = &self.namespace;
        let prefix = &self.stream_prefix;
        NatsNames {
            namespace: ns.clone(),
            create_subject: format!("{ns}.commands.create"),
            commands_filter: format!("{ns}.commands.>"),
            dlq_commands_subject: format!("{ns}.dlq.commands"),
            dlq_emails_subject: format!("{ns}.dlq.emails"),
            dlq_filter: format!("{ns}.dlq.>"),
            events_filter: format!("{ns}.events.>"),
            commands_stream: format!("{prefix}_COMMANDS"),
            dlq_stream: format!("{prefix}_DLQ"),
            events_stream: format!("{prefix}_EVENTS"),
            checkpoints_subject: format!("{ns}.checkpoints"),
            checkpoints_stream: format!("{prefix}_CHECKPOINTS"),
            consumer: self.consumer.clone(),
        }
    }
}

/// Redis settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    #[serde(deserialize_with = "url_with_scheme::<RedisScheme, _>")]
    pub url: Url,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Time to live of a cached view.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Views each instance also keeps in its own memory, in front of Redis, kept
    /// coherent by the event feed (0: off; see `query::near`).
    pub local_views: usize,
    /// PEM CA certificate(s) the server's certificate must chain to (`rediss://`).
    #[serde(deserialize_with = "optional_path")]
    pub tls_ca: Option<PathBuf>,
}

/// Whether requests must present an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request presents a key (the default).
    On,
    /// No key is asked for: every request acts with every scope in tenant `default`.
    /// For local development only.
    Off,
}

/// API keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `on` or `off` (`MAILLEDGER_AUTH`).
    pub mode: AuthMode,
    /// Requests per second a key may make (its own setting wins).
    pub rate_per_second: f64,
    /// Requests a key may make at once above its rate.
    pub burst: u32,
    /// Emails a key may send a day; 0: no quota (its own setting wins).
    pub daily_quota: i64,
}

/// SMTP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// `smtp://host:port`, `smtps://…` or `file:///dir`.
    #[serde(deserialize_with = "url_with_scheme::<SmtpScheme, _>")]
    pub url: Url,
    /// Connections kept per instance.
    pub pool_size: u32,
    /// Longest wait for one SMTP reply.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Transactions on one connection before it is closed and another opened.
    pub messages_per_connection: usize,
    /// A pooled connection unused this long is dropped.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The CA the relay's certificate must chain to (else the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// The name given in EHLO (else this machine's host name).
    pub helo: Option<String>,
}

/// Delivery settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// Run the sender on this instance.
    pub enabled: bool,
    /// Delay before attempt 2, 3, …; the last one repeats.
    #[serde(deserialize_with = "duration_list")]
    pub backoff: Vec<Duration>,
    /// Attempts per round before dead-lettering.
    pub max_attempts: u32,
    /// Fraction of each delay added or taken at random.
    pub jitter: f64,
    /// Deliveries in flight per instance.
    pub concurrency: u32,
    /// How long a claim keeps other workers away.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Idle polling interval.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Limits per recipient domain: `default`, and any domain by name.
    pub domains: BTreeMap<String, DomainPolicy>,
    /// The first pause of a domain that throttled (421, or a 4xx saying "too many");
    /// doubled at each further throttle, up to `throttle_backoff_max`.
    #[serde(with = "humantime_serde")]
    pub throttle_backoff: Duration,
    /// The longest pause of a throttling domain.
    #[serde(with = "humantime_serde")]
    pub throttle_backoff_max: Duration,
    /// Deliveries started per second by every instance together (0: no limit).
    pub max_per_second: u32,
}

/// How hard one recipient domain may be pushed. 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DomainPolicy {
    /// Deliveries to the domain in flight at once, across every instance (each holds
    /// one SMTP connection).
    pub connections: u32,
    /// Deliveries started per second, across every instance.
    pub per_second: u32,
    /// Deliveries started per minute, across every instance.
    pub per_minute: u32,
    /// Transactions on one connection before it is replaced (0: `smtp.messages_per_connection`).
    pub messages_per_connection: u32,
}

impl DeliverySettings {
    /// Whether any limit on starting deliveries is set (a rate or a connection cap for
    /// some domain, or `max_per_second`).
    pub fn limits_any(&self) -> bool {
        self.max_per_second > 0
            || self.domains.values().any(|p| p.connections > 0 || p.per_second > 0 || p.per_minute > 0)
    }

    /// The limits for `domain`: its own entry, else `default`.
    pub fn policy(&self, domain: &str) -> DomainPolicy {
        self.domains.get(domain).or_else(|| self.domains.get("default")).copied().unwrap_or_default()
    }
}

/// The REST listener and the limits on its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port`; port 0 picks a free one.
    pub addr: SocketAddr,
    /// A connection whose request headers are not all in by then is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request not answered by then gets a 408 (a body promised and never sent).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// The gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSettings {
    /// `host:port`; port 0 picks a free one.
    pub addr: SocketAddr,
    /// A call not answered by then ends `CANCELLED` (tonic's deadline).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

/// A listening address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSettings {
    /// `host:port`; port 0 picks a free one.
    pub addr: SocketAddr,
}

/// TLS on the REST and gRPC listeners (the metrics listener stays plain): on when a
/// certificate and its key are given, off when neither is. An empty value is unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's own certificate first.
    #[serde(deserialize_with = "optional_path")]
    pub cert: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(deserialize_with = "optional_path")]
    pub key: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate signed by one.
    #[serde(deserialize_with = "optional_path")]
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether the REST and gRPC listeners serve TLS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// The key a half-given TLS setting lacks, and the key that makes it needed.
    fn missing(&self) -> Option<(&'static str, &'static str)> {
        match (&self.cert, &self.key, &self.client_ca) {
            (Some(_), None, _) => Some(("tls.key", "tls.cert")),
            (None, Some(_), _) => Some(("tls.cert", "tls.key")),
            (None, None, Some(_)) => Some(("tls.cert", "tls.client_ca")),
            _ => None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// Text for people, JSON for machines.
    pub format: LogFormat,
    /// A `tracing` filter (`RUST_LOG` wins).
    pub filter: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// A setting that cannot be used, with the name the user knows it by.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    /// `MAILLEDGER_HTTP_ADDR`, `http.addr` or a file name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl Settings {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: Value = serde_yaml_ng::from_str(DEFAULTS).expect("embedded defaults parse");
        if let Some(path) = file {
            let name = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError { name: name.clone(), reason: e.to_string() })?;
            let overlay: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| ConfigError { name: name.clone(), reason: e.to_string() })?;
            merge(&mut tree, overlay);
        }
        // Which environment variable set which key, to name it in errors.
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for (var, value) in env {
            let key = if let Some((_, key)) = ENV_NAMES.iter().find(|(name, _)| *name == var) {
                (*key).to_owned()
            } else if let Some(rest) = var.strip_prefix("MAILLEDGER__") {
                rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".")
            } else {
                continue;
            };
            let parsed: Value = if value.is_empty() {
                Value::String(value)
            } else {
                // Numbers and booleans keep their type; anything else is a string.
                serde_yaml_ng::from_str(&value)
                    .ok()
                    .filter(|v: &Value| !v.is_mapping() && !v.is_sequence())
                    .unwrap_or(Value::String(value))
            };
            set(&mut tree, &key, parsed);
            origin.insert(key, var);
        }
        let mut settings: Settings = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let name = origin.get(&key).map_or_else(|| key.clone(), |var| var.clone());
            ConfigError { name, reason: e.into_inner().to_string() }
        })?;
        let name = |key: &str| origin.get(key).cloned().unwrap_or_else(|| key.to_owned());
        settings.check().map_err(|(key, reason)| ConfigError { name: name(key), reason })?;
        if let Some((missing, given)) = settings.tls.missing() {
            // Named the way its partner was given: by its variable, or by its key in a file.
            let missing_name = match origin.get(given) {
                Some(_) => ENV_NAMES.iter().find(|(_, key)| *key == missing).map_or(missing, |(var, _)| var),
                None => missing,
            };
            return Err(ConfigError {
                name: missing_name.to_owned(),
                reason: format!("not set, but {} is: TLS needs a certificate and its key", name(given)),
            });
        }
        settings.file = file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// Rules that span more than one value's type.
    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.auth.rate_per_second.is_finite() && self.auth.rate_per_second > 0.0) {
            return Err(("auth.rate_per_second", "must be more than 0".into()));
        }
        if self.auth.burst == 0 {
            return Err(("auth.burst", "must be at least 1".into()));
        }
        if self.nats.max_deliver < 2 {
            return Err(("nats.max_deliver", "must be at least 2".into()));
        }
        if !(1..=5).contains(&self.nats.replicas) {
            return Err(("nats.replicas", "must be between 1 and 5 (JetStream's limit)".into()));
        }
        if self.nats.max_ack_pending == 0 {
            return Err(("nats.max_ack_pending", "must be at least 1".into()));
        }
        let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !self.nats.namespace.split('.').all(token) {
            return Err(("nats.namespace", "must be dot-separated tokens of letters, digits, '-' and '_'".into()));
        }
        if !token(&self.nats.stream_prefix) {
            return Err(("nats.stream_prefix", "must be letters, digits, '-' and '_'".into()));
        }
        if !token(&self.nats.consumer) {
            return Err(("nats.consumer", "must be letters, digits, '-' and '_'".into()));
        }
        if self.http.max_connections == 0 {
            return Err(("http.max_connections", "must be at least 1".into()));
        }
        if self.http.header_timeout.is_zero() || self.http.request_timeout.is_zero() {
            return Err(("http.request_timeout", "timeouts must be longer than zero".into()));
        }
        if self.database.max_connections == 0 {
            return Err(("database.max_connections", "must be at least 1".into()));
        }
        if self.delivery.max_attempts == 0 {
            return Err(("delivery.max_attempts", "must be at least 1".into()));
        }
        if self.delivery.backoff.is_empty() {
            return Err(("delivery.backoff", "give at least one duration".into()));
        }
        if !(0.0..=1.0).contains(&self.delivery.jitter) {
            return Err(("delivery.jitter", "must be between 0 and 1".into()));
        }
        if self.delivery.concurrency == 0 || self.smtp.pool_size == 0 {
            return Err(("delivery.concurrency", "must be at least 1".into()));
        }
        if self.smtp.messages_per_connection == 0 {
            return Err(("smtp.messages_per_connection", "must be at least 1".into()));
        }
        if let Some(name) = self.delivery.domains.keys().find(|d| {
            d.as_str() != "default" && (d.is_empty() || d.contains(['@', ' ']) || d.to_ascii_lowercase() != **d)
        }) {
            return Err(("delivery.domains", format!("{name:?} is not a lower-case domain name")));
        }
        if self.delivery.throttle_backoff.is_zero()
            || self.delivery.throttle_backoff_max < self.delivery.throttle_backoff
        {
            return Err((
                "delivery.throttle_backoff",
                "must be longer than zero and at most throttle_backoff_max".into(),
            ));
        }
        if self.proof.checkpoint_every == 0 {
            return Err(("proof.checkpoint_every", "must be at least 1".into()));
        }
        if self.proof.checkpoint_interval.is_zero() {
            return Err(("proof.checkpoint_interval", "must be longer than zero".into()));
        }
        if self.proof.origin.chars().any(char::is_control) || self.proof.origin.trim() != self.proof.origin {
            return Err(("proof.origin", "one line, without surrounding spaces".into()));
        }
        if self.webhooks.backoff.is_empty() || self.webhooks.backoff.iter().any(Duration::is_zero) {
            return Err(("webhooks.backoff", "give at least one duration, each longer than zero".into()));
        }
        if self.webhooks.concurrency == 0 {
            return Err(("webhooks.concurrency", "must be at least 1".into()));
        }
        if self.webhooks.per_endpoint == 0 {
            return Err(("webhooks.per_endpoint", "must be at least 1".into()));
        }
        if self.webhooks.timeout.is_zero() {
            return Err(("webhooks.timeout", "must be longer than zero".into()));
        }
        if self.webhooks.connect_timeout.is_zero() {
            return Err(("webhooks.connect_timeout", "must be longer than zero".into()));
        }
        if self.webhooks.max_response_bytes == 0 {
            return Err(("webhooks.max_response_bytes", "must be at least 1".into()));
        }
        if self.limits.max_recipients == 0 || self.limits.max_body_bytes == 0 {
            return Err(("limits", "limits must be at least 1".into()));
        }
        Ok(())
    }
}

/// A URL as logs and error messages may show it: its password, a NATS token
/// (`nats://TOKEN@host`) and any query parameter that carries a secret
/// (`?password=`, `sslpassword`, `token`, …) replaced by `***`.
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    } else if !url.username().is_empty() && matches!(url.scheme(), "nats" | "tls" | "ws" | "wss") {
        let _ = url.set_username("***");
    }
    let secret = |key: &str| {
        let key = key.to_ascii_lowercase();
        ["pass", "pwd", "token", "secret", "auth", "cred", "key", "jwt", "seed"].iter().any(|s| key.contains(s))
    };
    if url.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) { "***".to_owned() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base), Value::Mapping(overlay)) => {
            for (k, v) in overlay {
                match base.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set(tree: &mut Value, dotted: &str, value: Value) {
    let mut node = tree;
    for part in dotted.split('.') {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().expect("just made a mapping");
        node = map.entry(Value::String(part.to_owned())).or_insert(Value::Null);
    }
    *node = value;
}

/// `"30s,2m,1h"` or a YAML list of durations.
fn duration_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        List(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::Text(t) => t.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect(),
        Raw::List(l) => l,
    };
    items
        .iter()
        .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}"))))
        .collect()
}

/// A path, or nothing for null or an empty string.
fn optional_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()).map(PathBuf::from))
}

trait Schemes {
    const ALLOWED: &'static [&'static str];
}
struct PgScheme;
impl Schemes for PgScheme {
    const ALLOWED: &'static [&'static str] = &["postgres", "postgresql"];
}
struct NatsScheme;
impl Schemes for NatsScheme {
    const ALLOWED: &'static [&'static str] = &["nats", "tls"];
}
struct RedisScheme;
impl Schemes for RedisScheme {
    const ALLOWED: &'static [&'static str] = &["redis", "rediss"];
}
struct SmtpScheme;
impl Schemes for SmtpScheme {
    const ALLOWED: &'static [&'static str] = &["smtp", "smtps", "file"];
}

/// A PostgreSQL URL, or nothing for null or an empty string.
fn optional_pg_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    match Option::<String>::deserialize(d)?.filter(|s| !s.trim().is_empty()) {
        None => Ok(None),
        Some(raw) => url_with_scheme::<PgScheme, _>(serde::de::value::StrDeserializer::<D::Error>::new(&raw)).map(Some),
    }
}

/// `nats://a:4222` or `nats://a:4222, nats://b:4222, …`: every URL with a NATS scheme, all
/// with the same one.
fn nats_servers<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NatsServers, D::Error> {
    let raw = String::deserialize(d)?;
    let mut urls = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = url_with_scheme::<NatsScheme, _>(serde::de::value::StrDeserializer::<D::Error>::new(part))?;
        if let Some(first) = urls.first().map(|u: &Url| u.scheme().to_owned())
            && first != url.scheme()
        {
            return Err(serde::de::Error::custom("every server of a cluster needs the same scheme (nats or tls)"));
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err(serde::de::Error::custom("no NATS server given"));
    }
    Ok(NatsServers(urls))
}

fn url_with_scheme<'de, S: Schemes, D: serde::Deserializer<'de>>(d: D) -> Result<Url, D::Error> {
    let raw = String::deserialize(d)?;
    let url = Url::parse(&raw).map_err(|e| serde::de::Error::custom(format!("not a URL ({e})")))?;
    if !S::ALLOWED.contains(&url.scheme()) {
        return Err(serde::de::Error::custom(format!(
            "scheme {:?} is not supported (use {})",
            url.scheme(),
            S::ALLOWED.join(", ")
        )));
    }
    if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
        return Err(serde::de::Error::custom("the URL has no host"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load_and_point_at_localhost() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert_eq!(s.database.url.host_str(), Some("127.0.0.1"));
        assert_eq!(s.http.addr.port(), 8080);
        assert_eq!(s.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(s.nats.ack_wait, Duration::from_secs(30));
    }

    #[test]
    fn nats_takes_the_servers_of_a_cluster() {
        let s = Settings::load_from(
            None,
            env(&[
                ("MAILLEDGER_NATS_URL", "nats://tok@a:4222, nats://b:4223,nats://c:4224"),
                ("MAILLEDGER__NATS__REPLICAS", "3"),
            ]),
        )
        .unwrap();
        let hosts: Vec<_> = s.nats.url.all().iter().map(|u| u.host_str().unwrap().to_owned()).collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(s.nats.url.redacted(), "nats://***@a:4222,nats://b:4223,nats://c:4224");
        assert_eq!(s.nats.replicas, 3);
        for (bad, why) in [
            ("nats://a:4222,tls://b:4222", "same scheme"),
            (" , ", "no NATS server"),
            ("nats://a:4222,http://b", "not supported"),
        ] {
            let err = Settings::load_from(None, env(&[("MAILLEDGER_NATS_URL", bad)])).unwrap_err();
            assert!(format!("{err:#}").contains(why), "{bad}: {err:#}");
        }
        let err = Settings::load_from(None, env(&[("MAILLEDGER__NATS__REPLICAS", "7")])).unwrap_err();
        assert!(format!("{err:#}").contains("REPLICAS: must be between 1 and 5"), "{err:#}");
    }

    #[test]
    fn webhook_defaults_retry_a_day_and_bad_values_are_named() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        let w = &s.webhooks;
        assert!(!w.allow_private && w.enabled && w.encryption_key.is_none());
        let schedule: Duration = w.backoff.iter().sum();
        assert!(w.retry_for >= Duration::from_secs(24 * 3600) && schedule < w.retry_for);
        for (var, value) in [
            ("MAILLEDGER__WEBHOOKS__BACKOFF", ""),
            ("MAILLEDGER__WEBHOOKS__BACKOFF", "1s,0s"),
            ("MAILLEDGER__WEBHOOKS__CONCURRENCY", "0"),
            ("MAILLEDGER__WEBHOOKS__PER_ENDPOINT", "0"),
            ("MAILLEDGER__WEBHOOKS__TIMEOUT", "0s"),
            ("MAILLEDGER__WEBHOOKS__CONNECT_TIMEOUT", "0s"),
            ("MAILLEDGER__WEBHOOKS__TIMEOUT", "soon"),
            ("MAILLEDGER__WEBHOOKS__ALLOW_PRIVATE", "maybe"),
        ] {
            let e = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
            assert_eq!(e.name, var, "{var}={value}: {e}");
        }
    }

    #[test]
    fn public_names_override() {
        let s = Settings::load_from(
            None,
            env(&[
                ("MAILLEDGER_DATABASE_URL", "postgres://u:secret@db.example:5433/x"),
                ("MAILLEDGER_NATS_URL", "nats://n.example:4223"),
                ("MAILLEDGER_REDIS_URL", "redis://r.example:6380/2"),
                ("MAILLEDGER_SMTP_URL", "smtp://mail.example:2525"),
                ("MAILLEDGER_HTTP_ADDR", "0.0.0.0:80"),
                ("MAILLEDGER_GRPC_ADDR", "[::1]:5000"),
                ("MAILLEDGER_METRICS_ADDR", "127.0.0.1:0"),
                ("MAILLEDGER__NATS__MAX_ACK_PENDING", "7"),
                ("MAILLEDGER__LIMITS__MAX_RECIPIENTS", "3"),
                ("MAILLEDGER_DELIVERY_BACKOFF", "1s, 2m,1h"),
                ("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "9"),
            ]),
        )
        .unwrap();
        assert_eq!(s.database.url.port(), Some(5433));
        assert_eq!(redact(&s.database.url), "postgres://u:***@db.example:5433/x");
        assert_eq!(s.nats.url.first().host_str(), Some("n.example"));
        assert_eq!(s.redis.url.path(), "/2");
        assert_eq!(s.smtp.url.port(), Some(2525));
        assert_eq!(s.http.addr.port(), 80);
        assert!(s.grpc.addr.is_ipv6());
        assert_eq!(s.metrics.addr.port(), 0);
        assert_eq!(s.nats.max_ack_pending, 7);
        assert_eq!(s.limits.max_recipients, 3);
        assert_eq!(s.delivery.backoff, [Duration::from_secs(1), Duration::from_secs(120), Duration::from_secs(3600)]);
        assert_eq!(s.delivery.max_attempts, 9);
    }

    #[test]
    fn every_form_of_secret_is_redacted() {
        let cases = [
            ("postgres://u:secret@db:5432/x", "postgres://u:***@db:5432/x"),
            (
                "postgres://u@db/x?password=secret&sslmode=verify-full",
                "postgres://u@db/x?password=***&sslmode=verify-full",
            ),
            ("postgres://db/x?sslpassword=secret", "postgres://db/x?sslpassword=***"),
            ("nats://s3cr3tT0k3n@nats:4222", "nats://***@nats:4222"),
            ("nats://user:secret@nats:4222", "nats://user:***@nats:4222"),
            ("tls://s3cr3tT0k3n@nats:4222", "tls://***@nats:4222"),
            ("redis://:secret@r:6379/0", "redis://:***@r:6379/0"),
            ("smtp://mail:secret@smtp.example:587?tls=required", "smtp://mail:***@smtp.example:587?tls=required"),
        ];
        for (raw, shown) in cases {
            let redacted = redact(&Url::parse(raw).unwrap());
            assert_eq!(redacted, shown);
            assert!(!redacted.contains("secret") && !redacted.contains("s3cr3t"), "{redacted}");
        }
    }

    #[test]
    fn a_bad_value_names_its_setting() {
        for (var, value) in [
            ("MAILLEDGER_HTTP_ADDR", "not-an-addr"),
            ("MAILLEDGER_GRPC_ADDR", "localhost"),
            ("MAILLEDGER_METRICS_ADDR", "1.2.3.4:99999"),
            ("MAILLEDGER_DATABASE_URL", "mysql://x/y"),
            ("MAILLEDGER_NATS_URL", "::"),
            ("MAILLEDGER_REDIS_URL", "http://r"),
            ("MAILLEDGER_SMTP_URL", "ftp://x"),
            ("MAILLEDGER__NATS__MAX_ACK_PENDING", "lots"),
            ("MAILLEDGER__NATS__ACK_WAIT", "soon"),
            ("MAILLEDGER__NATS__MAX_ACK_PENDING", "0"),
            ("MAILLEDGER_DELIVERY_BACKOFF", "30s,soon"),
            ("MAILLEDGER_DELIVERY_BACKOFF", ""),
            ("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "0"),
            ("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "-1"),
        ] {
            let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
            let line = err.to_string();
            assert!(line.starts_with(&format!("invalid setting {var}: ")), "{line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn tls_is_off_by_default_and_on_with_a_certificate_and_its_key() {
        let s = Settings::load_from(None, env(&[])).unwrap();
        assert!(!s.tls.enabled());
        let s = Settings::load_from(None, env(&[("MAILLEDGER_TLS_CERT", ""), ("MAILLEDGER_TLS_KEY", "")])).unwrap();
        assert!(!s.tls.enabled(), "empty is unset");
        let s = Settings::load_from(
            None,
            env(&[
                ("MAILLEDGER_TLS_CERT", "certs/server.crt"),
                ("MAILLEDGER_TLS_KEY", "certs/server.key"),
                ("MAILLEDGER_TLS_CLIENT_CA", "certs/ca.crt"),
            ]),
        )
        .unwrap();
        assert!(s.tls.enabled());
        assert_eq!(s.tls.client_ca.as_deref(), Some(Path::new("certs/ca.crt")));
    }

    #[test]
    fn half_a_tls_setting_names_the_missing_half() {
        for (given, missing) in [
            (("MAILLEDGER_TLS_CERT", "c.pem"), "MAILLEDGER_TLS_KEY"),
            (("MAILLEDGER_TLS_KEY", "k.pem"), "MAILLEDGER_TLS_CERT"),
            (("MAILLEDGER_TLS_CLIENT_CA", "ca.pem"), "MAILLEDGER_TLS_CERT"),
            (("MAILLEDGER__TLS__CERT", "c.pem"), "MAILLEDGER_TLS_KEY"),
        ] {
            let line = Settings::load_from(None, env(&[given])).unwrap_err().to_string();
            assert!(line.starts_with(&format!("invalid setting {missing}: not set, but {} is", given.0)), "{line}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "tls:\n  cert: c.pem\n").unwrap();
        let line = Settings::load_from(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(line.starts_with("invalid setting tls.key: not set, but tls.cert is"), "{line}");
    }

    #[test]
    fn file_overlays_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "http:\n  addr: 127.0.0.1:1234\n").unwrap();
        let s = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(s.http.addr.port(), 1234);
        assert_eq!(s.grpc.addr.port(), 50051);
        std::fs::write(&path, "htp:\n  addr: 1\n").unwrap();
        let err = Settings::load_from(Some(&path), env(&[])).unwrap_err().to_string();
        assert!(err.contains("htp"), "{err}");
    }
}
