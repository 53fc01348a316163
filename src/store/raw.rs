//! Every event of every aggregate (emails and API keys alike) exactly as stored, for
//! the proof log: JSON columns as PostgreSQL's `jsonb` text, nothing decoded or
//! upcast, so the bytes a leaf hashes are the bytes the table holds.
//!
//! [`read_after`] is the feed's batch (commit order, below the horizon, byte budget)
//! over all aggregates; [`stream`] streams the whole store in the same order from a
//! single statement, row by row (flat memory); [`of_aggregate`] and [`at_positions`] pick events
//! out for proofs.

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sqlx::{PgConnection, PgPool, Row};

use super::feed::{Checkpoint, checkpoint_of, fetch_batch};

/// One stored event, every column as the table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// Where it stands in commit order (`txid`, `position`).
    pub checkpoint: Checkpoint,
    /// `Email` or `ApiKey`.
    pub aggregate_type: String,
    /// The email's (or key's) id.
    pub aggregate_id: String,
    /// Its sequence within that aggregate, from 1.
    pub sequence: i64,
    /// `Requested`, `KeyCreated`, …
    pub event_type: String,
    /// Its schema version.
    pub event_version: String,
    /// When the store recorded it (microseconds).
    pub recorded_at: DateTime<Utc>,
    /// `payload::text`: the stored payload (wrapped in its type's name for emails).
    pub payload: String,
    /// `metadata::text`.
    pub metadata: String,
}

impl RawEvent {
    /// Its global position.
    pub fn position(&self) -> i64 {
        self.checkpoint.position
    }
}

macro_rules! columns {
    () => {
        "e.txid::text AS txid, e.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
         e.event_version, e.recorded_at, e.payload::text AS payload, e.metadata::text AS metadata"
    };
}
const COLUMNS: &str = columns!();

fn decode(row: &sqlx::postgres::PgRow) -> Result<RawEvent, sqlx::Error> {
    Ok(RawEvent {
        checkpoint: checkpoint_of(row)?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        recorded_at: row.try_get("recorded_at")?,
        payload: row.try_get("payload")?,
        metadata: row.try_get("metadata")?,
    })
}

/// Up to `limit` events (about `max_bytes`, at least one) of every aggregate after
/// `after`, in commit order and below the horizon: the feed's batch
/// ([`super::feed::read_after`]) without the filter on emails.
pub async fn read_after(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: i64,
    max_bytes: i64,
) -> Result<Vec<RawEvent>, sqlx::Error> {
    let rows = fetch_batch(conn, COLUMNS, after, limit, max_bytes).await?;
    rows.iter().map(decode).collect()
}

/// Up to `limit` events of one aggregate type after `after`, in commit order and below
/// the horizon (the feed's rule), for a projection of that aggregate alone. The type is
/// written into the statement, so that a partial index on it (as
/// `events_suppressions` for `Suppression`) serves the read instead of a walk through
/// every other event.
pub async fn read_after_of(
    conn: &mut PgConnection,
    aggregate_type: &'static str,
    after: Checkpoint,
    limit: i64,
) -> Result<Vec<RawEvent>, sqlx::Error> {
    debug_assert!(aggregate_type.chars().all(|c| c.is_ascii_alphanumeric()));
    let sql = format!(
        "SELECT {COLUMNS} FROM events e WHERE e.aggregate_type = '{aggregate_type}' \
           AND (e.txid, e.position) > ($1::text::xid8, $2) AND e.txid < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY e.txid, e.position LIMIT $3"
    );
    let rows = sqlx::query(&sql).bind(after.txid.to_string()).bind(after.position).bind(limit).fetch_all(conn).await?;
    rows.iter().map(decode).collect()
}

/// Every event of the store in commit order (`txid, position`), streamed from the
/// server as it is read (flat memory), in the snapshot of one statement.
pub fn stream(conn: &mut PgConnection) -> impl Stream<Item = Result<RawEvent, sqlx::Error>> + '_ {
    const ALL: &str = concat!("SELECT ", columns!(), " FROM events e ORDER BY e.txid, e.position");
    sqlx::query(ALL).fetch(conn).map(|row| row.and_then(|r| decode(&r)))
}

/// How many events the store holds.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await
}

/// Every event of one aggregate, in sequence order (empty when there is none).
pub async fn of_aggregate(pool: &PgPool, aggregate_type: &str, id: &str) -> Result<Vec<RawEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events e WHERE e.aggregate_type = $1 AND e.aggregate_id = $2 ORDER BY e.sequence"
    );
    let rows = sqlx::query(&sql).bind(aggregate_type).bind(id).fetch_all(pool).await?;
    rows.iter().map(decode).collect()
}

/// The events at `positions` (those that exist), in position order.
pub async fn at_positions(pool: &PgPool, positions: &[i64]) -> Result<Vec<RawEvent>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM events e WHERE e.position = ANY($1) ORDER BY e.position");
    let rows = sqlx::query(&sql).bind(positions).fetch_all(pool).await?;
    rows.iter().map(decode).collect()
}
