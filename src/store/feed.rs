//! The event feed: every event of the store, in commit order, never skipping one that
//! committed late.
//!
//! Rows are read in `(txid, position)` order and only while `txid` is below
//! `pg_snapshot_xmin(pg_current_snapshot())`: every transaction below that horizon has
//! ended, so no event can still appear behind a checkpoint. A transaction that began
//! early and commits late holds the horizon back (the feed waits for it) instead of
//! being overtaken (the feed would skip it). The price: any long transaction on the
//! cluster delays every reader by as long as it stays open.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::upcast::{self, UPCASTERS, Upcaster};
use crate::command::EmailEvent;

/// A position in the feed: the last event a reader has applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    /// Transaction id of that event.
    pub txid: u64,
    /// Its global position.
    pub position: i64,
}

/// One event as the feed hands it out.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    /// Where it stands in the feed.
    pub checkpoint: Checkpoint,
    /// The email it belongs to.
    pub email_id: Uuid,
    /// Its sequence within that email (from 1).
    pub sequence: i64,
    /// Its type name (`Requested`, …).
    pub event_type: String,
    /// Its schema version.
    pub event_version: String,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The event itself.
    pub event: EmailEvent,
    /// Where it came from (transport, correlation id, …).
    pub metadata: Value,
}

/// A stored event that cannot be read: a bug or a missing upcaster.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A row that does not decode.
    #[error("event at position {position} ({event_type} v{version}) does not decode: {reason}")]
    Undecodable {
        /// Its position.
        position: i64,
        /// Its type.
        event_type: String,
        /// Its version.
        version: String,
        /// Why.
        reason: String,
    },
}

/// Selected columns. (`txid` is also the name of a text output column here, so an
/// ORDER BY must name `events.txid` to sort numerically.)
const SELECT: &str = "SELECT txid::text AS txid, position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at FROM events";

/// A batch of the feed: the email events in it, in order, and how far it reached (the
/// last row read, which may be another aggregate's event that email readers pass by: a
/// run of such events must still move a reader's checkpoint, or it would read them
/// again forever).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The email events.
    pub events: Events,
    /// The last row read; `None` when there was nothing below the horizon.
    pub reached: Option<Checkpoint>,
    /// The rows' stored size, about (what a cache of batches counts).
    pub(crate) bytes: i64,
    /// Whether the read took everything below the horizon: fewer rows than asked for,
    /// and not cut by its byte budget. A reader that got such a batch need not read
    /// again to learn it is done (what commits later is announced and read then).
    pub drained: bool,
}

/// Email events of a [`Batch`]: a window on a shared, immutable list (batches read once
/// are handed to every projection that follows the feed: see [`super::tail`]).
#[derive(Debug, Clone, Default)]
pub struct Events {
    all: std::sync::Arc<[FeedEvent]>,
    range: std::ops::Range<usize>,
}

impl Events {
    pub(crate) fn new(all: std::sync::Arc<[FeedEvent]>, range: std::ops::Range<usize>) -> Self {
        debug_assert!(range.end <= all.len());
        Self { all, range }
    }

    pub(crate) fn shared(&self) -> &std::sync::Arc<[FeedEvent]> {
        &self.all
    }
}

impl From<Vec<FeedEvent>> for Events {
    fn from(events: Vec<FeedEvent>) -> Self {
        let range = 0..events.len();
        Self { all: events.into(), range }
    }
}

impl std::ops::Deref for Events {
    type Target = [FeedEvent];
    fn deref(&self) -> &[FeedEvent] {
        &self.all[self.range.clone()]
    }
}

/// Reads up to `limit` rows after `after`, in commit order, below the horizon, and
/// no more than about `max_bytes` of them (always at least one): a batch of ten-megabyte
/// bodies holds a few of them, not `limit`. The batch holds the email events among them.
///
/// The query is shaped for one plan whatever the statistics say: a walk of the
/// `(txid, position)` index from the checkpoint, stopped by the LIMIT. (A filter on
/// `aggregate_type` here once tempted the planner into scanning the whole store on
/// every batch — the primary key starts with that column — so other aggregate types
/// are skipped while decoding instead, and the batch says how far it reached.) A row's
/// size is its stored size, or for a large (compressed, out-of-line) payload the size
/// of its text: only those rows pay for being measured.
pub async fn read_after(
    conn: &mut PgConnection,
    after: Checkpoint,
    limit: i64,
    max_bytes: i64,
    upcasters: &[Upcaster],
) -> Result<Batch, FeedError> {
    let rows = fetch_batch(
        conn,
        "e.txid::text AS txid, e.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
         e.event_version, e.payload, e.metadata, e.recorded_at, \
         pg_column_size(e.payload)::int8 + pg_column_size(e.metadata)::int8 AS bytes",
        after,
        limit,
        max_bytes,
    )
    .await?;
    let mut reached = None;
    let mut bytes = 0i64;
    let mut events = Vec::with_capacity(rows.len());
    // Cut by the budget only if the rows kept reach it (the next row is kept while
    // what came before it is under the budget).
    let drained = (rows.len() as i64) < limit
        && rows.last().map_or(Ok(0), |r| r.try_get::<i64, _>("feed_upto"))? < max_bytes.max(1);
    for row in &rows {
        bytes += row.try_get::<i64, _>("bytes")?;
        if row.try_get::<&str, _>("aggregate_type").is_ok_and(|t| t == "Email") {
            let event = decode_row(row, upcasters)?;
            reached = Some(event.checkpoint);
            events.push(event);
        } else {
            reached = Some(checkpoint_of(row)?);
        }
    }
    Ok(Batch { events: events.into(), reached, bytes, drained })
}

/// Where a row selected with `txid::text AS txid` and `position` stands in the feed.
pub(crate) fn checkpoint_of(row: &sqlx::postgres::PgRow) -> Result<Checkpoint, sqlx::Error> {
    let txid: &str = row.try_get("txid")?;
    Ok(Checkpoint {
        txid: txid.parse().map_err(|e| sqlx::Error::Decode(format!("txid {txid:?}: {e}").into()))?,
        position: row.try_get("position")?,
    })
}

/// The rows of a feed batch after `after` (see [`read_after`] for the statement's
/// shape), selecting `columns` of `events e`.
pub(crate) async fn fetch_batch(
    conn: &mut PgConnection,
    columns: &str,
    after: Checkpoint,
    limit: i64,
    max_bytes: i64,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    let sql = format!(
        "WITH next AS ( \
           SELECT txid, position, \
             CASE WHEN pg_column_size(payload) > 2000 THEN octet_length(payload::text) ELSE pg_column_size(payload) END \
             + pg_column_size(metadata) AS bytes \
           FROM events WHERE (txid, position) > ($1::text::xid8, $2) \
             AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
           ORDER BY txid, position LIMIT $3), \
         kept AS (SELECT txid, position, before + bytes AS upto FROM \
           (SELECT txid, position, bytes, sum(bytes) OVER (ORDER BY txid, position) - bytes AS before FROM next) n \
           WHERE before < $4) \
         SELECT {columns}, kept.upto::int8 AS feed_upto \
         FROM kept JOIN events e ON e.txid = kept.txid AND e.position = kept.position \
         ORDER BY e.txid, e.position"
    );
    sqlx::query(&sql)
        .bind(after.txid.to_string())
        .bind(after.position)
        .bind(limit)
        .bind(max_bytes.max(1))
        .fetch_all(conn)
        .await
}

/// Where a reader that needs no history starts: just below the oldest transaction still
/// open (every event of a transaction below it is stored or never will be; the events of
/// the others all come after).
pub async fn horizon(pool: &sqlx::PgPool) -> Result<Checkpoint, sqlx::Error> {
    let horizon: String =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text").fetch_one(pool).await?;
    Ok(Checkpoint { txid: horizon.parse::<u64>().unwrap_or(1).saturating_sub(1), position: i64::MAX })
}

/// Which emails have events after `after` (up to `limit` rows of the feed, below the
/// horizon): their ids, sequences and places, without the events themselves.
pub struct Sequences {
    /// `(email, sequence, where in the feed)` of each email event read.
    pub events: Vec<(Uuid, i64, Checkpoint)>,
    /// The last row read (of any aggregate).
    pub reached: Option<Checkpoint>,
    /// Rows read.
    pub rows: usize,
}

/// See [`Sequences`]: a small read of the feed index for readers that only need to know
/// what changed (the views kept in memory: [`crate::query::near`]).
pub async fn email_sequences_after(
    pool: &sqlx::PgPool,
    after: Checkpoint,
    limit: i64,
) -> Result<Sequences, sqlx::Error> {
    let rows: Vec<(String, i64, String, String, i64)> = sqlx::query_as(
        "SELECT txid::text, position, aggregate_type, aggregate_id, sequence FROM events \
         WHERE (txid, position) > ($1::text::xid8, $2) AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY txid, position LIMIT $3",
    )
    .bind(after.txid.to_string())
    .bind(after.position)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let place = |txid: &str, position: i64| Some(Checkpoint { txid: txid.parse().ok()?, position });
    let events = rows
        .iter()
        .filter(|r| r.2 == "Email")
        .filter_map(|r| Some((r.3.parse().ok()?, r.4, place(&r.0, r.1)?)))
        .collect();
    let reached = rows.last().and_then(|r| place(&r.0, r.1));
    Ok(Sequences { events, reached, rows: rows.len() })
}

/// Every event of one email, in sequence order (optionally only up to an instant).
pub async fn read_email(
    conn: &mut PgConnection,
    email_id: Uuid,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<FeedEvent>, FeedError> {
    let sql = format!(
        "{SELECT} WHERE aggregate_type = 'Email' AND aggregate_id = $1 \
         AND ($2::timestamptz IS NULL OR recorded_at <= $2) ORDER BY sequence"
    );
    let rows = sqlx::query(&sql).bind(email_id.to_string()).bind(until).fetch_all(conn).await?;
    rows.iter().map(|r| decode_row(r, UPCASTERS)).collect()
}

/// Every event of each email in `ids`, grouped by email, each group in sequence order.
pub async fn read_emails(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<Vec<FeedEvent>>, FeedError> {
    let sql =
        format!("{SELECT} WHERE aggregate_type = 'Email' AND aggregate_id = ANY($1) ORDER BY aggregate_id, sequence");
    let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows = sqlx::query(&sql).bind(&keys).fetch_all(conn).await?;
    let mut groups: Vec<Vec<FeedEvent>> = Vec::new();
    for row in &rows {
        let e = decode_row(row, UPCASTERS)?;
        match groups.last_mut() {
            Some(group) if group[0].email_id == e.email_id => group.push(e),
            _ => groups.push(vec![e]),
        }
    }
    Ok(groups)
}

/// The tenant of email `email_id` (from its first event's metadata; `default` for an
/// email recorded before tenants), or `None` when there is no such email.
pub async fn tenant_of(pool: &sqlx::PgPool, email_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce(metadata->>'tenant', 'default') FROM events \
         WHERE aggregate_type = 'Email' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(email_id.to_string())
    .fetch_optional(pool)
    .await
}

/// The tenant of each email of `ids` that exists (see [`tenant_of`]), on `conn` (a
/// projection's transaction).
pub async fn tenants_of(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, String>, sqlx::Error> {
    let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, coalesce(metadata->>'tenant', 'default') FROM events \
         WHERE aggregate_type = 'Email' AND aggregate_id = ANY($1) AND sequence = 1",
    )
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().filter_map(|(id, t)| id.parse().ok().map(|id| (id, t))).collect())
}

/// One stored event as it is, for people and exports: its payload is the event's own
/// fields (not wrapped in its type's name), nothing decoded or upcast.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    /// `Requested`, `Persisted`, …
    pub event_type: String,
    /// Its sequence within the email, from 1.
    pub sequence: i64,
    /// Its position in the whole store.
    pub position: i64,
    /// The payload's schema version.
    pub event_version: String,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The event's fields.
    pub payload: Value,
    /// Where it came from.
    pub metadata: Value,
}

/// Every stored event of one email, in order (empty for an unknown id).
pub async fn history(pool: &sqlx::PgPool, email_id: Uuid) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_type, sequence, position, event_version, recorded_at, \
           coalesce(payload -> event_type, payload) AS payload, metadata FROM events \
         WHERE aggregate_type = 'Email' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(email_id.to_string())
    .fetch_all(pool)
    .await
}

/// Decodes one `events` row selected with [`SELECT`]'s columns, upcasting old versions.
fn decode_row(row: &sqlx::postgres::PgRow, upcasters: &[Upcaster]) -> Result<FeedEvent, FeedError> {
    let position: i64 = row.try_get("position")?;
    let event_type: String = row.try_get("event_type")?;
    let event_version: String = row.try_get("event_version")?;
    let undecodable = |reason: String| FeedError::Undecodable {
        position,
        event_type: event_type.clone(),
        version: event_version.clone(),
        reason,
    };
    let txid: String = row.try_get("txid")?;
    let txid = txid.parse().map_err(|e| undecodable(format!("txid {txid:?}: {e}")))?;
    let aggregate_id: String = row.try_get("aggregate_id")?;
    let email_id = aggregate_id.parse().map_err(|e| undecodable(format!("aggregate id {aggregate_id:?}: {e}")))?;
    let payload: Value = row.try_get("payload")?;
    let event = upcast::decode_with(upcasters, &event_type, &event_version, payload).map_err(undecodable)?;
    Ok(FeedEvent {
        checkpoint: Checkpoint { txid, position },
        email_id,
        sequence: row.try_get("sequence")?,
        event_type: event_type.clone(),
        event_version: event_version.clone(),
        recorded_at: row.try_get("recorded_at")?,
        event,
        metadata: row.try_get("metadata")?,
    })
}
