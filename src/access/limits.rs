//! The limits on each key: a request rate (a token bucket per key, governor's GCRA, on
//! each instance) and a daily send quota (counted in PostgreSQL, so it holds across
//! instances: each instance adds its sends about once a second and reads back the day's
//! totals; between two flushes instances may together pass the quota by the sends of
//! that second).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use uuid::Uuid;

use super::AccessError;
use super::keys::{self, KeyRecord};
use crate::config::AuthSettings;

/// Rate limiters and quota counts.
pub struct Limiter {
    defaults: AuthSettings,
    buckets: Mutex<HashMap<Uuid, Arc<DefaultDirectRateLimiter>>>,
    sends: Mutex<Sends>,
}

#[derive(Default)]
struct Sends {
    day: Option<NaiveDate>,
    /// Today's totals as PostgreSQL had them at the last flush.
    stored: HashMap<Uuid, i64>,
    /// Counted here since the last flush.
    pending: HashMap<Uuid, i64>,
}

impl Sends {
    fn roll(&mut self, today: NaiveDate) {
        if self.day != Some(today) {
            *self = Sends { day: Some(today), ..Default::default() };
        }
    }
}

fn seconds_to_midnight() -> u64 {
    let now = Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1)).and_hms_opt(0, 0, 0).expect("midnight exists").and_utc();
    (midnight - now).num_seconds().max(1) as u64
}

impl Limiter {
    /// Limits with these defaults.
    pub fn new(defaults: AuthSettings) -> Self {
        Self { defaults, buckets: Mutex::default(), sends: Mutex::default() }
    }

    /// Takes one request from `key`'s bucket, or says how long to wait.
    pub fn admit(&self, key: &KeyRecord) -> Result<(), AccessError> {
        self.admit_to(&self.bucket(key))
    }

    /// `key`'s bucket (one per key id, made at first use), to take requests from with
    /// [`Self::admit_to`] without looking it up each time.
    pub fn bucket(&self, key: &KeyRecord) -> Arc<DefaultDirectRateLimiter> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        buckets
            .entry(key.id)
            .or_insert_with(|| {
                let rate = key.rate_per_s.unwrap_or(self.defaults.rate_per_second);
                let burst = key.burst.unwrap_or(self.defaults.burst).max(1);
                let per_request = Duration::from_secs_f64(1.0 / rate.max(1e-6));
                let quota = Quota::with_period(per_request)
                    .expect("a positive period")
                    .allow_burst(NonZeroU32::new(burst).expect("at least 1"));
                Arc::new(RateLimiter::direct(quota))
            })
            .clone()
    }

    /// Takes one request from `bucket`, or says how long to wait.
    pub fn admit_to(&self, bucket: &DefaultDirectRateLimiter) -> Result<(), AccessError> {
        bucket.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AccessError::RateLimited(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    fn quota_of(&self, key: &KeyRecord) -> i64 {
        key.daily_quota.unwrap_or(self.defaults.daily_quota)
    }

    /// Fails when `key` has sent its daily quota today.
    pub fn check_quota(&self, key: &KeyRecord) -> Result<(), AccessError> {
        let quota = self.quota_of(key);
        if quota <= 0 {
            return Ok(());
        }
        let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        sends.roll(Utc::now().date_naive());
        let used = sends.stored.get(&key.id).copied().unwrap_or(0) + sends.pending.get(&key.id).copied().unwrap_or(0);
        if used >= quota { Err(AccessError::QuotaExceeded(seconds_to_midnight())) } else { Ok(()) }
    }

    /// Counts one email sent by `key` (when it has a quota).
    pub fn count_send(&self, key: &KeyRecord) {
        if self.quota_of(key) <= 0 {
            return;
        }
        let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        sends.roll(Utc::now().date_naive());
        *sends.pending.entry(key.id).or_default() += 1;
    }

    /// Adds this instance's sends to PostgreSQL's counts and reads back the day's totals.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let today = Utc::now().date_naive();
        let pending: Vec<(Uuid, i64)> = {
            let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
            sends.roll(today);
            sends.pending.drain().collect()
        };
        let totals = if pending.is_empty() {
            keys::sends_today(pool, today).await
        } else {
            match keys::count_sends(pool, today, &pending).await {
                Ok(_) => keys::sends_today(pool, today).await,
                Err(e) => {
                    // Keep them for the next flush.
                    let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
                    for (id, n) in pending {
                        *sends.pending.entry(id).or_default() += n;
                    }
                    return Err(e);
                }
            }
        }?;
        let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        if sends.day == Some(today) {
            sends.stored = totals.into_iter().collect();
        }
        Ok(())
    }
}
