//! Replay windows: every event matching a filter, in commit order, streamed from a
//! server-side cursor with each row's JSON as the stored text, so memory stays flat
//! whatever the size of the store.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

/// Which events to replay.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Recorded at or after.
    pub since: Option<DateTime<Utc>>,
    /// Recorded before.
    pub until: Option<DateTime<Utc>>,
    /// Only this email.
    pub email: Option<Uuid>,
    /// Only this event type, as stored (`DeadLettered`).
    pub event_type: Option<String>,
    /// Only events of this tenant (`default` for events from before tenants).
    pub tenant: Option<String>,
}

/// One replayed row, borrowed from the cursor: JSON fields as the stored text.
#[derive(Debug, Clone, Copy)]
pub struct ReplayRow<'a> {
    /// `events.aggregate_type`: `Email`, or `ApiKey` for key events.
    pub aggregate_type: &'a str,
    /// `events.aggregate_id`.
    pub email_id: &'a str,
    /// Sequence within the email.
    pub sequence: i64,
    /// Position in the store.
    pub position: i64,
    /// `events.event_type`.
    pub event_type: &'a str,
    /// `events.event_version`.
    pub version: &'a str,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
    /// The event's own fields (JSON text).
    pub payload: &'a str,
    /// Its metadata (JSON text).
    pub metadata: &'a str,
}

fn filtered<'a>(q: &mut QueryBuilder<'a, Postgres>, w: &'a Window) {
    // Every aggregate in the store is an Email; no filter on the type, which would steer
    // the planner off the (txid, position) index.
    q.push(" WHERE true");
    if let Some(since) = w.since {
        q.push(" AND recorded_at >= ").push_bind(since);
    }
    if let Some(until) = w.until {
        q.push(" AND recorded_at < ").push_bind(until);
    }
    if let Some(email) = w.email {
        q.push(" AND aggregate_id = ").push_bind(email.to_string());
    }
    if let Some(kind) = &w.event_type {
        q.push(" AND event_type = ").push_bind(kind.clone());
    }
    if let Some(tenant) = &w.tenant {
        q.push(" AND coalesce(metadata->>'tenant', 'default') = ").push_bind(tenant.clone());
    }
}

/// How many events the window holds.
pub async fn count(pool: &PgPool, window: &Window) -> Result<i64, sqlx::Error> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT count(*) FROM events");
    filtered(&mut q, window);
    q.build_query_scalar().fetch_one(pool).await
}

/// Calls `each` with every event of the window, in commit order; stops at its first
/// error. Returns how many rows were handed over.
pub async fn for_each(
    pool: &PgPool,
    window: &Window,
    mut each: impl FnMut(ReplayRow<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT aggregate_type, aggregate_id, sequence, position, event_type, event_version, recorded_at, \
         coalesce(payload -> event_type, payload)::text AS payload, metadata::text AS metadata FROM events",
    );
    filtered(&mut q, window);
    q.push(" ORDER BY txid, position");
    let mut conn = pool.acquire().await?;
    let mut rows = q.build().fetch(&mut *conn);
    let mut n = 0u64;
    while let Some(row) = rows.try_next().await? {
        each(ReplayRow {
            aggregate_type: row.try_get("aggregate_type")?,
            email_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            position: row.try_get("position")?,
            event_type: row.try_get("event_type")?,
            version: row.try_get("event_version")?,
            recorded_at: row.try_get("recorded_at")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
        })?;
        n += 1;
    }
    Ok(n)
}
