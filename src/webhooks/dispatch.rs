//! The dispatcher: sends queued deliveries, on every instance with `webhooks.enabled`.
//!
//! It claims due rows with `FOR UPDATE SKIP LOCKED` under a lease (a crashed instance's
//! claims fall to another when the lease ends: at least once), never a row while an
//! earlier event of the same email waits for the same endpoint (in order per email),
//! and never more than `webhooks.per_endpoint` rows of one endpoint in flight across
//! every instance (a row is in flight while its lease runs: claimed, not yet recorded;
//! claims take turns under a transaction-scoped advisory lock, so two instances never
//! both count the same free slot), out of each instance's `webhooks.concurrency`: a slow
//! endpoint fills its own slots, not everyone's. Each attempt is one bounded `POST`
//! (timeout, answer size, no redirects, the SSRF guard in the resolver) and is logged in
//! `webhook_attempts`.
//!
//! Answers: 2xx delivered; 410 disables the endpoint (what waited stays queued for
//! when it is enabled again); anything else, a timeout or no connection is retried
//! after `webhooks.backoff` (the last delay repeating) until `webhooks.retry_for` has
//! passed since it was queued, then given up (`failed`; still replayable). An endpoint
//! failing `webhooks.pause_after` attempts in a row is paused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{guard, sign};
use crate::config::WebhookSettings;

/// Bytes of an answer kept in the delivery log.
pub const EXCERPT_BYTES: usize = 1024;

/// Sends webhook deliveries.
#[derive(Clone)]
pub struct Dispatcher {
    pool: PgPool,
    settings: Arc<WebhookSettings>,
    client: reqwest::Client,
    slots: Arc<Semaphore>,
    secrets: super::sealed::SecretBox,
    done: Arc<Notify>,
}

/// A claimed delivery, with what sending it takes (no `Debug`: it holds the secrets).
#[derive(sqlx::FromRow)]
struct Claimed {
    id: i64,
    endpoint_id: Uuid,
    event_id: String,
    body: String,
    attempts: i32,
    queued_at: DateTime<Utc>,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_until: Option<DateTime<Utc>>,
}

/// What one attempt came to.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    error: Option<String>,
    excerpt: String,
    latency: Duration,
}

impl Dispatcher {
    /// A dispatcher on `pool` with `settings`.
    pub fn new(pool: PgPool, settings: WebhookSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(guard::resolver(settings.allow_private))
            .user_agent(concat!("mailledger-webhooks/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()?;
        let slots = Arc::new(Semaphore::new(settings.concurrency as usize));
        let secrets = super::sealed::SecretBox::load(settings.encryption_key.as_deref())?;
        Ok(Self { pool, settings: Arc::new(settings), client, slots, secrets, done: Arc::default() })
    }

    /// Claims and sends until `stop`, then waits for what is in flight.
    pub async fn run(self, stop: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut last_gauges = Instant::now() - Duration::from_secs(60);
        loop {
            if stop.is_cancelled() {
                break;
            }
            if last_gauges.elapsed() >= Duration::from_secs(5) {
                last_gauges = Instant::now();
                if let Err(e) = self.refresh_gauges().await {
                    tracing::warn!(error = %e, "webhook gauges not refreshed");
                }
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e, "webhook delivery log not pruned");
                }
            }
            let mut full = false;
            let free = self.slots.available_permits();
            if free > 0 {
                match self.claim(free.min(200) as i64).await {
                    Ok(claimed) => {
                        full = claimed.len() == free.min(200);
                        for c in claimed {
                            let Ok(permit) = self.slots.clone().try_acquire_owned() else { break };
                            let me = self.clone();
                            tracker.spawn(async move {
                                me.deliver(c).await;
                                drop(permit);
                                me.done.notify_one();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "webhook deliveries not claimed"),
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.done.notified() => {}
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        tracker.close();
        tracker.wait().await;
    }

    /// Claims up to `limit` due deliveries (see the module's rules).
    async fn claim(&self, limit: i64) -> Result<Vec<Claimed>, sqlx::Error> {
        let lease = self.settings.timeout + self.settings.connect_timeout + Duration::from_secs(30);
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext('webhooks.claim'))")
            .bind(crate::projections::runner::LOCK_NAMESPACE)
            .execute(&mut *tx)
            .await?;
        let claimed = sqlx::query_as(
            "WITH busy AS (SELECT endpoint_id, count(*)::int AS n FROM webhook_deliveries \
               WHERE status = 'pending' AND lease_until >= now() GROUP BY endpoint_id), \
             candidates AS ( \
               SELECT d.id, d.endpoint_id, d.next_attempt_at, \
                 row_number() OVER (PARTITION BY d.endpoint_id ORDER BY d.next_attempt_at, d.id) AS rank \
               FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
               WHERE d.status = 'pending' AND d.next_attempt_at <= now() \
                 AND (d.lease_until IS NULL OR d.lease_until < now()) AND e.enabled AND e.paused_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
                   AND p.email_id = d.email_id AND p.status = 'pending' AND p.sequence < d.sequence)), \
             picked AS ( \
               SELECT c.id FROM candidates c LEFT JOIN busy b ON b.endpoint_id = c.endpoint_id \
               WHERE c.rank <= $2 - coalesce(b.n, 0) ORDER BY c.next_attempt_at, c.id LIMIT $1), \
             locked AS ( \
               SELECT d.id FROM webhook_deliveries d JOIN picked USING (id) \
               WHERE d.status = 'pending' AND (d.lease_until IS NULL OR d.lease_until < now()) \
               FOR UPDATE OF d SKIP LOCKED) \
             UPDATE webhook_deliveries d SET lease_until = now() + $3 \
             FROM locked, webhook_endpoints e WHERE d.id = locked.id AND e.id = d.endpoint_id \
             RETURNING d.id, d.endpoint_id, d.event_id, d.body, d.attempts, d.queued_at, e.url, e.secret, \
               e.previous_secret, e.previous_until",
        )
        .bind(limit)
        .bind(self.settings.per_endpoint as i32)
        .bind(chrono::Duration::from_std(lease).unwrap_or_default())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Sends one delivery and records what came of it.
    async fn deliver(&self, c: Claimed) {
        let attempt = c.attempts + 1;
        let started_at = crate::store::now();
        let answer = self.send(&c, attempt).await;
        let now = crate::store::now();
        let outcome = match answer.status {
            Some(s) if (200..300).contains(&s) => "delivered",
            Some(410) => "gone",
            _ if now >= c.queued_at + chrono::Duration::from_std(self.settings.retry_for).unwrap_or_default() => {
                "gave_up"
            }
            _ => "retry",
        };
        crate::metrics::WEBHOOK_DELIVERIES.with_label_values(&[outcome]).inc();
        crate::metrics::WEBHOOK_LATENCY.observe(answer.latency.as_secs_f64());
        let delay = self.settings.backoff[(attempt as usize - 1).min(self.settings.backoff.len() - 1)];
        if let Err(e) = self.record(&c, attempt, started_at, outcome, &answer, delay).await {
            // The lease runs out and the delivery is attempted again: at least once.
            tracing::warn!(delivery = c.id, error = %e, "webhook attempt not recorded");
        }
        if outcome != "delivered" {
            tracing::info!(endpoint = %c.endpoint_id, delivery = c.id, status = ?answer.status, error = ?answer.error,
                outcome, "webhook delivery failed");
        }
    }

    /// One `POST`, bounded in time and in the answer read.
    async fn send(&self, c: &Claimed, attempt: i32) -> Answer {
        let started = Instant::now();
        let failed = |error: String, started: Instant| Answer {
            status: None,
            error: Some(crate::text::printable(&error, 500)),
            excerpt: String::new(),
            latency: started.elapsed(),
        };
        let url = match guard::parse(&c.url) {
            Ok(u) => u,
            Err(e) => return failed(e.to_string(), started),
        };
        // An address literal never reaches the resolver: check it here.
        if let Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)) = url.host()
            && let Err(e) = guard::check_url(&url, self.settings.allow_private).await
        {
            return failed(e.to_string(), started);
        }
        let t = crate::store::now().timestamp();
        let mut secrets = match self.secrets.open(c.endpoint_id, &c.secret) {
            Ok(s) => vec![s],
            Err(e) => return failed(e, started),
        };
        if let (Some(old), Some(until)) = (&c.previous_secret, c.previous_until)
            && until > crate::store::now()
        {
            // The old secret only adds a signature: one that no longer opens (a lost
            // key, then a rotation) is left out rather than holding the delivery up.
            match self.secrets.open(c.endpoint_id, old) {
                Ok(s) => secrets.push(s),
                Err(e) => tracing::warn!(endpoint = %c.endpoint_id, error = %e, "previous webhook secret left out"),
            }
        }
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let signature = sign::header_value(&secrets, t, c.body.as_bytes());
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(sign::HEADER, signature)
            .header("Mailledger-Event-Id", &c.event_id)
            .header("Mailledger-Delivery-Attempt", attempt.to_string())
            .body(c.body.clone())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            // Without the URL: its query may hold the receiver's own token.
            Err(e) => return failed(error_chain(&e.without_url()), started),
        };
        let status = response.status().as_u16();
        let mut read = Vec::new();
        let mut error = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.settings.max_response_bytes.saturating_sub(read.len());
                    read.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if read.len() >= self.settings.max_response_bytes {
                        break;
                    }
                }
                Ok(None) => break,
                // The status came; a body cut short (or too slow) does not change it.
                Err(e) => {
                    error = Some(crate::text::printable(&error_chain(&e.without_url()), 500));
                    break;
                }
            }
        }
        read.truncate(EXCERPT_BYTES);
        Answer {
            status: Some(status),
            error,
            excerpt: crate::text::printable(&String::from_utf8_lossy(&read), EXCERPT_BYTES),
            latency: started.elapsed(),
        }
    }

    /// Logs the attempt and moves the delivery and its endpoint on, in one transaction.
    async fn record(
        &self,
        c: &Claimed,
        attempt: i32,
        at: DateTime<Utc>,
        outcome: &str,
        answer: &Answer,
        delay: Duration,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, endpoint_id, attempt, at, status_code, latency_ms, outcome, \
               error, excerpt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(c.id)
        .bind(c.endpoint_id)
        .bind(attempt)
        .bind(at)
        .bind(answer.status.map(i32::from))
        .bind(answer.latency.as_millis().min(i32::MAX as u128) as i32)
        .bind(outcome)
        .bind(&answer.error)
        .bind(&answer.excerpt)
        .execute(&mut *tx)
        .await?;
        let (status, next) = match outcome {
            "delivered" => ("delivered", Duration::ZERO),
            "gave_up" => ("failed", Duration::ZERO),
            // Gone: due again as soon as the endpoint is enabled again.
            "gone" => ("pending", Duration::ZERO),
            _ => ("pending", delay),
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $2, attempts = $3, lease_until = NULL, \
               next_attempt_at = now() + $4, last_status = $5, last_error = $6, \
               delivered_at = CASE WHEN $2 = 'delivered' THEN now() END \
             WHERE id = $1",
        )
        .bind(c.id)
        .bind(status)
        .bind(attempt)
        .bind(chrono::Duration::from_std(next).unwrap_or_default())
        .bind(answer.status.map(i32::from))
        .bind(&answer.error)
        .execute(&mut *tx)
        .await?;
        if outcome == "delivered" {
            sqlx::query(
                "UPDATE webhook_endpoints SET consecutive_failures = 0 WHERE id = $1 AND consecutive_failures > 0",
            )
            .bind(c.endpoint_id)
            .execute(&mut *tx)
            .await?;
        } else if outcome == "gone" {
            let tenant: Option<String> = sqlx::query_scalar(
                "UPDATE webhook_endpoints SET enabled = false, updated_at = now(), updated_by = 'webhooks', \
                   disabled_reason = 'the endpoint answered 410 Gone at ' || to_char(now() AT TIME ZONE 'UTC', \
                   'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') WHERE id = $1 AND enabled RETURNING tenant",
            )
            .bind(c.endpoint_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(tenant) = tenant {
                let fields = serde_json::json!({"reason": "410 Gone", "delivery": c.id});
                super::record(&mut tx, c.endpoint_id, &tenant, "webhooks", "WebhookEndpointDisabled", fields).await?;
            }
            tracing::warn!(endpoint = %c.endpoint_id, "webhook endpoint answered 410 Gone: disabled");
            crate::metrics::WEBHOOK_ENDPOINTS_DISABLED.inc();
        } else {
            let paused: Option<(bool, String)> = sqlx::query_as(
                "UPDATE webhook_endpoints SET consecutive_failures = consecutive_failures + 1, \
                   paused_at = CASE WHEN $2 > 0 AND paused_at IS NULL AND consecutive_failures + 1 >= $2 \
                     THEN now() ELSE paused_at END \
                 WHERE id = $1 RETURNING paused_at IS NOT NULL AND consecutive_failures = $2, tenant",
            )
            .bind(c.endpoint_id)
            .bind(self.settings.pause_after as i32)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((true, tenant)) = paused {
                let fields = serde_json::json!({"failures": self.settings.pause_after, "delivery": c.id});
                super::record(&mut tx, c.endpoint_id, &tenant, "webhooks", "WebhookEndpointPaused", fields).await?;
                tracing::warn!(endpoint = %c.endpoint_id, failures = self.settings.pause_after,
                    "webhook endpoint paused after failing attempt after attempt");
                crate::metrics::WEBHOOK_PAUSES.inc();
            }
        }
        tx.commit().await
    }

    /// Deletes up to 5000 delivered or given-up deliveries older than
    /// `webhooks.keep_log` (their attempts go with them).
    async fn prune(&self) -> Result<(), sqlx::Error> {
        if self.settings.keep_log.is_zero() {
            return Ok(());
        }
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
               WHERE status <> 'pending' AND occurred_at < now() - $1 LIMIT 5000 FOR UPDATE SKIP LOCKED)",
        )
        .bind(chrono::Duration::from_std(self.settings.keep_log).unwrap_or(chrono::Duration::MAX))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            tracing::info!(deleted = done.rows_affected(), "webhook delivery log pruned");
        }
        Ok(())
    }

    /// Paused endpoints, and deliveries due to endpoints that are sent to (what waits for
    /// a paused or disabled endpoint is not a backlog), for the gauges (the same on every
    /// instance: alert on their maximum).
    async fn refresh_gauges(&self) -> Result<(), sqlx::Error> {
        let (paused, due): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_endpoints WHERE paused_at IS NOT NULL AND enabled), \
                    (SELECT count(*) FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id \
                      WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled AND e.paused_at IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        crate::metrics::WEBHOOK_ENDPOINTS_PAUSED.set(paused);
        crate::metrics::WEBHOOK_DUE.set(due);
        Ok(())
    }
}

/// An error with its causes, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
