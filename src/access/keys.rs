//! API keys: making one (the secret is returned once and never stored), listing them
//! (never the secret), revoking one. Every change writes its `api_keys` row and an
//! event of aggregate type `ApiKey` in one transaction: `KeyCreated` (name, tenant,
//! scopes, domains, expiry, limits, the key's hash, who made it) and `KeyRevoked` (who,
//! when) — the ledger answers "who could send as finance@ on 3 March".

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Principal, Scopes, key};
use crate::store::records;

/// The aggregate type of key events.
pub const AGGREGATE: &str = "ApiKey";

/// Longest key name.
pub const MAX_NAME: usize = 128;

/// A key as it is stored (its hash, never the key).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Its id.
    pub id: Uuid,
    /// A name for people (and the metrics label).
    pub name: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// What it may do.
    pub scopes: Scopes,
    /// Domains it may send from; empty: any.
    pub from_domains: Vec<String>,
    /// SHA-256 of the key.
    pub hash: [u8; 32],
    /// Requests per second (None: the default).
    pub rate_per_s: Option<f64>,
    /// Burst (None: the default).
    pub burst: Option<u32>,
    /// Emails a day (None: the default).
    pub daily_quota: Option<i64>,
    /// When it was made, and by whom.
    pub created_at: DateTime<Utc>,
    /// Who made it.
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When it was last used (to about ten seconds).
    pub last_used_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// The principal a request presenting this key acts as.
    pub fn principal(&self) -> Principal {
        Principal {
            key_id: Some(self.id),
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            scopes: self.scopes,
            from_domains: self.from_domains.clone(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    tenant: String,
    scopes: Vec<String>,
    from_domains: Vec<String>,
    hash: Vec<u8>,
    rate_per_s: Option<f64>,
    burst: Option<i32>,
    daily_quota: Option<i64>,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
}

impl From<Row> for KeyRecord {
    fn from(r: Row) -> Self {
        let mut hash = [0u8; 32];
        if r.hash.len() == 32 {
            hash.copy_from_slice(&r.hash);
        }
        Self {
            id: r.id,
            name: r.name,
            tenant: r.tenant,
            // Stored scopes were parsed when the key was made.
            scopes: Scopes::parse(&r.scopes.join(",")).unwrap_or_default(),
            from_domains: r.from_domains,
            hash,
            rate_per_s: r.rate_per_s,
            burst: r.burst.and_then(|b| u32::try_from(b).ok()),
            daily_quota: r.daily_quota,
            created_at: r.created_at,
            created_by: r.created_by,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
            last_used_at: r.last_used_at,
        }
    }
}

const COLUMNS: &str = "id, name, tenant, scopes, from_domains, hash, rate_per_s, burst, daily_quota, created_at, \
     created_by, expires_at, revoked_at, revoked_by, last_used_at";

/// What a new key is to be.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// A name for people (1 to 128 printable characters).
    pub name: String,
    /// `send`, `read`, `redrive`, `admin`, comma-separated, or `all`.
    pub scopes: String,
    /// The tenant (default `default`).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Domains the key may send from; none: any.
    #[serde(default)]
    pub from_domains: Vec<String>,
    /// When it stops working (RFC 3339), or how long from now (`90d`, `12h`).
    #[serde(default)]
    pub expires: Option<String>,
    /// Requests per second (default: `auth.rate_per_second`).
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Burst (default: `auth.burst`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Emails a day (default: `auth.daily_quota`; 0: none).
    #[serde(default)]
    pub daily_quota: Option<i64>,
}

/// A key that cannot be made as asked, or cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The request names a field wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such key (in the caller's tenant).
    #[error("no key {0}")]
    NotFound(Uuid),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> KeyError {
    KeyError::Invalid { field, reason: reason.into() }
}

fn token(field: &'static str, text: &str, max: usize) -> Result<String, KeyError> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > max || t.chars().any(char::is_control) {
        return Err(invalid(field, format!("give 1 to {max} printable characters")));
    }
    Ok(t.to_owned())
}

fn expiry(raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, KeyError> {
    let raw = raw.trim();
    let at = match DateTime::parse_from_rfc3339(raw) {
        Ok(t) => t.to_utc(),
        Err(_) => {
            let d = humantime::parse_duration(raw).map_err(|_| {
                invalid("expires", "give an RFC 3339 time (2027-01-01T00:00:00Z) or a duration (90d, 12h)")
            })?;
            now + chrono::Duration::from_std(d).map_err(|_| invalid("expires", "is too far away"))?
        }
    };
    if at <= now {
        return Err(invalid("expires", "is in the past"));
    }
    Ok(at)
}

/// Makes a key; returns its record and the key itself (shown once, stored nowhere).
pub async fn create(pool: &PgPool, new: &NewKey, by: &Principal) -> Result<(KeyRecord, String), KeyError> {
    let name = token("name", &new.name, MAX_NAME)?;
    let scopes = Scopes::parse(&new.scopes).map_err(|e| invalid("scopes", e))?;
    let tenant = token("tenant", new.tenant.as_deref().unwrap_or(super::DEFAULT_TENANT), 64)?;
    if !tenant.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(invalid("tenant", "use letters, digits, '-', '_' and '.'"));
    }
    let mut from_domains = Vec::new();
    for d in &new.from_domains {
        let probe = format!("x@{}", d.trim());
        let address = crate::command::EmailAddress::parse(&probe)
            .map_err(|e| invalid("from_domains", format!("{}: {e}", crate::text::echo(d))))?;
        from_domains.push(address.domain().to_owned());
    }
    from_domains.sort();
    from_domains.dedup();
    if new.rate_per_second.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(invalid("rate_per_second", "must be more than 0"));
    }
    if new.burst == Some(0) {
        return Err(invalid("burst", "must be at least 1"));
    }
    if new.daily_quota.is_some_and(|q| q < 0) {
        return Err(invalid("daily_quota", "must be 0 (none) or more"));
    }
    let now = crate::store::now();
    let expires_at = new.expires.as_deref().map(|e| expiry(e, now)).transpose()?;
    let secret = key::generate();
    let record = KeyRecord {
        id: Uuid::now_v7(),
        name,
        tenant,
        scopes,
        from_domains,
        hash: key::hash(&secret),
        rate_per_s: new.rate_per_second,
        burst: new.burst,
        daily_quota: new.daily_quota,
        created_at: now,
        created_by: by.name.clone(),
        expires_at,
        revoked_at: None,
        revoked_by: None,
        last_used_at: None,
    };
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL, NULL)"
    ))
    .bind(record.id)
    .bind(&record.name)
    .bind(&record.tenant)
    .bind(record.scopes.names())
    .bind(&record.from_domains)
    .bind(&record.hash[..])
    .bind(record.rate_per_s)
    .bind(record.burst.map(|b| b as i32))
    .bind(record.daily_quota)
    .bind(record.created_at)
    .bind(&record.created_by)
    .bind(record.expires_at)
    .execute(&mut *tx)
    .await?;
    let payload = json!({"KeyCreated": {
        "key_id": record.id,
        "name": record.name,
        "tenant": record.tenant,
        "scopes": record.scopes.names(),
        "from_domains": record.from_domains,
        "expires_at": record.expires_at,
        "rate_per_second": record.rate_per_s,
        "burst": record.burst,
        "daily_quota": record.daily_quota,
        "sha256": hex::encode(record.hash),
        "created_at": record.created_at,
    }});
    records::append(&mut tx, AGGREGATE, &record.id.to_string(), "KeyCreated", &payload, &actor(by)).await?;
    tx.commit().await?;
    Ok((record, secret))
}

fn actor(by: &Principal) -> serde_json::Value {
    let mut metadata = std::collections::HashMap::new();
    by.stamp(&mut metadata);
    metadata.insert("transport".into(), if by.name.starts_with("cli:") { "cli" } else { "rest" }.into());
    serde_json::to_value(metadata).unwrap_or_default()
}

/// Revokes key `id` (in `by`'s tenant unless it is an admin); revoking twice is a no-op.
pub async fn revoke(pool: &PgPool, id: Uuid, by: &Principal) -> Result<KeyRecord, KeyError> {
    let mut tx = pool.begin().await?;
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let record = row.map(KeyRecord::from).filter(|r| by.sees(&r.tenant)).ok_or(KeyError::NotFound(id))?;
    if record.revoked_at.is_some() {
        return Ok(record);
    }
    let now = crate::store::now();
    sqlx::query("UPDATE api_keys SET revoked_at = $2, revoked_by = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(&by.name)
        .execute(&mut *tx)
        .await?;
    let payload = json!({"KeyRevoked": {"key_id": id, "revoked_at": now}});
    records::append(&mut tx, AGGREGATE, &id.to_string(), "KeyRevoked", &payload, &actor(by)).await?;
    tx.commit().await?;
    Ok(KeyRecord { revoked_at: Some(now), revoked_by: Some(by.name.clone()), ..record })
}

/// Every key `by` may see (its tenant's, or all for an admin), oldest first.
pub async fn list(pool: &PgPool, by: &Principal) -> Result<Vec<KeyRecord>, sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM api_keys"));
    if let Some(tenant) = by.tenant_filter() {
        q.push(" WHERE tenant = ").push_bind(tenant.to_owned());
    }
    q.push(" ORDER BY created_at, id");
    let rows: Vec<Row> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(KeyRecord::from).collect())
}

/// Every key, for the keyring.
pub(crate) async fn load_all(pool: &PgPool) -> Result<Vec<KeyRecord>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM api_keys")).fetch_all(pool).await?;
    Ok(rows.into_iter().map(KeyRecord::from).collect())
}

/// A value that changes whenever a key is made or revoked (cheap to ask every second).
pub(crate) async fn generation(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), sqlx::Error> {
    sqlx::query_as("SELECT count(*), max(greatest(created_at, revoked_at)) FROM api_keys").fetch_one(pool).await
}

/// Records when keys were last used.
pub(crate) async fn touch(pool: &PgPool, used: &[(Uuid, DateTime<Utc>)]) -> Result<(), sqlx::Error> {
    if used.is_empty() {
        return Ok(());
    }
    let (ids, at): (Vec<Uuid>, Vec<DateTime<Utc>>) = used.iter().copied().unzip();
    sqlx::query(
        "UPDATE api_keys k SET last_used_at = u.at FROM UNNEST($1::uuid[], $2::timestamptz[]) AS u(id, at) \
         WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
    )
    .bind(ids)
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds today's sends per key and returns each key's total for today.
pub(crate) async fn count_sends(
    pool: &PgPool,
    day: chrono::NaiveDate,
    sends: &[(Uuid, i64)],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let (ids, n): (Vec<Uuid>, Vec<i64>) = sends.iter().copied().unzip();
    sqlx::query_as(
        "INSERT INTO api_key_usage (key_id, day, sends) SELECT id, $1, n FROM UNNEST($2::uuid[], $3::bigint[]) AS u(id, n) \
         ON CONFLICT (key_id, day) DO UPDATE SET sends = api_key_usage.sends + EXCLUDED.sends \
         RETURNING key_id, sends",
    )
    .bind(day)
    .bind(ids)
    .bind(n)
    .fetch_all(pool)
    .await
}

/// Today's sends per key, as stored.
pub(crate) async fn sends_today(pool: &PgPool, day: chrono::NaiveDate) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT key_id, sends FROM api_key_usage WHERE day = $1").bind(day).fetch_all(pool).await
}

/// How a key is shown: never its secret or hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<&'static str>,
    /// Domains it may send from (empty: any).
    pub from_domains: Vec<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who made it.
    pub created_by: String,
    /// When it was last used (to about ten seconds).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Requests per second, when not the default.
    pub rate_per_second: Option<f64>,
    /// Burst, when not the default.
    pub burst: Option<u32>,
    /// Emails a day, when not the default.
    pub daily_quota: Option<i64>,
}

impl From<&KeyRecord> for KeyView {
    fn from(r: &KeyRecord) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            tenant: r.tenant.clone(),
            scopes: r.scopes.names(),
            from_domains: r.from_domains.clone(),
            created_at: r.created_at,
            created_by: r.created_by.clone(),
            last_used_at: r.last_used_at,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by.clone(),
            rate_per_second: r.rate_per_s,
            burst: r.burst,
            daily_quota: r.daily_quota,
        }
    }
}
