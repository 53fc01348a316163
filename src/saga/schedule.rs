//! The delivery schedule (transactional projection).
//!
//! `Persisted` and `Redriven` put an email on the schedule, due at once; `Failed` with a
//! next attempt moves it to that time (and drops the lease); `Sent`, a final `Failed`
//! and `DeadLettered` take it off. Every write is guarded by `last_sequence`. Each row
//! carries the email's recipient domain and tenant, for shaping ([`super::shaping`])
//! and the suppression list. Claiming is in [`super::shaping::claim`].

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::command::EmailEvent;
use crate::projections::{Projection, ProjectionKind};
use crate::query::view::tenant_in;
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
        // One write per email: what its last event in the batch says. (An attempt's
        // events come together — a `Sent` for some recipients and a `Failed` putting the
        // others back — and only the last one counts.)
        let mut effects: HashMap<Uuid, Effect> = HashMap::new();
        for e in events {
            let due = match &e.event {
                EmailEvent::Persisted(_) => Some(e.recorded_at),
                EmailEvent::Redriven(r) => Some(r.redriven_at),
                EmailEvent::Failed(f) => f.next_attempt_at,
                EmailEvent::Sent(_) | EmailEvent::DeadLettered(_) => None,
                EmailEvent::Requested(_) | EmailEvent::Suppressed(_) => continue,
            };
            let effect = effects.entry(e.email_id).or_default();
            effect.due = due;
            effect.sequence = e.sequence;
            if let EmailEvent::Persisted(p) = &e.event {
                effect.domain =
                    p.to.iter().chain(&p.cc).chain(&p.bcc).next().map(|m| domain_of(&m.address.to_string()));
                effect.tenant = Some(tenant_in(&e.metadata));
            }
        }
        let (due, gone): (Vec<(&Uuid, &Effect)>, Vec<(&Uuid, &Effect)>) =
            effects.iter().partition(|(_, effect)| effect.due.is_some());
        if !due.is_empty() {
            // A row put back without a `Persisted` in this batch (a redrive) takes its
            // domain and tenant from the read model.
            let sql = format!(
                "INSERT INTO {t} (email_id, due_at, last_sequence, domain, tenant) \
                 SELECT m.id, m.due, m.seq, \
                   coalesce(m.domain, (SELECT lower(split_part(e.recipients[1], '@', 2)) FROM emails e WHERE e.id = m.id), ''), \
                   coalesce(m.tenant, (SELECT e.tenant FROM emails e WHERE e.id = m.id), 'default') \
                 FROM UNNEST($1::uuid[], $2::timestamptz[], $3::bigint[], $4::text[], $5::text[]) AS m(id, due, seq, domain, tenant) \
                 ON CONFLICT (email_id) DO UPDATE SET due_at = EXCLUDED.due_at, lease_owner = NULL, \
                 lease_until = NULL, last_sequence = EXCLUDED.last_sequence \
                 WHERE {t}.last_sequence < EXCLUDED.last_sequence",
                t = self.table
            );
            sqlx::query(&sql)
                .bind(due.iter().map(|(id, _)| **id).collect::<Vec<_>>())
                .bind(due.iter().map(|(_, e)| e.due).collect::<Vec<_>>())
                .bind(due.iter().map(|(_, e)| e.sequence).collect::<Vec<_>>())
                .bind(due.iter().map(|(_, e)| e.domain.clone()).collect::<Vec<_>>())
                .bind(due.iter().map(|(_, e)| e.tenant.clone()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        if !gone.is_empty() {
            let sql = format!(
                "DELETE FROM {t} USING UNNEST($1::uuid[], $2::bigint[]) AS m(id, seq) \
                 WHERE {t}.email_id = m.id AND {t}.last_sequence < m.seq",
                t = self.table
            );
            sqlx::query(&sql)
                .bind(gone.iter().map(|(id, _)| **id).collect::<Vec<_>>())
                .bind(gone.iter().map(|(_, e)| e.sequence).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// What a batch's events do to one email's schedule row.
#[derive(Default)]
struct Effect {
    due: Option<DateTime<Utc>>,
    sequence: i64,
    domain: Option<String>,
    tenant: Option<String>,
}

/// The domain of an address, as schedule rows and limits name it.
pub fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default()
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

/// When the next delivery falls due (for the sender's nap): the earliest due time among
/// the deliveries no live lease holds, a walk along `deliveries_due` past the ones in
/// flight. Deliveries held by a lease are left out (each ends at the next poll at the
/// latest: `delivery.poll_interval` is far shorter than a lease). The minimum over every
/// row with its lease counted in was a scan of the whole schedule at every idle wake of
/// every sender: with a backlog deferred to later (a paused domain, retries after an
/// outage) that grew with the backlog.
pub async fn next_due(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(NEXT_DUE).fetch_optional(pool).await
}

/// The statement of [`next_due`] (its plan is held to the index by a test).
pub const NEXT_DUE: &str = "SELECT due_at FROM deliveries \
     WHERE lease_until IS NULL OR lease_until <= greatest(due_at, now()) ORDER BY due_at LIMIT 1";

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
