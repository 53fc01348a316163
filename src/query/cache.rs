//! The Redis cache of email views, keyed `<prefix>email:<id>`, each a hash
//! `{v: version, view: json}` with a TTL.
//!
//! Writes are guarded by version in one Lua script, so an older view never replaces a
//! newer one whatever order writers arrive in. Redis is optional: a read has 0.5 s in
//! all (connecting included), a failure is logged and counted, and callers fall back to
//! PostgreSQL; after a failure reads skip Redis for a second, so a Redis that hangs
//! costs one request 0.5 s, not every request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::view::EmailView;
use crate::config::RedisSettings;

/// Views larger than this are not cached (reads go to PostgreSQL).
pub const MAX_CACHED_VIEW_BYTES: usize = 256 * 1024;

const PUT: &str = r"
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'view', ARGV[2], 't', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// The shape of the cached `EmailView` JSON: bump it whenever that JSON changes (the
/// cache then refills from PostgreSQL, or at once with `mailledger reproject cache`).
pub const VIEW_VERSION: &str = "v3";

/// A cache failure (never shown to a client).
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct CacheError(String);

/// The cache client; cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<redis::Client>,
    prefix: String,
    ttl: Duration,
    /// Set once the first connection is made: a `ConnectionManager` reconnects by
    /// itself, so every later request takes a clone without queueing on `conn`.
    ready: std::sync::OnceLock<ConnectionManager>,
    conn: Mutex<(Option<ConnectionManager>, Option<Instant>)>,
    script: redis::Script,
    /// Until when reads skip Redis after a failure.
    resting_until: std::sync::Mutex<Option<Instant>>,
}

/// How long one read may take, connecting included.
const READ_BUDGET: Duration = Duration::from_millis(500);
/// How long reads skip Redis after one failed.
const REST: Duration = Duration::from_secs(1);

impl Cache {
    /// A cache on `settings` (no connection is made until first use).
    pub fn new(settings: &RedisSettings) -> Self {
        let client = match Self::client(settings) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(error = %e, "Redis settings unusable; the cache is off");
                None
            }
        };
        Self {
            inner: Arc::new(Inner {
                client,
                prefix: settings.key_prefix.clone(),
                ttl: settings.cache_ttl,
                ready: std::sync::OnceLock::new(),
                conn: Mutex::new((None, None)),
                script: redis::Script::new(PUT),
                resting_until: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The client for these settings: `rediss://` verifies the server against
    /// `redis.tls_ca` when given, else against the system's roots.
    fn client(settings: &RedisSettings) -> Result<redis::Client, String> {
        match &settings.tls_ca {
            Some(ca) if settings.url.scheme() == "rediss" => {
                let pem = std::fs::read(ca).map_err(|e| format!("MAILLEDGER_REDIS_CA {}: {e}", ca.display()))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(settings.url.as_str(), certs).map_err(|e| e.to_string())
            }
            _ => redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string()),
        }
    }

    /// The key of one email's view. [`VIEW_VERSION`] is in it: readers serve the stored
    /// JSON as it is, so a view of another shape must never be found under it.
    pub fn key(&self, id: Uuid) -> String {
        format!("{}email:{VIEW_VERSION}:{id}", self.inner.prefix)
    }

    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        if let Some(conn) = self.inner.ready.get() {
            return Ok(conn.clone());
        }
        let client = self.inner.client.as_ref().ok_or_else(|| CacheError("no usable URL".into()))?;
        let mut guard = self.inner.conn.lock().await;
        if let Some(conn) = &guard.0 {
            return Ok(conn.clone());
        }
        if guard.1.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Err(CacheError("unreachable (retrying)".into()));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match tokio::time::timeout(Duration::from_secs(1), ConnectionManager::new_with_config(client.clone(), config))
            .await
        {
            Ok(Ok(conn)) => {
                *guard = (Some(conn.clone()), None);
                let _ = self.inner.ready.set(conn.clone());
                Ok(conn)
            }
            Ok(Err(e)) => {
                guard.1 = Some(Instant::now());
                Err(CacheError(e.to_string()))
            }
            Err(_) => {
                guard.1 = Some(Instant::now());
                Err(CacheError("connect timed out".into()))
            }
        }
    }

    /// Whether Redis answers (for readiness).
    pub async fn ping(&self) -> Result<(), CacheError> {
        let ping = async {
            let mut conn = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| CacheError(e.to_string()))
        };
        tokio::time::timeout(READ_BUDGET, ping)
            .await
            .unwrap_or_else(|_| Err(CacheError("timed out".into())))
            .map(|_| ())
    }

    /// The cached view, if Redis has it and answers in time.
    pub async fn get(&self, id: Uuid) -> Option<EmailView> {
        let (json, _, _) = self.fetch(id).await?;
        self.counted(id, serde_json::from_str(&json))
    }

    /// The cached view as the JSON it is stored as (`EmailView`'s own serialisation),
    /// for a reader that would only serialise it again, with the tenant it belongs to
    /// and its version. `None` when Redis does not have it, does not answer in time, or
    /// holds something that is not JSON.
    pub async fn get_json(&self, id: Uuid) -> Option<(String, String, i64)> {
        let (json, tenant, version) = self.fetch(id).await?;
        self.counted(id, serde_json::from_str::<serde::de::IgnoredAny>(&json)).map(|_| (json, tenant, version))
    }

    /// Counts a value read from the cache as a hit, or as an error when it does not
    /// decode (then ignored: the reader goes to PostgreSQL).
    fn counted<T>(&self, id: Uuid, decoded: serde_json::Result<T>) -> Option<T> {
        match decoded {
            Ok(value) => {
                crate::metrics::CACHE.with_label_values(&["hit"]).inc();
                Some(value)
            }
            Err(e) => {
                tracing::warn!(error = %e, %id, "cached view does not decode; ignoring it");
                crate::metrics::CACHE.with_label_values(&["error"]).inc();
                None
            }
        }
    }

    /// The stored JSON of one view, its tenant and version; a miss or a failure is
    /// counted here.
    async fn fetch(&self, id: Uuid) -> Option<(String, String, i64)> {
        if self.resting() {
            crate::metrics::CACHE.with_label_values(&["error"]).inc();
            return None;
        }
        let read = async {
            let mut conn = self.connection().await?;
            let mut cmd = redis::cmd("HMGET");
            cmd.arg(self.key(id)).arg("view").arg("t").arg("v");
            let (view, tenant, version) = cmd
                .query_async::<(Option<String>, Option<String>, Option<i64>)>(&mut conn)
                .await
                .map_err(|e| CacheError(e.to_string()))?;
            Ok(view.zip(tenant).map(|(view, tenant)| (view, tenant, version.unwrap_or(0))))
        };
        let result =
            tokio::time::timeout(READ_BUDGET, read).await.unwrap_or_else(|_| Err(CacheError("timed out".into())));
        match result {
            Ok(Some(json)) => Some(json),
            Ok(None) => {
                crate::metrics::CACHE.with_label_values(&["miss"]).inc();
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "cache read failed; reading PostgreSQL (and skipping Redis for a second)");
                if let Ok(mut resting) = self.inner.resting_until.lock() {
                    *resting = Some(Instant::now() + REST);
                }
                crate::metrics::CACHE.with_label_values(&["error"]).inc();
                None
            }
        }
    }

    /// Whether reads skip Redis for now (it failed a moment ago).
    fn resting(&self) -> bool {
        self.inner.resting_until.lock().map(|r| r.is_some_and(|t| Instant::now() < t)).unwrap_or(false)
    }

    /// Puts a view read from PostgreSQL back in the cache, in the background (the reader
    /// does not wait for it), unless Redis failed a moment ago.
    pub fn refill(&self, view: EmailView) {
        if self.resting() {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            if let Err(e) = cache.put_many(std::slice::from_ref(&view)).await {
                tracing::debug!(error = %e, "cache refill failed");
            }
        });
    }

    /// Stores views, each only if newer than what Redis holds.
    pub async fn put_many(&self, views: &[EmailView]) -> Result<(), CacheError> {
        if views.is_empty() {
            return Ok(());
        }
        let mut conn = self.connection().await?;
        let ttl_ms = self.inner.ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        for view in views {
            let json = serde_json::to_string(view).map_err(|e| CacheError(e.to_string()))?;
            if json.len() > MAX_CACHED_VIEW_BYTES {
                // Too big to cache: drop any older copy so it cannot be served stale.
                pipe.cmd("DEL").arg(self.key(view.id)).ignore();
                continue;
            }
            pipe.cmd("EVALSHA")
                .arg(self.inner.script.get_hash())
                .arg(1)
                .arg(self.key(view.id))
                .arg(view.version)
                .arg(json)
                .arg(ttl_ms)
                .arg(&view.tenant)
                .ignore();
        }
        let run = async {
            match pipe.query_async::<()>(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // First use on this server (or it restarted): load the script, run again.
                    self.inner.script.prepare_invoke().load_async(&mut conn).await?;
                    pipe.query_async::<()>(&mut conn).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), run).await {
            Ok(result) => result.map_err(|e| CacheError(e.to_string())),
            Err(_) => Err(CacheError("timed out".into())),
        }
    }
}
