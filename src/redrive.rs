//! Bulk redrives: every dead letter a filter matches (dead-lettered between two
//! instants, a reason containing some text, a recipient at some domain), queued again
//! at a set pace — what operators do after an outage.
//!
//! A run is started with the dead letters its filter matches at that moment (its items,
//! counted before anything is done); it then redrives them in order, each with
//! `Redriven { by, run }`. It is **resumable**: stopped by a crash, a deploy or Ctrl-C,
//! it continues with the items not done, and an email is redriven once per run however
//! often the run is resumed (the item says so, and the aggregate refuses a second
//! redrive by the same run). One worker holds a run at a time (a heartbeat every item;
//! a run whose worker has been silent for [`STALE`] can be taken over).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::Principal;
use crate::command::EmailError;
use crate::ledger::{Ledger, LedgerError};
use crate::ops::progress::Progress;

/// A worker silent this long has stopped: its run can be resumed elsewhere.
pub const STALE: Duration = Duration::from_secs(15);

/// Which dead letters a run takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Filter {
    /// Only this tenant's (`None`: every tenant — admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Dead-lettered at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// The dead letter's reason contains this text (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_like: Option<String>,
    /// A recipient at this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_domain: Option<String>,
}

/// A pace: redrives per second (0: as fast as they go).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl std::str::FromStr for Rate {
    type Err = String;

    /// `50/s`, `3000/m`, `100000/h`, or a bare number (per second).
    fn from_str(text: &str) -> Result<Self, String> {
        let (n, per) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
        let n: f64 = n.trim().parse().map_err(|_| format!("{text:?} is not a rate (say 50/s, 3000/m or 0)"))?;
        let seconds = match per.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            other => return Err(format!("{other:?} is not a unit of time (say s, m or h)")),
        };
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{text:?} is not a rate (a number at least 0)"));
        }
        Ok(Rate(n / seconds))
    }
}

/// A run, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Run {
    /// Its id: give it to resume the run.
    pub id: Uuid,
    /// Its filter.
    #[schema(value_type = Filter)]
    pub filter: sqlx::types::Json<Filter>,
    /// Redrives per second (0: no limit).
    pub rate_per_second: f64,
    /// Dead letters it matched when it started.
    pub total: i32,
    /// Items done (redriven, or passed by because they were no longer dead letters).
    pub done: i32,
    /// Items redriven.
    pub redriven: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Who started it.
    pub started_by: String,
    /// The worker that holds it (or last held it).
    pub worker: Option<String>,
    /// When that worker was last heard of.
    pub heartbeat: Option<DateTime<Utc>>,
    /// When it finished (absent: running, or interrupted and resumable).
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it stopped early, when it did.
    pub last_error: Option<String>,
}

/// What a dry run found.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Preview {
    /// Dead letters the filter matches now.
    pub matched: i64,
    /// The first (up to 20), oldest first.
    pub sample: Vec<Uuid>,
}

/// Why a run cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// No such run (or another tenant's).
    #[error("no redrive run {0}")]
    NotFound(Uuid),
    /// Another worker holds the run.
    #[error("run {0} is being run by {1}; it can be resumed once that worker has been silent for 15 s")]
    Busy(Uuid, String),
    /// The ledger refused to go on (the store is down, say); resume later.
    #[error("stopped: {0}")]
    Ledger(#[from] LedgerError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

const MATCH: &str = "FROM emails WHERE status = 'dead_lettered' \
    AND ($1::text IS NULL OR tenant = $1) \
    AND ($2::timestamptz IS NULL OR updated_at >= $2) AND ($3::timestamptz IS NULL OR updated_at < $3) \
    AND ($4::text IS NULL OR last_error ILIKE $4) \
    AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM unnest(recipients) r WHERE lower(split_part(r, '@', 2)) = lower($5)))";

fn like(text: &Option<String>) -> Option<String> {
    text.as_ref().map(|t| format!("%{}%", t.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")))
}

/// `query` with the filter's five parameters bound ($1 to $5 of [`MATCH`]).
fn matching<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    filter: &Filter,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(filter.tenant.clone())
        .bind(filter.since)
        .bind(filter.until)
        .bind(like(&filter.reason_like))
        .bind(filter.to_domain.clone())
}

/// How many dead letters `filter` matches now, and the first few.
pub async fn preview(pool: &PgPool, filter: &Filter) -> Result<Preview, sqlx::Error> {
    // The count is taken over every match, before the LIMIT.
    let sql = format!("SELECT id, count(*) OVER () {MATCH} ORDER BY updated_at, id LIMIT 20");
    let rows: Vec<(Uuid, i64)> = matching(sqlx::query_as(&sql), filter).fetch_all(pool).await?;
    Ok(Preview { matched: rows.first().map_or(0, |r| r.1), sample: rows.into_iter().map(|r| r.0).collect() })
}

/// Starts a run: its items are the dead letters `filter` matches now, oldest first.
pub async fn start(pool: &PgPool, filter: &Filter, rate: Rate, by: &Principal) -> Result<Run, sqlx::Error> {
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO redrive_runs (id, tenant, filter, rate_per_second, total, started_at, started_by) \
         VALUES ($1, $2, $3, $4, 0, now(), $5)",
    )
    .bind(id)
    .bind(filter.tenant.clone())
    .bind(sqlx::types::Json(filter))
    .bind(rate.0)
    .bind(&by.name)
    .execute(&mut *tx)
    .await?;
    let items = sqlx::query(&format!(
        "INSERT INTO redrive_run_items (run_id, email_id, position) \
         SELECT $6, id, row_number() OVER (ORDER BY updated_at, id) {MATCH}"
    ))
    .bind(filter.tenant.clone())
    .bind(filter.since)
    .bind(filter.until)
    .bind(like(&filter.reason_like))
    .bind(filter.to_domain.clone())
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE redrive_runs SET total = $2 WHERE id = $1")
        .bind(id)
        .bind(items as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    get(pool, id, None).await?.ok_or(sqlx::Error::RowNotFound)
}

const RUN_COLUMNS: &str = "id, filter, rate_per_second, total, done, redriven, started_at, started_by, worker, \
    heartbeat, finished_at, last_error";

/// A run, when it exists and `tenant` (when given) may see it.
pub async fn get(pool: &PgPool, id: Uuid, tenant: Option<&str>) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM redrive_runs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// The latest runs (newest first) `tenant` may see (`None`: every run).
pub async fn list(pool: &PgPool, tenant: Option<&str>, limit: i64) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RUN_COLUMNS} FROM redrive_runs WHERE ($1::text IS NULL OR tenant = $1) ORDER BY started_at DESC LIMIT $2"
    ))
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Runs (or resumes) run `id` as `principal` until its items are done or `stop` is
/// cancelled, reporting to `progress`; returns the run as it then stands.
pub async fn execute(
    pool: &PgPool,
    ledger: &Ledger,
    id: Uuid,
    principal: &Principal,
    progress: &dyn Progress,
    stop: CancellationToken,
) -> Result<Run, RedriveError> {
    let worker = format!("{}@{}", principal.name, Uuid::new_v4().simple().to_string().get(..8).unwrap_or_default());
    let taken: Option<(i32, i32, f64)> = sqlx::query_as(
        "UPDATE redrive_runs SET worker = $2, heartbeat = now(), last_error = NULL \
         WHERE id = $1 AND ($3::text IS NULL OR tenant = $3) AND finished_at IS NULL \
           AND (heartbeat IS NULL OR heartbeat < now() - $4 OR worker IS NULL) \
         RETURNING total, done, rate_per_second",
    )
    .bind(id)
    .bind(&worker)
    .bind(principal.tenant_filter())
    .bind(sqlx::postgres::types::PgInterval::try_from(STALE).unwrap_or_default())
    .fetch_optional(pool)
    .await?;
    let Some((total, done, rate)) = taken else {
        return match get(pool, id, principal.tenant_filter()).await? {
            None => Err(RedriveError::NotFound(id)),
            Some(run) if run.finished_at.is_some() => Ok(run),
            Some(run) => Err(RedriveError::Busy(id, run.worker.unwrap_or_default())),
        };
    };
    progress.start(total as u64);
    progress.advance(done as u64);
    let interval = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let mut next = tokio::time::Instant::now();
    let outcome = loop {
        let todo: Vec<Uuid> = sqlx::query_scalar(
            "SELECT email_id FROM redrive_run_items WHERE run_id = $1 AND done_at IS NULL ORDER BY position LIMIT 500",
        )
        .bind(id)
        .fetch_all(pool)
        .await?;
        if todo.is_empty() {
            break Ok(());
        }
        let mut failed = None;
        for email in todo {
            if let Some(interval) = interval {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep_until(next) => {}
                }
                next = next.max(tokio::time::Instant::now() - interval) + interval;
            }
            if stop.is_cancelled() {
                break;
            }
            let metadata = HashMap::from([
                ("transport".to_owned(), "bulk-redrive".to_owned()),
                ("redrive_run".to_owned(), id.to_string()),
            ]);
            let outcome = match ledger.redrive(email, principal, Some(&principal.name), Some(id), metadata).await {
                Ok(()) => "redriven",
                Err(LedgerError::Refused(EmailError::NotDeadLettered | EmailError::NotFound)) => "not a dead letter",
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            sqlx::query(
                "WITH item AS (UPDATE redrive_run_items SET done_at = now(), outcome = $3 \
                   WHERE run_id = $1 AND email_id = $2 AND done_at IS NULL RETURNING 1) \
                 UPDATE redrive_runs SET done = done + (SELECT count(*) FROM item), \
                   redriven = redriven + CASE WHEN $3 = 'redriven' THEN (SELECT count(*) FROM item) ELSE 0 END, \
                   heartbeat = now() WHERE id = $1",
            )
            .bind(id)
            .bind(email)
            .bind(outcome)
            .execute(pool)
            .await?;
            progress.advance(1);
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if stop.is_cancelled() {
            break Ok(());
        }
    };
    let error = outcome.as_ref().err().map(ToString::to_string);
    sqlx::query(
        "UPDATE redrive_runs SET worker = NULL, last_error = $2, \
           finished_at = CASE WHEN NOT EXISTS (SELECT 1 FROM redrive_run_items WHERE run_id = $1 AND done_at IS NULL) \
             THEN now() END \
         WHERE id = $1",
    )
    .bind(id)
    .bind(&error)
    .execute(pool)
    .await?;
    outcome?;
    get(pool, id, None).await?.ok_or(RedriveError::NotFound(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_per_second_minute_or_hour() {
        assert_eq!("50/s".parse::<Rate>().unwrap(), Rate(50.0));
        assert_eq!("3000/m".parse::<Rate>().unwrap(), Rate(50.0));
        assert_eq!("7200/h".parse::<Rate>().unwrap(), Rate(2.0));
        assert_eq!("0".parse::<Rate>().unwrap(), Rate(0.0));
        assert!("fast".parse::<Rate>().is_err());
        assert!("5/week".parse::<Rate>().unwrap_err().contains("week"));
        assert!("-1/s".parse::<Rate>().is_err());
    }
}
