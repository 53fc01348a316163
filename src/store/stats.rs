//! How big the store is and how far behind each projection is: cheap at any size (no
//! counting of the whole store past a million events).

use sqlx::PgPool;

/// How far one projection is behind the head of the store.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Lag {
    /// The projection (or a re-projection's `<name>__shadow`).
    pub name: String,
    /// The position of its checkpoint.
    pub position: i64,
    /// Events not yet applied: the distance in positions (gaps left by rolled-back
    /// inserts make it an upper bound).
    pub events: i64,
    /// Age in seconds of the next event to apply; `None` when caught up.
    pub seconds: Option<f64>,
}

/// Every checkpoint's lag.
pub async fn lags(pool: &PgPool) -> Result<Vec<Lag>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.name, c.position, greatest(h.head - c.position, 0) AS events, \
           extract(epoch FROM now() - n.recorded_at)::float8 AS seconds \
         FROM projection_checkpoints c \
         CROSS JOIN (SELECT coalesce(max(position), 0) AS head FROM events) h \
         LEFT JOIN LATERAL (SELECT e.recorded_at FROM events e WHERE (e.txid, e.position) > (c.txid, c.position) \
                            ORDER BY e.txid, e.position LIMIT 1) n ON true \
         ORDER BY c.name",
    )
    .fetch_all(pool)
    .await
}

/// The position of the newest event (0 for an empty store).
pub async fn head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(pool).await
}

/// Events in the store: exact up to a million, the planner's estimate past that.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let estimate: f32 = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'events' AND relkind = 'r'")
        .fetch_one(pool)
        .await?;
    if estimate > 1_000_000.0 {
        return Ok(estimate as i64);
    }
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await
}
