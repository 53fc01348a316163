//! Events of aggregates other than emails — API keys today — appended in the caller's
//! transaction, next to whatever state the caller keeps for them. They live in `events`
//! like every email event: in commit order, in replays, and sealed into the proof log.
//! The projections read only `Email` events and pass these by.

use serde_json::Value;
use sqlx::PgConnection;

/// Appends one event to `aggregate_type`/`aggregate_id`, after its last one, in the
/// caller's transaction; returns its sequence. (Concurrent writers to one aggregate
/// collide on the primary key: the second one fails and its transaction with it.)
pub async fn append(
    tx: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: &Value,
    metadata: &Value,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT $1, $2, coalesce(max(sequence), 0) + 1, $3, '1.0', $4, $5 FROM events \
         WHERE aggregate_type = $1 AND aggregate_id = $2 \
         RETURNING sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(event_type)
    .bind(payload)
    .bind(metadata)
    .fetch_one(tx)
    .await
}
