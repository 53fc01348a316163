//! The suppression list: recipients not attempted again, per tenant.
//!
//! The sender adds an address when its server refused it for good (a 5xx at `RCPT TO`,
//! or after the message when it was the only recipient); operators add and remove
//! addresses by hand. Each change is an event of aggregate `Suppression` (id
//! `<tenant>/<address>`: `SuppressionAdded`, `SuppressionRemoved`, with who and why),
//! appended in the transaction that changes the `suppressions` table, so the list and
//! its history never disagree, and the events projection publishes them on
//! `<namespace>.events.suppression_added` / `…_removed`. An email to a suppressed
//! recipient records `Suppressed` for that recipient instead of an attempt.
//!
//! Addresses are kept and compared in lower case.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::records;

/// The aggregate type of suppression events.
pub const AGGREGATE: &str = "Suppression";

/// Longest reason kept, in characters.
const MAX_REASON: usize = 500;

/// One suppressed recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Suppression {
    /// The tenant whose mail it stops.
    pub tenant: String,
    /// The address, in lower case.
    pub address: String,
    /// Its domain.
    pub domain: String,
    /// Why: the server's refusal, or what the operator said.
    pub reason: String,
    /// The SMTP code of the refusal, when it came from one.
    pub code: Option<i32>,
    /// `bounce` (a permanent refusal) or `manual`.
    pub source: String,
    /// The email whose refusal added it.
    pub email_id: Option<Uuid>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// Who added it (a key's name, `cli:<user>`, or `saga:<worker>`).
    pub created_by: String,
}

/// Which suppressions to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this tenant's (`None`: every tenant — admins only).
    pub tenant: Option<String>,
    /// Only addresses at this domain.
    pub domain: Option<String>,
    /// Only reasons containing this text (case-insensitive).
    pub reason_like: Option<String>,
    /// Only those added at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only `bounce` or `manual`.
    pub source: Option<String>,
}

/// Where a page starts: after this (created_at, tenant, address), newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The last row's creation time.
    pub created_at: DateTime<Utc>,
    /// Its tenant.
    pub tenant: String,
    /// Its address.
    pub address: String,
}

impl Cursor {
    /// The opaque form given to clients.
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Reads a cursor given back by a client.
    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn after(s: &Suppression) -> Self {
        Self { created_at: s.created_at, tenant: s.tenant.clone(), address: s.address.clone() }
    }
}

/// A change asked for by someone.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The address (any case).
    pub address: &'a str,
    /// Why.
    pub reason: &'a str,
    /// Who (recorded with the event).
    pub by: &'a str,
    /// The event's metadata (actor, key, request id…).
    pub metadata: HashMap<String, String>,
}

/// A bounce seen by the sender.
#[derive(Debug, Clone)]
pub struct Bounce {
    /// The code of the refusal.
    pub code: Option<u16>,
    /// The email it came from.
    pub email_id: Uuid,
}

/// Why an address cannot go on (or off) the list.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    /// A field cannot be used: the address is not an address, the reason is missing,
    /// too long or holds control characters.
    #[error("{field}: {reason}")]
    Invalid {
        /// `address` or `reason`.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// The address in the form the list keeps, or why it is not one.
pub fn normalise(address: &str) -> Result<String, SuppressionError> {
    let address = address.trim();
    let parsed = crate::command::EmailAddress::parse(address).map_err(|e| SuppressionError::Invalid {
        field: "address",
        reason: format!("{}: {e}", crate::text::echo(address)),
    })?;
    Ok(parsed.to_string().to_lowercase())
}

fn domain(address: &str) -> String {
    address.rsplit_once('@').map(|(_, d)| d.to_owned()).unwrap_or_default()
}

/// A reason as given by a person: required, at most [`MAX_REASON`] characters, no
/// control characters. (A server's refusal is cut and cleaned instead: it is not
/// anybody's to mend.)
fn checked_reason(reason: &str) -> Result<String, SuppressionError> {
    let invalid = |why: &str| SuppressionError::Invalid { field: "reason", reason: why.to_owned() };
    if reason.trim().is_empty() {
        return Err(invalid("say why (it is recorded with the change)"));
    }
    if reason.chars().count() > MAX_REASON {
        return Err(invalid(&format!("is longer than {MAX_REASON} characters")));
    }
    if reason.chars().any(char::is_control) {
        return Err(invalid("contains a control character"));
    }
    Ok(reason.to_owned())
}

/// Adds `change.address` for `change.tenant`: `Ok(false)` when it was there already
/// (nothing recorded). `bounce` says it came from the sender.
pub async fn add(pool: &PgPool, change: Change<'_>, bounce: Option<Bounce>) -> Result<bool, SuppressionError> {
    let address = normalise(change.address)?;
    let reason = match bounce {
        Some(_) => crate::text::printable(change.reason, MAX_REASON),
        None => checked_reason(change.reason)?,
    };
    let source = if bounce.is_some() { "bounce" } else { "manual" };
    let code = bounce.as_ref().and_then(|b| b.code).map(i32::from);
    let email_id = bounce.as_ref().map(|b| b.email_id);
    let mut tx = pool.begin().await?;
    let added: Option<DateTime<Utc>> = sqlx::query_scalar(
        "INSERT INTO suppressions (tenant, address, domain, reason, code, source, email_id, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8) ON CONFLICT DO NOTHING RETURNING created_at",
    )
    .bind(change.tenant)
    .bind(&address)
    .bind(domain(&address))
    .bind(&reason)
    .bind(code)
    .bind(source)
    .bind(email_id)
    .bind(change.by)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(at) = added else {
        return Ok(false);
    };
    let fields = serde_json::json!({
        "tenant": change.tenant, "address": address, "reason": reason, "code": code,
        "source": source, "email_id": email_id, "by": change.by, "at": at,
    });
    record(&mut tx, &change, &address, "SuppressionAdded", fields).await?;
    tx.commit().await?;
    crate::metrics::SUPPRESSIONS.with_label_values(&["added", source]).inc();
    Ok(true)
}

/// Removes `change.address` from `change.tenant`'s list: `Ok(false)` when it was not
/// on it (nothing recorded).
pub async fn remove(pool: &PgPool, change: Change<'_>) -> Result<bool, SuppressionError> {
    let address = normalise(change.address)?;
    let reason = checked_reason(change.reason)?;
    let mut tx = pool.begin().await?;
    let removed: Option<String> =
        sqlx::query_scalar("DELETE FROM suppressions WHERE tenant = $1 AND address = $2 RETURNING reason")
            .bind(change.tenant)
            .bind(&address)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(was) = removed else {
        return Ok(false);
    };
    let fields = serde_json::json!({
        "tenant": change.tenant, "address": address, "reason": reason, "was": was,
        "by": change.by, "at": crate::store::now(),
    });
    record(&mut tx, &change, &address, "SuppressionRemoved", fields).await?;
    tx.commit().await?;
    crate::metrics::SUPPRESSIONS.with_label_values(&["removed", "manual"]).inc();
    Ok(true)
}

/// Appends the event of a change (`{kind: fields}`) in the change's transaction.
async fn record(
    tx: &mut sqlx::PgConnection,
    change: &Change<'_>,
    address: &str,
    kind: &str,
    fields: serde_json::Value,
) -> Result<i64, sqlx::Error> {
    let payload = serde_json::json!({ kind: fields });
    let metadata = serde_json::to_value(&change.metadata).unwrap_or_default();
    records::append(tx, AGGREGATE, &format!("{}/{address}", change.tenant), kind, &payload, &metadata).await
}

/// One page of the list, newest first, after `cursor`; and the cursor of the next page
/// when there is one.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<Suppression>, Option<Cursor>), sqlx::Error> {
    let like = filter
        .reason_like
        .as_ref()
        .map(|r| format!("%{}%", r.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let rows: Vec<Suppression> = sqlx::query_as(
        "SELECT tenant, address, domain, reason, code, source, email_id, created_at, created_by FROM suppressions \
         WHERE ($1::text IS NULL OR tenant = $1) AND ($2::text IS NULL OR domain = lower($2)) \
           AND ($3::text IS NULL OR reason ILIKE $3) AND ($4::timestamptz IS NULL OR created_at >= $4) \
           AND ($5::text IS NULL OR source = $5) \
           AND ($6::timestamptz IS NULL OR (created_at, tenant, address) < ($6, $7, $8)) \
         ORDER BY created_at DESC, tenant DESC, address DESC LIMIT $9",
    )
    .bind(filter.tenant.as_deref())
    .bind(filter.domain.as_deref())
    .bind(like)
    .bind(filter.since)
    .bind(filter.source.as_deref())
    .bind(cursor.map(|c| c.created_at))
    .bind(cursor.map(|c| c.tenant.as_str()))
    .bind(cursor.map(|c| c.address.as_str()))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let mut rows = rows;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(Cursor::after)
    } else {
        None
    };
    Ok((rows, next))
}

/// One suppression, when `address` is on `tenant`'s list.
pub async fn get(pool: &PgPool, tenant: &str, address: &str) -> Result<Option<Suppression>, SuppressionError> {
    let address = normalise(address)?;
    Ok(sqlx::query_as(
        "SELECT tenant, address, domain, reason, code, source, email_id, created_at, created_by FROM suppressions \
         WHERE tenant = $1 AND address = $2",
    )
    .bind(tenant)
    .bind(address)
    .fetch_optional(pool)
    .await?)
}

/// Every suppression `filter` selects, newest first, as CSV (header first) or NDJSON
/// chunks: a page of 1,000 rows at a time, so an export of any size holds one page.
pub fn export(
    pool: PgPool,
    filter: Filter,
    csv: bool,
) -> impl futures::Stream<Item = Result<bytes::Bytes, sqlx::Error>> + Send + 'static {
    enum At {
        Start,
        After(Cursor),
        Done,
    }
    futures::stream::try_unfold(At::Start, move |at| {
        let (pool, filter) = (pool.clone(), filter.clone());
        async move {
            let cursor = match at {
                At::Done => return Ok(None),
                At::Start => None,
                At::After(c) => Some(c),
            };
            let (rows, next) = list(&pool, &filter, cursor.as_ref(), 1000).await?;
            let mut chunk = String::new();
            if csv && cursor.is_none() {
                chunk.push_str(CSV_HEADER);
            }
            for row in &rows {
                if csv {
                    chunk.push_str(&csv_row(row));
                } else {
                    chunk.push_str(&serde_json::to_string(row).unwrap_or_default());
                    chunk.push('\n');
                }
            }
            let at = next.map_or(At::Done, At::After);
            Ok(Some((bytes::Bytes::from(chunk), at)))
        }
    })
}

/// Which of `wanted` (tenant, lower-case address) are suppressed, with the reason.
pub async fn lookup(
    pool: &PgPool,
    wanted: &HashSet<(String, String)>,
) -> Result<HashMap<(String, String), String>, sqlx::Error> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, addresses): (Vec<&str>, Vec<&str>) = wanted.iter().map(|(t, a)| (t.as_str(), a.as_str())).unzip();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT s.tenant, s.address, s.reason FROM suppressions s \
         JOIN UNNEST($1::text[], $2::text[]) AS w(tenant, address) ON s.tenant = w.tenant AND s.address = w.address",
    )
    .bind(tenants)
    .bind(addresses)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t, a, r)| ((t, a), r)).collect())
}

/// The CSV header of an export.
pub const CSV_HEADER: &str = "tenant,address,domain,reason,code,source,email_id,created_at,created_by\n";

/// One row of a CSV export (RFC 4180 quoting; a cell a spreadsheet would run as a
/// formula is prefixed with `'`).
pub fn csv_row(s: &Suppression) -> String {
    let cell = |v: &str| {
        let v = if v.starts_with(['=', '+', '-', '@']) { format!("'{v}") } else { v.to_owned() };
        if v.contains([',', '"', '\n', '\r']) { format!("\"{}\"", v.replace('"', "\"\"")) } else { v }
    };
    [
        cell(&s.tenant),
        cell(&s.address),
        cell(&s.domain),
        cell(&s.reason),
        s.code.map(|c| c.to_string()).unwrap_or_default(),
        cell(&s.source),
        s.email_id.map(|i| i.to_string()).unwrap_or_default(),
        s.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        cell(&s.created_by),
    ]
    .join(",")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_kept_in_lower_case_and_checked() {
        assert_eq!(normalise(" Ann@Example.ORG ").unwrap(), "ann@example.org");
        assert!(normalise("not an address").is_err());
    }

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        let s = Suppression {
            tenant: "acme".into(),
            address: "a@x.org".into(),
            domain: "x.org".into(),
            reason: "=HYPERLINK(\"x\"), said \"no\"".into(),
            code: Some(550),
            source: "bounce".into(),
            email_id: None,
            created_at: "2026-11-27T10:00:00Z".parse().unwrap(),
            created_by: "saga:s1".into(),
        };
        assert_eq!(
            csv_row(&s),
            "acme,a@x.org,x.org,\"'=HYPERLINK(\"\"x\"\"), said \"\"no\"\"\",550,bounce,,2026-11-27T10:00:00.000Z,saga:s1\n"
        );
    }
}
