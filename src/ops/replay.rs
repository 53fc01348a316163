//! `mailledger replay`: events in commit order as NDJSON, one object per line:
//! `{"email_id","sequence","position","type","version","recorded_at","payload","metadata"}`.
//!
//! Rows stream from a server-side cursor and each line is written straight from the
//! stored JSON text, so memory stays flat whatever the size of the store.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use crate::projections::reproject::Progress;

/// Which events to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Recorded before.
    pub until: Option<DateTime<Utc>>,
    /// Only this email.
    pub email: Option<Uuid>,
    /// Only this event type (`Sent`, `sent` or `dead_lettered` all work).
    pub kind: Option<String>,
}

/// `dead_lettered` → `DeadLettered`; `Sent` stays `Sent`.
pub fn event_type_name(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

fn filtered<'a>(q: &mut QueryBuilder<'a, Postgres>, f: &'a Filter) {
    // Every aggregate in the store is an Email; no filter on the type, which would steer
    // the planner off the (txid, position) index.
    q.push(" WHERE true");
    if let Some(since) = f.since {
        q.push(" AND recorded_at >= ").push_bind(since);
    }
    if let Some(until) = f.until {
        q.push(" AND recorded_at < ").push_bind(until);
    }
    if let Some(email) = f.email {
        q.push(" AND aggregate_id = ").push_bind(email.to_string());
    }
    if let Some(kind) = &f.kind {
        q.push(" AND event_type = ").push_bind(event_type_name(kind));
    }
}

/// Writes every matching event to `out`; returns how many.
pub async fn replay(
    pool: &PgPool,
    filter: &Filter,
    out: &mut impl Write,
    progress: &dyn Progress,
) -> anyhow::Result<u64> {
    let mut count = QueryBuilder::<Postgres>::new("SELECT count(*) FROM events");
    filtered(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    progress.start(total.max(0) as u64);
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT aggregate_id, sequence, position, event_type, event_version, recorded_at, \
         coalesce(payload -> event_type, payload)::text AS payload, metadata::text AS metadata FROM events",
    );
    filtered(&mut q, filter);
    q.push(" ORDER BY txid, position");
    let mut conn = pool.acquire().await?;
    let mut rows = q.build().fetch(&mut *conn);
    let mut written = 0u64;
    while let Some(row) = rows.try_next().await? {
        let id: &str = row.try_get("aggregate_id")?;
        let sequence: i64 = row.try_get("sequence")?;
        let position: i64 = row.try_get("position")?;
        let kind: &str = row.try_get("event_type")?;
        let version: &str = row.try_get("event_version")?;
        let at: DateTime<Utc> = row.try_get("recorded_at")?;
        let payload: &str = row.try_get("payload")?;
        let metadata: &str = row.try_get("metadata")?;
        writeln!(
            out,
            r#"{{"email_id":{},"sequence":{sequence},"position":{position},"type":{},"version":{},"recorded_at":"{}","payload":{payload},"metadata":{metadata}}}"#,
            serde_json::to_string(id)?,
            serde_json::to_string(kind)?,
            serde_json::to_string(version)?,
            at.to_rfc3339_opts(SecondsFormat::Micros, true),
        )?;
        written += 1;
        if written.is_multiple_of(1024) {
            progress.advance(1024);
        }
    }
    progress.advance(written % 1024);
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_are_normalised() {
        assert_eq!(super::event_type_name("dead_lettered"), "DeadLettered");
        assert_eq!(super::event_type_name("Sent"), "Sent");
        assert_eq!(super::event_type_name("sent"), "Sent");
    }
}
