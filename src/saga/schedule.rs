//! The delivery schedule (transactional projection) and claiming due deliveries.
//!
//! `Persisted` and `Redriven` put an email on the schedule, due at once; `Failed` with a
//! next attempt moves it to that time (and drops the lease); `Sent`, a final `Failed`
//! and `DeadLettered` take it off. Every write is guarded by `last_sequence`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::command::EmailEvent;
use crate::projections::{Projection, ProjectionKind};
use crate::store::feed::FeedEvent;

/// The schedule projection, writing into `deliveries` (or a shadow of it).
pub struct ScheduleProjection {
    table: String,
}

impl ScheduleProjection {
    /// The live projection.
    pub fn new() -> Self {
        Self::into_table("deliveries")
    }

    /// The same projection into a table of the same shape.
    pub fn into_table(table: &str) -> Self {
        Self { table: table.into() }
    }
}

impl Default for ScheduleProjection {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Projection for ScheduleProjection {
    fn name(&self) -> &'static str {
        "schedule"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Transactional
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        for e in events {
            let due: Option<DateTime<Utc>> = match &e.event {
                EmailEvent::Persisted(_) => Some(e.recorded_at),
                EmailEvent::Redriven(r) => Some(r.redriven_at),
                EmailEvent::Failed(f) => f.next_attempt_at,
                EmailEvent::Sent(_) | EmailEvent::DeadLettered(_) => None,
                EmailEvent::Requested(_) => continue,
            };
            match due {
                Some(due) => {
                    let sql = format!(
                        "INSERT INTO {t} (email_id, due_at, last_sequence) VALUES ($1, $2, $3) \
                         ON CONFLICT (email_id) DO UPDATE SET due_at = EXCLUDED.due_at, lease_owner = NULL, \
                         lease_until = NULL, last_sequence = EXCLUDED.last_sequence \
                         WHERE {t}.last_sequence < EXCLUDED.last_sequence",
                        t = self.table
                    );
                    sqlx::query(&sql).bind(e.email_id).bind(due).bind(e.sequence).execute(&mut *tx).await?;
                }
                None => {
                    let sql = format!("DELETE FROM {} WHERE email_id = $1 AND last_sequence < $2", self.table);
                    sqlx::query(&sql).bind(e.email_id).bind(e.sequence).execute(&mut *tx).await?;
                }
            }
        }
        Ok(())
    }
}

/// Claims up to `limit` due deliveries for `owner` for `lease`: rows other workers
/// hold are skipped, not waited for.
pub async fn claim(pool: &PgPool, owner: &str, limit: i64, lease: std::time::Duration) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "WITH due AS ( \
           SELECT email_id FROM deliveries \
           WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
           ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE deliveries d SET lease_owner = $2, lease_until = now() + $3 \
         FROM due WHERE d.email_id = due.email_id RETURNING d.email_id",
    )
    .bind(limit)
    .bind(owner)
    .bind(sqlx::postgres::types::PgInterval::try_from(lease).unwrap_or_default())
    .fetch_all(pool)
    .await
}

/// Keeps a claim (when a delivery is skipped because the schedule lags the ledger).
pub async fn extend(pool: &PgPool, email_id: Uuid, owner: &str, lease: std::time::Duration) -> sqlx::Result<()> {
    sqlx::query("UPDATE deliveries SET lease_until = now() + $3 WHERE email_id = $1 AND lease_owner = $2")
        .bind(email_id)
        .bind(owner)
        .bind(sqlx::postgres::types::PgInterval::try_from(lease).unwrap_or_default())
        .execute(pool)
        .await?;
    Ok(())
}

/// When the next delivery falls due (for the sender's nap).
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(greatest(due_at, coalesce(lease_until, due_at))) FROM deliveries")
        .fetch_one(pool)
        .await
}

/// Deliveries due now and not claimed.
pub async fn depth(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE due_at <= now()").fetch_one(pool).await
}

/// The schedule at a glance.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Counts {
    /// Due now.
    pub due: i64,
    /// On the schedule at all.
    pub scheduled: i64,
    /// Claimed by a sender right now.
    pub leased: i64,
}

/// How many deliveries are due, scheduled and being sent.
pub async fn counts(pool: &PgPool) -> sqlx::Result<Counts> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE due_at <= now()) AS due, count(*) AS scheduled, \
           count(*) FILTER (WHERE lease_until > now()) AS leased FROM deliveries",
    )
    .fetch_one(pool)
    .await
}
