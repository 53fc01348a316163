//! Every API key in memory, by hash: what each request is authenticated against. It
//! is reloaded whenever a key is made or revoked on any instance (a cheap query every
//! half second notices), so a revoked key stops working within a second everywhere.
//!
//! A presented key is checked for its shape and checksum first (a typo or a stranger's
//! token never reaches a lookup), then hashed and found; the stored hash is compared in
//! constant time. A key never appears in a log line or an error message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use governor::DefaultDirectRateLimiter;
use prometheus::IntCounter;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::keys::{self, KeyRecord};
use super::limits::Limiter;
use super::{AccessError, Principal, key};
use crate::config::{AuthMode, AuthSettings};

/// The keyring; cheap to clone.
#[derive(Clone)]
pub struct Keyring {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    mode: AuthMode,
    keys: RwLock<Arc<HashMap<[u8; 32], Arc<Entry>>>>,
    generation: Mutex<Option<(i64, Option<DateTime<Utc>>)>>,
    used: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    limits: Limiter,
    /// When the last look at the keys on behalf of an unknown key began; held while
    /// looking, so that such looks run one at a time and are shared.
    looked_again: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// A key as requests find it: its record, and what each request with it touches, made
/// once per key when the keys are (re)loaded rather than on every request.
struct Entry {
    record: Arc<KeyRecord>,
    /// Its request rate (the limiter's bucket of this key id, kept across reloads).
    bucket: Arc<DefaultDirectRateLimiter>,
    /// `mailledger_key_requests_total{key, outcome="allowed"}`, resolved at first use.
    allowed: OnceLock<IntCounter>,
    /// The second (Unix time) it was last noted as used: `used` is written at most once
    /// a second per key, not on every request.
    noted: AtomicI64,
}

/// What an unknown (well-formed) key is told.
const UNKNOWN_KEY: &str = "unknown API key";

/// What a request that passed presents from then on.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who it acts as.
    pub principal: Principal,
    /// Its key, when it presented one.
    pub key: Option<Arc<KeyRecord>>,
}

/// The longest `Authorization` value looked at.
const MAX_HEADER: usize = 512;

impl Keyring {
    /// Loads every key on `pool`.
    pub async fn load(pool: PgPool, settings: &AuthSettings) -> Result<Self, sqlx::Error> {
        let ring = Self {
            inner: Arc::new(Inner {
                pool,
                mode: settings.mode,
                keys: RwLock::default(),
                generation: Mutex::default(),
                used: Mutex::default(),
                limits: Limiter::new(settings.clone()),
                looked_again: tokio::sync::Mutex::default(),
            }),
        };
        ring.reload().await?;
        Ok(ring)
    }

    /// Whether authentication is on.
    pub fn enforced(&self) -> bool {
        self.inner.mode == AuthMode::On
    }

    /// Reads the keys again now if any changed (after this instance made or revoked one,
    /// so the change holds here at once; other instances notice within half a second).
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let generation = keys::generation(&self.inner.pool).await?;
        if self.inner.generation.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&generation) {
            return Ok(());
        }
        let all = keys::load_all(&self.inner.pool).await?;
        let map: HashMap<[u8; 32], Arc<Entry>> = all
            .into_iter()
            .map(|k| {
                let entry = Entry {
                    bucket: self.inner.limits.bucket(&k),
                    record: Arc::new(k),
                    allowed: OnceLock::new(),
                    noted: AtomicI64::new(i64::MIN),
                };
                (entry.record.hash, Arc::new(entry))
            })
            .collect();
        *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        *self.inner.generation.lock().unwrap_or_else(|e| e.into_inner()) = Some(generation);
        Ok(())
    }

    /// Keeps the keyring fresh until `stop`: looks for changed keys every half second,
    /// records when keys were last used every ten, flushes quota counts every second.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            n += 1;
            if let Err(e) = self.reload().await {
                tracing::debug!(error = %e, "cannot reload the API keys; keeping the ones in memory");
            }
            if n.is_multiple_of(2)
                && let Err(e) = self.inner.limits.flush(&self.inner.pool).await
            {
                tracing::debug!(error = %e, "cannot count the daily sends yet");
            }
            if n.is_multiple_of(20) {
                self.record_use().await;
            }
        }
        self.record_use().await;
        let _ = self.inner.limits.flush(&self.inner.pool).await;
    }

    async fn record_use(&self) {
        let used: Vec<(Uuid, DateTime<Utc>)> =
            self.inner.used.lock().unwrap_or_else(|e| e.into_inner()).drain().collect();
        if let Err(e) = keys::touch(&self.inner.pool, &used).await {
            tracing::debug!(error = %e, "cannot record when keys were last used");
        }
    }

    fn has_keys(&self) -> bool {
        !self.inner.keys.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Authenticates the values of a request's `Authorization` header (all of them: two
    /// are refused) and takes one request from the key's rate.
    pub fn authenticate<'a>(&self, values: impl Iterator<Item = &'a [u8]>) -> Result<Authenticated, AccessError> {
        self.counted(self.authenticate_uncounted(values))
    }

    /// `authenticate`, except that a well-formed key this instance does not know yet —
    /// made a moment ago by `mailledger keys create` or on another instance — makes it
    /// read the keys again first, rather than answer 401 until the next half-second
    /// reload: `KEY=$(make -s key | tail -n 1); curl … $KEY` works at once. Such looks
    /// run one at a time, and every request waiting shares the next one (a flood of
    /// unknown keys costs one small query at a time, not one each).
    pub async fn authenticate_fresh(&self, values: &[&[u8]]) -> Result<Authenticated, AccessError> {
        // (Only the first look at the keys is timed: what arrived before a look began
        // shares it.)
        let arrived = std::time::Instant::now();
        let result = match self.authenticate_uncounted(values.iter().copied()) {
            Err(AccessError::Unauthenticated(m)) if m == UNKNOWN_KEY => {
                self.look_again(arrived).await;
                self.authenticate_uncounted(values.iter().copied())
            }
            other => other,
        };
        self.counted(result)
    }

    /// Reads the keys again unless a read that began after `arrived` already did.
    async fn look_again(&self, arrived: std::time::Instant) {
        let mut last = self.inner.looked_again.lock().await;
        if last.is_some_and(|began| began >= arrived) {
            return;
        }
        *last = Some(std::time::Instant::now());
        if let Err(e) = self.reload().await {
            tracing::debug!(error = %e, "cannot reload the API keys; keeping the ones in memory");
        }
    }

    /// `authenticate`, when it can answer from the keys in memory: `None` when the key is
    /// well-formed but unknown here (then [`Self::authenticate_fresh`] looks again).
    pub fn authenticate_known<'a>(
        &self,
        values: impl Iterator<Item = &'a [u8]>,
    ) -> Option<Result<Authenticated, AccessError>> {
        match self.authenticate_uncounted(values) {
            Err(AccessError::Unauthenticated(m)) if m == UNKNOWN_KEY => None,
            other => Some(self.counted(other)),
        }
    }

    fn counted(&self, result: Result<Authenticated, AccessError>) -> Result<Authenticated, AccessError> {
        match &result {
            // Counted where the key was found (its counter is resolved once).
            Ok(a) if a.key.is_some() => {}
            Ok(a) => crate::metrics::key_request(&a.principal.name, "allowed"),
            Err(AccessError::RateLimited(_)) => {}
            Err(e) => crate::metrics::key_request("", crate::metrics::access_outcome(e)),
        }
        result
    }

    fn authenticate_uncounted<'a>(
        &self,
        mut values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Authenticated, AccessError> {
        if !self.enforced() {
            return Ok(Authenticated { principal: Principal::anonymous(), key: None });
        }
        let first = values.next();
        if values.next().is_some() {
            return Err(malformed("more than one Authorization header"));
        }
        let Some(raw) = first else {
            let hint = if self.has_keys() {
                ""
            } else {
                "; none exists yet: make one with `mailledger keys create --name NAME --scope all`"
            };
            return Err(AccessError::Unauthenticated(format!("no API key: send `Authorization: Bearer <key>`{hint}")));
        };
        let key = bearer(raw)?;
        let entry = self.find(key)?;
        self.inner.limits.admit_to(&entry.bucket).inspect_err(|e| {
            crate::metrics::key_request(&entry.record.name, crate::metrics::access_outcome(e));
        })?;
        entry.allowed.get_or_init(|| crate::metrics::key_counter(&entry.record.name, "allowed")).inc();
        Ok(Authenticated { principal: entry.record.principal(), key: Some(entry.record.clone()) })
    }

    /// Authenticates a NATS command: its `Authorization: Bearer <key>` header when it
    /// has one; without one it acts as `nats:<subject>` in the default tenant — unless
    /// `required` (`nats.require_key`). No request rate applies: JetStream's
    /// `max_ack_pending` paces the intake.
    pub fn authenticate_command(
        &self,
        header: Option<&str>,
        subject: &str,
        required: bool,
    ) -> Result<Authenticated, AccessError> {
        match header {
            None if required && self.enforced() => Err(AccessError::Unauthenticated(
                "no API key: nats.require_key is on; send the header `Authorization: Bearer <key>`".into(),
            )),
            None => Ok(Authenticated { principal: Principal::nats(subject), key: None }),
            Some(_) if !self.enforced() => Ok(Authenticated { principal: Principal::nats(subject), key: None }),
            Some(raw) => {
                let result = bearer(raw.as_bytes()).and_then(|key| self.authenticate_key(key));
                match &result {
                    Ok(a) => crate::metrics::key_request(&a.principal.name, "allowed"),
                    Err(e) => crate::metrics::key_request("", crate::metrics::access_outcome(e)),
                }
                result
            }
        }
    }

    /// Authenticates a key given without a header.
    pub fn authenticate_key(&self, key: &str) -> Result<Authenticated, AccessError> {
        let record = self.find(key)?.record.clone();
        Ok(Authenticated { principal: record.principal(), key: Some(record) })
    }

    /// The key `key` is, when it is well-formed, known, not revoked and not expired;
    /// notes that it was used.
    fn find(&self, key: &str) -> Result<Arc<Entry>, AccessError> {
        if !key::well_formed(key) {
            return Err(malformed("not a mailledger key (mlk_…)"));
        }
        let hash = key::hash(key);
        let entry = {
            let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
            keys.get(&hash).filter(|e| key::same(&e.record.hash, &hash)).cloned()
        };
        let entry = entry.ok_or_else(|| AccessError::Unauthenticated(UNKNOWN_KEY.into()))?;
        if entry.record.revoked_at.is_some() {
            return Err(AccessError::Unauthenticated("this API key was revoked".into()));
        }
        let now = Utc::now();
        if entry.record.expires_at.is_some_and(|t| t <= now) {
            return Err(AccessError::Unauthenticated("this API key has expired".into()));
        }
        let second = now.timestamp();
        if entry.noted.swap(second, Ordering::Relaxed) != second {
            self.inner.used.lock().unwrap_or_else(|e| e.into_inner()).insert(entry.record.id, now);
        }
        Ok(entry)
    }

    /// Fails when the key's daily send quota is spent.
    pub fn check_quota(&self, key: Option<&KeyRecord>) -> Result<(), AccessError> {
        key.map_or(Ok(()), |k| {
            self.inner.limits.check_quota(k).inspect_err(|e| {
                crate::metrics::key_request(&k.name, crate::metrics::access_outcome(e));
            })
        })
    }

    /// Counts one email the key sent.
    pub fn count_send(&self, key: Option<&KeyRecord>) {
        if let Some(k) = key {
            self.inner.limits.count_send(k);
        }
    }
}

fn malformed(why: &str) -> AccessError {
    AccessError::Unauthenticated(format!("malformed Authorization header: {why}; send `Authorization: Bearer <key>`"))
}

/// The key in `Bearer <key>` (the scheme in any case, spaces around the key allowed).
fn bearer(raw: &[u8]) -> Result<&str, AccessError> {
    if raw.len() > MAX_HEADER {
        return Err(malformed("too long"));
    }
    let text = std::str::from_utf8(raw).ok().filter(|t| t.is_ascii()).ok_or_else(|| malformed("not ASCII"))?;
    let (scheme, key) = text.trim().split_once(' ').ok_or_else(|| malformed("no `Bearer` scheme"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("the scheme is not `Bearer`"));
    }
    Ok(key.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_usual_forms_and_refuses_the_rest() {
        let k = key::generate();
        for ok in [format!("Bearer {k}"), format!("bearer {k}"), format!("BEARER   {k}  ")] {
            assert_eq!(bearer(ok.as_bytes()).unwrap(), k);
        }
        for bad in [k.clone(), format!("Basic {k}"), "Bearer".into(), format!("Bearer {}", "x".repeat(10_000))] {
            let err = bearer(bad.as_bytes()).map(|_| ()).unwrap_err().to_string();
            assert!(!err.contains(&k), "the key is never echoed: {err}");
        }
        assert!(bearer("Bearer ключ".as_bytes()).is_err());
    }
}
