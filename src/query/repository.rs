//! Reads from PostgreSQL: one email, a search over the `emails` read model, and an
//! email's history from the event store.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::search::{COUNT_CAP, Page, SearchParams};
use super::view::EmailView;
use crate::projections::emails::{COLUMNS, EmailRow};
use crate::projections::feed;

/// One event of an email's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    /// `Requested`, `Persisted`, `Sent`, `Failed`, `DeadLettered` or `Redriven`.
    #[serde(rename = "type")]
    #[schema(example = "Persisted")]
    pub event_type: String,
    /// Position within the email, from 1.
    pub sequence: i64,
    /// Position in the whole store.
    pub position: i64,
    /// Schema version of the payload.
    pub version: String,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
    /// The event's fields.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Where it came from: transport, correlation id, idempotency key, caller.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    event_type: String,
    sequence: i64,
    position: i64,
    event_version: String,
    recorded_at: DateTime<Utc>,
    payload: Value,
    metadata: Value,
}

/// PostgreSQL reads.
#[derive(Clone)]
pub struct Repository {
    pool: PgPool,
}

impl Repository {
    /// Reads on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The read model's row for `id`.
    pub async fn get(&self, id: Uuid) -> sqlx::Result<Option<EmailView>> {
        let sql = format!("SELECT {COLUMNS} FROM emails WHERE id = $1");
        let row: Option<EmailRow> = sqlx::query_as(&sql).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(EmailView::from))
    }

    /// The email as it was at `at`, folded from the events recorded until then.
    pub async fn as_of(&self, id: Uuid, at: DateTime<Utc>) -> anyhow::Result<Option<EmailView>> {
        let mut conn = self.pool.acquire().await?;
        let events = feed::read_email(&mut conn, id, Some(at)).await?;
        Ok(EmailView::fold(events.iter().map(|e| (e.sequence, e.recorded_at, &e.event))))
    }

    /// Every event of `id`, in order (empty for an unknown id).
    pub async fn history(&self, id: Uuid) -> sqlx::Result<Vec<HistoryEntry>> {
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT event_type, sequence, position, event_version, recorded_at, payload, metadata FROM events \
             WHERE aggregate_type = 'Email' AND aggregate_id = $1 ORDER BY sequence",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                // Stored externally tagged ({"Sent": {...}}): hand out the inner object.
                let payload = match r.payload {
                    Value::Object(mut m) if m.len() == 1 && m.contains_key(&r.event_type) => {
                        m.remove(&r.event_type).unwrap_or(Value::Null)
                    }
                    other => other,
                };
                HistoryEntry {
                    event_type: r.event_type,
                    sequence: r.sequence,
                    position: r.position,
                    version: r.event_version,
                    recorded_at: r.recorded_at,
                    payload,
                    metadata: r.metadata,
                }
            })
            .collect())
    }

    /// One page of a search, newest first, with a count capped at [`COUNT_CAP`].
    pub async fn search(&self, p: &SearchParams) -> sqlx::Result<Page<EmailView>> {
        let empty = || Page {
            items: vec![],
            total_count: 0,
            total_exact: true,
            total_pages: 0,
            page: p.page,
            size: p.size,
            has_more: false,
        };
        if p.tsquery.as_deref() == Some("") {
            return Ok(empty());
        }
        let offset = i64::from(p.page - 1) * i64::from(p.size);
        // The capped count comes first: it also tells which plan the page needs. With at
        // most COUNT_CAP matches, fetch them through the filters' indexes and sort them
        // (`created_at + 0` keeps the planner off the order index); with more, walk the
        // order index, which meets a page of matches at once. Left to itself the planner
        // guesses, and a prefix query's guess once walked a million rows for ten.
        // A 1 % page sample first: when it already shows far more than COUNT_CAP matches,
        // counting them up to the cap through the text index would build a bitmap of
        // every match (tens of ms for a word in every email) only to say "10,000+".
        let dense = if p.tsquery.is_some() {
            let mut sample = QueryBuilder::<Postgres>::new("SELECT count(*) FROM emails TABLESAMPLE SYSTEM (1)");
            filters(&mut sample, p);
            let sampled: i64 = sample.build_query_scalar().fetch_one(&self.pool).await?;
            sampled * 100 > COUNT_CAP * 5
        } else {
            false
        };
        let counted: i64 = if dense {
            COUNT_CAP + 1
        } else {
            let mut c = QueryBuilder::<Postgres>::new("SELECT count(*) FROM (SELECT 1 FROM emails");
            filters(&mut c, p);
            c.push(" LIMIT ").push_bind(COUNT_CAP + 1).push(") AS capped");
            c.build_query_scalar().fetch_one(&self.pool).await?
        };
        let total_exact = counted <= COUNT_CAP;
        let filtered = p.tsquery.is_some() || p.status.is_some() || p.from.is_some() || p.to.is_some();
        let order = if total_exact && filtered {
            " ORDER BY created_at + interval '0 s' DESC, id DESC LIMIT "
        } else {
            " ORDER BY created_at DESC, id DESC LIMIT "
        };
        let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM emails"));
        filters(&mut q, p);
        q.push(order).push_bind(i64::from(p.size) + 1);
        q.push(" OFFSET ").push_bind(offset);
        let mut rows: Vec<EmailRow> = if dense {
            // Matches are everywhere: walk the order index (a bitmap of them all is slow).
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET LOCAL enable_bitmapscan = off").execute(&mut *tx).await?;
            let rows = q.build_query_as().fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        } else {
            q.build_query_as().fetch_all(&self.pool).await?
        };
        let has_more = rows.len() > p.size as usize;
        rows.truncate(p.size as usize);
        let total_count = counted.min(COUNT_CAP).max(offset + rows.len() as i64);
        let size = i64::from(p.size);
        Ok(Page {
            items: rows.into_iter().map(EmailView::from).collect(),
            total_count,
            total_exact,
            total_pages: (total_count + size - 1) / size,
            page: p.page,
            size: p.size,
            has_more,
        })
    }
}

fn filters(q: &mut QueryBuilder<'_, Postgres>, p: &SearchParams) {
    let mut first = true;
    let mut and = |q: &mut QueryBuilder<'_, Postgres>| {
        q.push(if first { " WHERE " } else { " AND " });
        first = false;
    };
    if let Some(ts) = &p.tsquery {
        and(q);
        q.push("search @@ to_tsquery('simple', ").push_bind(ts.clone()).push(")");
    }
    if let Some(status) = &p.status {
        and(q);
        q.push("status = ").push_bind(status.clone());
    }
    if let Some(from) = &p.from {
        and(q);
        q.push("from_address = ").push_bind(from.clone());
    }
    if let Some(to) = &p.to {
        and(q);
        q.push("recipients @> ARRAY[").push_bind(to.clone()).push("]::text[]");
    }
    if let Some(since) = p.since {
        and(q);
        q.push("created_at >= ").push_bind(since);
    }
    if let Some(until) = p.until {
        and(q);
        q.push("created_at < ").push_bind(until);
    }
}
