//! Signed status webhooks: a tenant registers endpoints (URL, event kinds, a secret shown
//! once), and hears of its emails' outcomes — `sent`, `failed`, `dead_lettered`,
//! `suppressed` — as signed `POST`s.
//!
//! - [`projection`]: the `webhooks` projection (transactional) queues one
//!   `webhook_deliveries` row per endpoint and event, in the transaction of its
//!   checkpoint: nothing is lost or queued twice.
//! - [`dispatch`]: the dispatcher claims due rows (SKIP LOCKED, leased), in sequence
//!   order per email and endpoint, a bounded number per endpoint so one slow endpoint
//!   never holds up another; retries with back-off for `webhooks.retry_for`; 410
//!   disables an endpoint; one failing attempt after attempt is paused and alerted on.
//! - [`sign`]: `Mailledger-Signature: t=…,v1=…[,v1=…]`, HMAC-SHA256.
//! - [`guard`]: the SSRF guard (http/https only, public addresses only unless
//!   `webhooks.allow_private`), checked on registration and in the client's resolver.
//!
//! This module owns the `webhook_*` tables.

pub mod dispatch;
pub mod guard;
pub mod projection;
pub mod sealed;
pub mod sign;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// The event kinds an endpoint can hear, as they appear in `type`.
pub const KINDS: [&str; 4] = ["sent", "failed", "dead_lettered", "suppressed"];

/// The aggregate type of endpoint events (`WebhookEndpointRegistered`, `…Changed`,
/// `WebhookSecretRotated`, `WebhookEndpointDeleted`, and mailledger's own
/// `WebhookEndpointDisabled` on a 410 and `WebhookEndpointPaused`): who could hear a
/// tenant's outcomes, where, and since when, in the store and the proof log. Never a
/// secret.
pub const AGGREGATE: &str = "WebhookEndpoint";

/// Appends an endpoint's event (`{kind: fields}`, stamped with the time) in `tx`.
pub(crate) async fn record(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    tenant: &str,
    by: &str,
    kind: &str,
    mut fields: serde_json::Value,
) -> Result<i64, sqlx::Error> {
    if let Some(f) = fields.as_object_mut() {
        f.insert("tenant".into(), serde_json::json!(tenant));
        f.insert("by".into(), serde_json::json!(by));
        f.insert("at".into(), serde_json::json!(crate::store::now()));
    }
    let payload = serde_json::json!({ kind: fields });
    let metadata = serde_json::json!({"actor": by, "tenant": tenant});
    crate::store::records::append(tx, AGGREGATE, &id.to_string(), kind, &payload, &metadata).await
}

/// Endpoints one tenant may have.
pub const MAX_ENDPOINTS: i64 = 50;

/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 200;

/// A registered endpoint, as it is shown: never with its secret.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Endpoint {
    /// Its id.
    pub id: Uuid,
    /// The tenant whose events it hears.
    pub tenant: String,
    /// Where deliveries are `POST`ed.
    pub url: String,
    /// The kinds it hears (`sent`, `failed`, `dead_lettered`, `suppressed`).
    pub kinds: Vec<String>,
    /// Free text.
    pub description: String,
    /// Whether events are queued and sent to it.
    pub enabled: bool,
    /// When it was paused for failing `webhooks.pause_after` attempts in a row (resume
    /// it with `enabled: true`).
    pub paused_at: Option<DateTime<Utc>>,
    /// Why mailledger disabled it (it answered 410 Gone).
    pub disabled_reason: Option<String>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
    /// Who registered it.
    pub created_by: String,
    /// When it was last changed.
    pub updated_at: DateTime<Utc>,
    /// Who changed it last.
    pub updated_by: String,
}

const COLUMNS: &str = "id, tenant, url, kinds, description, enabled, paused_at, disabled_reason, \
     consecutive_failures, CASE WHEN previous_until > now() THEN previous_until END AS previous_secret_until, \
     created_at, created_by, updated_at, updated_by";

/// What a registration says.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `https://…` (or `http://…`).
    pub url: Option<String>,
    /// The kinds to hear; each of `sent`, `failed`, `dead_lettered`, `suppressed`.
    pub kinds: Option<Vec<String>>,
    /// Free text (200 characters at most).
    #[serde(default)]
    pub description: Option<String>,
    /// On at once (the default) or not.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The tenant (admin keys only; others register in their own).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A change to an endpoint; what is absent stays.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointChange {
    /// A new URL.
    pub url: Option<String>,
    /// New kinds.
    pub kinds: Option<Vec<String>>,
    /// A new description.
    pub description: Option<String>,
    /// `true` also resumes a paused endpoint and one disabled by a 410 (and sends what
    /// waited); `false` stops queueing and sending.
    pub enabled: Option<bool>,
}

/// Why a webhook request failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A field that does not validate (422).
    #[error("{field}: {reason}")]
    Invalid {
        /// Which.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The tenant has an endpoint with this URL already, or too many (409).
    #[error("{0}")]
    Conflict(String),
    /// No such endpoint in the caller's view (404).
    #[error("no webhook endpoint {0}")]
    NotFound(Uuid),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The secret could not be sealed (the key file went away, say).
    #[error("{0}")]
    Sealing(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WebhookError {
    WebhookError::Invalid { field, reason: reason.into() }
}

/// What to store for a new secret of endpoint `id` (sealed when a key is set).
fn seal(settings: &crate::config::WebhookSettings, id: Uuid, secret: &str) -> Result<String, WebhookError> {
    let sealer = sealed::SecretBox::load(settings.encryption_key.as_deref())
        .map_err(|e| WebhookError::Sealing(format!("{e:#}")))?;
    sealer.seal(id, secret).map_err(|e| WebhookError::Sealing(format!("{e:#}")))
}

/// Checks a URL's form and (unless `allow_private`) that its host resolves only to
/// public addresses.
pub async fn check_url(text: &str, allow_private: bool) -> Result<String, WebhookError> {
    let url = guard::parse(text).map_err(|e| invalid("url", e.to_string()))?;
    guard::check_url(&url, allow_private).await.map_err(|e| invalid("url", e.to_string()))?;
    Ok(url.to_string())
}

/// The kinds, checked, without repeats, in [`KINDS`] order.
pub fn check_kinds(kinds: &[String]) -> Result<Vec<String>, WebhookError> {
    if kinds.is_empty() {
        return Err(invalid("kinds", format!("give at least one of {}", KINDS.join(", "))));
    }
    if let Some(bad) = kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
        return Err(invalid("kinds", format!("{} is not one of {}", crate::text::echo(bad), KINDS.join(", "))));
    }
    Ok(KINDS.iter().filter(|k| kinds.iter().any(|g| g == *k)).map(|k| (*k).to_owned()).collect())
}

fn check_description(text: &str) -> Result<String, WebhookError> {
    if text.chars().count() > MAX_DESCRIPTION {
        return Err(invalid("description", format!("is longer than {MAX_DESCRIPTION} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid("description", "contains control characters"));
    }
    Ok(text.to_owned())
}

/// Registers an endpoint in `tenant`; returns it and its secret (the only time the
/// secret is shown).
pub async fn create(
    pool: &PgPool,
    tenant: &str,
    new: &NewEndpoint,
    by: &str,
    settings: &crate::config::WebhookSettings,
) -> Result<(Endpoint, String), WebhookError> {
    let url = match new.url.as_deref() {
        Some(u) if !u.is_empty() => check_url(u, settings.allow_private).await?,
        _ => return Err(invalid("url", "is required")),
    };
    let kinds = check_kinds(new.kinds.as_deref().ok_or_else(|| invalid("kinds", "is required"))?)?;
    let description = check_description(new.description.as_deref().unwrap_or_default())?;
    let secret = sign::new_secret();
    let id = Uuid::now_v7();
    let stored = seal(settings, id, &secret)?;
    let mut tx = pool.begin().await?;
    // One registration at a time per tenant, so the count below holds.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('webhooks:' || $1))").bind(tenant).execute(&mut *tx).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE tenant = $1")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_ENDPOINTS {
        return Err(WebhookError::Conflict(format!("tenant {tenant} has {MAX_ENDPOINTS} endpoints, the most it may")));
    }
    let now = crate::store::now();
    let row: Option<Endpoint> = sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (id, tenant, url, kinds, description, enabled, secret, created_at, created_by, \
           updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $8, $9) \
         ON CONFLICT (tenant, url) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(&url)
    .bind(&kinds)
    .bind(&description)
    .bind(new.enabled.unwrap_or(true))
    .bind(&stored)
    .bind(now)
    .bind(by)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(WebhookError::Conflict(format!("tenant {tenant} has an endpoint for this URL already")));
    };
    let fields = serde_json::json!({"url": row.url, "kinds": row.kinds, "description": row.description,
        "enabled": row.enabled});
    record(&mut tx, row.id, tenant, by, "WebhookEndpointRegistered", fields).await?;
    tx.commit().await?;
    tracing::info!(endpoint = %row.id, tenant, by, "webhook endpoint registered");
    Ok((row, secret))
}

/// Endpoints of `tenant` (every tenant's for `None`), oldest first.
pub async fn list(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<Endpoint>, WebhookError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at, id"
    ))
    .bind(tenant)
    .fetch_all(pool)
    .await?)
}

/// One endpoint, if it exists and `tenant` (when given) is its tenant.
pub async fn get(pool: &PgPool, id: Uuid, tenant: Option<&str>) -> Result<Endpoint, WebhookError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await?
    .ok_or(WebhookError::NotFound(id))
}

/// Changes an endpoint. Enabling it clears a pause and a 410's disabling, and makes
/// what waited for it due now.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    tenant: Option<&str>,
    change: &EndpointChange,
    by: &str,
    allow_private: bool,
) -> Result<Endpoint, WebhookError> {
    let url = match change.url.as_deref() {
        Some(u) => Some(check_url(u, allow_private).await?),
        None => None,
    };
    let kinds = change.kinds.as_deref().map(check_kinds).transpose()?;
    let description = change.description.as_deref().map(check_description).transpose()?;
    let mut tx = pool.begin().await?;
    let row: Option<Endpoint> = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET url = coalesce($3, url), kinds = coalesce($4, kinds), \
           description = coalesce($5, description), enabled = coalesce($6, enabled), \
           paused_at = CASE WHEN $6 THEN NULL ELSE paused_at END, \
           disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
           consecutive_failures = CASE WHEN $6 THEN 0 ELSE consecutive_failures END, \
           updated_at = now(), updated_by = $7 \
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(&url)
    .bind(&kinds)
    .bind(&description)
    .bind(change.enabled)
    .bind(by)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            WebhookError::Conflict("the tenant has an endpoint for this URL already".into())
        }
        e => e.into(),
    })?;
    let row = row.ok_or(WebhookError::NotFound(id))?;
    let fields = serde_json::json!({"url": url, "kinds": kinds, "description": description,
        "enabled": change.enabled});
    record(&mut tx, id, &row.tenant, by, "WebhookEndpointChanged", fields).await?;
    if change.enabled == Some(true) {
        sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE endpoint_id = $1 AND status = 'pending' \
             AND next_attempt_at > now()",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(endpoint = %id, by, enabled = ?change.enabled, "webhook endpoint changed");
    Ok(row)
}

/// Removes an endpoint and its delivery log.
pub async fn delete(pool: &PgPool, id: Uuid, tenant: Option<&str>, by: &str) -> Result<(), WebhookError> {
    let mut tx = pool.begin().await?;
    let gone: Option<(String, String)> = sqlx::query_as(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING tenant, url",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let (tenant, url) = gone.ok_or(WebhookError::NotFound(id))?;
    record(&mut tx, id, &tenant, by, "WebhookEndpointDeleted", serde_json::json!({"url": url})).await?;
    tx.commit().await?;
    tracing::info!(endpoint = %id, by, "webhook endpoint deleted");
    Ok(())
}

/// Gives an endpoint a new secret (returned: the only time it is shown); the current
/// one goes on signing too for `grace`.
pub async fn rotate(
    pool: &PgPool,
    id: Uuid,
    tenant: Option<&str>,
    grace: Duration,
    by: &str,
    settings: &crate::config::WebhookSettings,
) -> Result<(Endpoint, String), WebhookError> {
    let secret = sign::new_secret();
    let stored = seal(settings, id, &secret)?;
    let until = crate::store::now() + chrono::Duration::from_std(grace).map_err(|e| invalid("grace", e.to_string()))?;
    let mut tx = pool.begin().await?;
    let row: Option<Endpoint> = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $3, secret = $4, \
           updated_at = now(), updated_by = $5 \
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(until)
    .bind(&stored)
    .bind(by)
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or(WebhookError::NotFound(id))?;
    record(&mut tx, id, &row.tenant, by, "WebhookSecretRotated", serde_json::json!({"previous_valid_until": until}))
        .await?;
    tx.commit().await?;
    tracing::info!(endpoint = %id, by, "webhook secret rotated");
    Ok((row, secret))
}

/// One attempt at a delivery.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Attempt {
    /// 1, 2, …
    pub attempt: i32,
    /// When it started.
    pub at: DateTime<Utc>,
    /// The answer's status; absent when there was none.
    pub status_code: Option<i32>,
    /// How long it took.
    pub latency_ms: i32,
    /// `delivered`, `retry`, `gone` (410: the endpoint was disabled) or `gave_up`.
    pub outcome: String,
    /// Why there was no usable answer (timeout, refused, …).
    pub error: Option<String>,
    /// The answer's first 1 KiB.
    pub excerpt: String,
}

/// One event for one endpoint, with its attempts.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Delivery {
    /// Its id (give it to replay this one).
    pub id: i64,
    /// The event's id (the body's `id`: the same on every attempt and replay).
    pub event_id: String,
    /// The email.
    pub email_id: Uuid,
    /// `sent`, `failed`, `dead_lettered` or `suppressed`.
    pub kind: String,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// `pending`, `delivered` or `failed` (given up).
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first (the last 20).
    #[sqlx(skip)]
    pub log: Vec<Attempt>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// Only events at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only events before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only those with an id below this (the page before's last id).
    pub before: Option<i64>,
}

/// Deliveries of an endpoint, newest first, with their attempts.
pub async fn deliveries(
    pool: &PgPool,
    endpoint: Uuid,
    filter: &LogFilter,
    limit: i64,
) -> Result<Vec<Delivery>, WebhookError> {
    let mut rows: Vec<Delivery> = sqlx::query_as(
        "SELECT id, event_id, email_id, kind, occurred_at, status, attempts, \
           CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, delivered_at \
         FROM webhook_deliveries WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2) \
           AND ($3::timestamptz IS NULL OR occurred_at >= $3) AND ($4::timestamptz IS NULL OR occurred_at < $4) \
           AND ($5::bigint IS NULL OR id < $5) ORDER BY id DESC LIMIT $6",
    )
    .bind(endpoint)
    .bind(&filter.status)
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let attempts: Vec<(i64, Attempt)> = sqlx::query_as::<_, AttemptRow>(
        "SELECT delivery_id, attempt, at, status_code, latency_ms, outcome, error, excerpt FROM \
           (SELECT *, row_number() OVER (PARTITION BY delivery_id ORDER BY id DESC) AS n \
            FROM webhook_attempts WHERE delivery_id = ANY($1)) a WHERE n <= 20 ORDER BY delivery_id, id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|r| {
        let AttemptRow { delivery_id, attempt, at, status_code, latency_ms, outcome, error, excerpt } = r;
        (delivery_id, Attempt { attempt, at, status_code, latency_ms, outcome, error, excerpt })
    })
    .collect();
    for row in &mut rows {
        row.log = attempts.iter().filter(|(d, _)| *d == row.id).map(|(_, a)| a.clone()).collect();
    }
    Ok(rows)
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: i64,
    attempt: i32,
    at: DateTime<Utc>,
    status_code: Option<i32>,
    latency_ms: i32,
    outcome: String,
    error: Option<String>,
    excerpt: String,
}

/// What to send again.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// One delivery, by id.
    pub delivery_id: Option<i64>,
    /// Every delivery of an event at or after this instant…
    pub since: Option<DateTime<Utc>>,
    /// …and before this one (default: now).
    pub until: Option<DateTime<Utc>>,
}

/// Queues the deliveries `replay` names again (same body and event id, newly signed),
/// with a fresh `retry_for`; those being sent right now are left alone. Returns how
/// many were queued.
pub async fn replay(pool: &PgPool, endpoint: Uuid, replay: &Replay) -> Result<u64, WebhookError> {
    if replay.delivery_id.is_none() && replay.since.is_none() {
        return Err(invalid("since", "give delivery_id, or since (and until)"));
    }
    if let (Some(s), Some(u)) = (replay.since, replay.until)
        && u <= s
    {
        return Err(invalid("until", "must be after since"));
    }
    let done = sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', queued_at = now(), next_attempt_at = now(), \
           lease_until = NULL, delivered_at = NULL \
         WHERE endpoint_id = $1 AND ($2::bigint IS NULL OR id = $2) \
           AND ($3::timestamptz IS NULL OR occurred_at >= $3) AND ($4::timestamptz IS NULL OR occurred_at < $4) \
           AND NOT (status = 'pending' AND lease_until > now())",
    )
    .bind(endpoint)
    .bind(replay.delivery_id)
    .bind(replay.since)
    .bind(replay.until)
    .execute(pool)
    .await?;
    if replay.delivery_id.is_some() && done.rows_affected() == 0 {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 AND id = $2)")
                .bind(endpoint)
                .bind(replay.delivery_id)
                .fetch_one(pool)
                .await?;
        if !exists {
            return Err(invalid("delivery_id", "is not a delivery of this endpoint"));
        }
    }
    Ok(done.rows_affected())
}
