//! Reads from PostgreSQL: one email and a search over the `emails` read model
//! ([`super::row`]), an email's history and its state as of an instant from the event
//! store ([`crate::store::feed`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::row::{self, SummaryRow, summary_columns};
use super::search::{COUNT_CAP, FilterKind, Page, SearchParams};
use super::view::{EmailSummary, EmailView};
use crate::store::{checkpoints, feed};

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

impl From<feed::StoredEvent> for HistoryEntry {
    fn from(e: feed::StoredEvent) -> Self {
        Self {
            event_type: e.event_type,
            sequence: e.sequence,
            position: e.position,
            version: e.event_version,
            recorded_at: e.recorded_at,
            payload: e.payload,
            metadata: e.metadata,
        }
    }
}

/// PostgreSQL reads.
#[derive(Clone)]
pub struct Repository {
    pool: PgPool,
    densities: Arc<Kept<bool>>,
    counts: Arc<Kept<Counted>>,
}

impl Repository {
    /// Reads on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, densities: Arc::default(), counts: Arc::default() }
    }

    /// The read model's row for `id`.
    pub async fn get(&self, id: Uuid) -> sqlx::Result<Option<EmailView>> {
        row::get(&self.pool, id).await
    }

    /// The email as it was at `at`, folded from the events recorded until then.
    pub async fn as_of(&self, id: Uuid, at: DateTime<Utc>) -> anyhow::Result<Option<EmailView>> {
        let mut conn = self.pool.acquire().await?;
        let events = feed::read_email(&mut conn, id, Some(at)).await?;
        Ok(EmailView::from_history(&events))
    }

    /// Every event of `id`, in order (empty for an unknown id).
    pub async fn history(&self, id: Uuid) -> sqlx::Result<Vec<HistoryEntry>> {
        Ok(feed::history(&self.pool, id).await?.into_iter().map(HistoryEntry::from).collect())
    }

    /// One page of a search, newest first, with a count capped at [`COUNT_CAP`].
    ///
    /// Left to itself the planner guesses how many emails a prefix `tsquery` matches,
    /// and a wrong guess costs: walking the newest-first index to find ten rare matches
    /// reads the whole table, sorting every match of a common word builds a bitmap of a
    /// million rows. So the plan is chosen from what the data shows:
    /// 1. a probe reads the newest [`PROBE`] emails (newest-first index, the hottest
    ///    pages) and filters them. When they hold the page, it is the answer — the
    ///    matches of the rest are all older. How dense the matches were there picks how
    ///    to count up to the cap: walking the same index (dense: a few pages hold the
    ///    cap) or the filters' indexes (sparse).
    /// 2. otherwise (rare or old matches, or a deep page) the capped count comes first;
    ///    up to [`COUNT_CAP`] matches are fetched through the filters' indexes and sorted
    ///    (`created_at + 0` keeps the planner off the order index), more are met by
    ///    walking the order index.
    ///
    /// Every statement is sent unnamed (not kept prepared): PostgreSQL plans it for its
    /// own words and fields each time. A statement kept prepared falls back to a generic
    /// plan after five runs, which for `invoice status:queued to:example.org` at a
    /// million emails took 98 ms at p95 where its own plan takes 23.
    ///
    /// The count waits for the probe only to learn which way to count. When the same
    /// search (the same words, fields and tenant; any page) was probed within
    /// [`DENSITY_KEPT`], the count takes the way that probe chose and runs beside the
    /// probe, on a second connection: a repeated search (the next page, a dashboard's
    /// refresh, a client polling) waits for the longer of the two rather than their sum.
    /// Either way of counting gives the same number (only its cost differs), so a
    /// density that has changed since costs time, never a wrong answer.
    ///
    /// A count is remembered, too (see [`Counted`]): the next search of the same key
    /// takes it instead of counting again while the read model is unchanged (the
    /// `emails` projection's checkpoint, read in the count's own snapshot, has not
    /// moved); and past the cap for good when the search filters only on what never
    /// changes in an email (its words, addresses, tenant, time), since new emails can
    /// only add matches to those. A search on state (`status:`, `is:bounced`,
    /// `is:suppressed`) is counted again whenever anything was projected.
    pub async fn search(&self, p: &SearchParams) -> sqlx::Result<Page<EmailSummary>> {
        if p.tsquery.as_deref() == Some("") {
            return Ok(Page::new(p, vec![], 0, false));
        }
        let wanted = p.offset() + i64::from(p.size) + 1;
        let key = search_key(p);
        let mut counted = None;
        if wanted <= PROBE {
            let mut q = QueryBuilder::<Postgres>::new("");
            push_probe(&mut q, p);
            let probe = q.build_query_as::<Probed>().persistent(false).fetch_all(&self.pool);
            let known = self.densities.get(&key, Some(DENSITY_KEPT));
            // Beside the probe: the remembered count if it still holds, else the count
            // the way the last probe chose, if one did.
            let early = async {
                if let Some(n) = self.remembered(&key).await? {
                    return Ok(Some(n));
                }
                match known {
                    Some(dense) => self.count(p, &key, dense).await.map(Some),
                    None => Ok(None),
                }
            };
            let (probed, early): (sqlx::Result<Vec<Probed>>, sqlx::Result<Option<i64>>) = tokio::join!(probe, early);
            let (probed, early) = (probed?, early?);
            if let Some(first) = probed.first() {
                let (matched, seen) = (first.matched, first.seen);
                let rows = probed.into_iter().map(|r| r.row).collect::<Vec<_>>();
                if seen < PROBE {
                    // The probe read every email: its count is the count.
                    return Ok(Page::new(p, rows, matched, false));
                }
                let dense = probe_is_dense(matched);
                self.densities.put(key.clone(), dense);
                if rows.len() as i64 > i64::from(p.size) {
                    let counted = match early {
                        Some(n) => n,
                        None => self.count(p, &key, dense).await?,
                    };
                    return Ok(Page::new(p, rows, counted, true));
                }
            }
            counted = early;
        }
        let counted = match counted {
            Some(n) => n,
            None => {
                // The remembered count, if it holds: asked here for a page past the probe,
                // beside the probe (above) for the others.
                let remembered = if wanted <= PROBE { None } else { self.remembered(&key).await? };
                match remembered {
                    Some(n) => n,
                    None => self.count(p, &key, false).await?,
                }
            }
        };
        let dense = counted > COUNT_CAP;
        let mut q = QueryBuilder::<Postgres>::new("");
        push_page(&mut q, p, dense);
        let rows: Vec<SummaryRow> = if dense && filtered(p) {
            let mut tx = self.walking_the_order_index().await?;
            let rows = q.build_query_as().persistent(false).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        } else {
            q.build_query_as().persistent(false).fetch_all(&self.pool).await?
        };
        Ok(Page::new(p, rows, counted, true))
    }

    /// What the last probe of the search `p` (any page) learned within
    /// [`DENSITY_KEPT`]: whether its matches were dense among the newest emails, the way
    /// the next search of it counts beside its probe. `None`: it counts after the probe.
    pub fn learned_density(&self, p: &SearchParams) -> Option<bool> {
        self.densities.get(&search_key(p), Some(DENSITY_KEPT))
    }

    /// The count remembered for the search `p` (any page), and whether it holds for
    /// good (`true`) or only while the read model is unchanged (`false`). `None`:
    /// nothing remembered, the next search of it counts.
    pub fn remembered_count(&self, p: &SearchParams) -> Option<(i64, bool)> {
        self.counts.get(&search_key(p), None).map(|c| (c.n, c.at.is_none()))
    }

    /// The remembered count of the search `key`, if it still holds.
    async fn remembered(&self, key: &str) -> sqlx::Result<Option<i64>> {
        let held = match self.counts.get(key, None) {
            None => None,
            Some(Counted { n, at: None }) => Some(n),
            Some(Counted { n, at: Some(at) }) => {
                let now = checkpoints::version(&self.pool, READ_MODEL).await?;
                (now.as_deref() == Some(at.as_str())).then_some(n)
            }
        };
        if held.is_some() {
            crate::metrics::SEARCH_COUNTS.with_label_values(&["remembered"]).inc();
        }
        Ok(held)
    }

    /// Counts the search `p` (see [`capped_count`](Self::capped_count)) and remembers
    /// the count under `key`.
    async fn count(&self, p: &SearchParams, key: &str, dense: bool) -> sqlx::Result<i64> {
        let (n, at) = self.capped_count(p, dense).await?;
        crate::metrics::SEARCH_COUNTS.with_label_values(&["counted"]).inc();
        let at = if n > COUNT_CAP && grows_only(p) { Some(None) } else { at.map(Some) };
        if let Some(at) = at {
            self.counts.put(key.to_owned(), Counted { n, at });
        }
        Ok(n)
    }

    /// Matches, counted up to `COUNT_CAP + 1`: along the newest-first index when they are
    /// `dense` (the cap is met within a few times as many rows), else through the
    /// filters' indexes (a bitmap, stopped at the cap); with the version of the read
    /// model it counted (in the same statement, so the same snapshot).
    async fn capped_count(&self, p: &SearchParams, dense: bool) -> sqlx::Result<(i64, Option<String>)> {
        let mut c = QueryBuilder::<Postgres>::new("SELECT (");
        push_count(&mut c, p, dense);
        c.push("), ");
        checkpoints::push_version(&mut c, READ_MODEL);
        if dense {
            let mut tx = self.walking_the_order_index().await?;
            let n = c.build_query_as().persistent(false).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            Ok(n)
        } else {
            c.build_query_as().persistent(false).fetch_one(&self.pool).await
        }
    }

    /// A transaction whose queries walk the newest-first index rather than build a
    /// bitmap of every match or scan the table, and alone: a few thousand rows are read
    /// sooner than parallel workers start (5 ms against 12 ms at 1M emails).
    async fn walking_the_order_index(&self) -> sqlx::Result<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        for setting in WALKING_THE_ORDER_INDEX {
            sqlx::query(setting).execute(&mut *tx).await?;
        }
        Ok(tx)
    }
}

/// The probe: the page among the newest [`PROBE`] emails, with how many of them
/// matched (`matched`) and how many there were (`seen`).
///
/// `matched` is a window over the matching rows only, and `seen` a count of its own
/// along the newest-first index (index-only): a window over all [`PROBE`] rows copied
/// every one of them, body and search document included, and took half the probe's time.
pub fn push_probe(q: &mut QueryBuilder<'_, Postgres>, p: &SearchParams) {
    let newest = |q: &mut QueryBuilder<'_, Postgres>, what: &str| {
        q.push(format!("(SELECT {what} FROM emails"));
        if let Some(tenant) = &p.tenant {
            q.push(" WHERE tenant = ").push_bind(tenant.clone());
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(PROBE).push(")");
    };
    q.push(format!("SELECT {}, count(*) OVER () AS matched, (SELECT count(*) FROM ", summary_columns(p.body_chars)));
    newest(q, "1");
    q.push(" AS seen_rows) AS seen FROM ");
    newest(q, "*");
    q.push(" AS probed");
    filters(q, p);
    q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(p.size) + 1);
    q.push(" OFFSET ").push_bind(p.offset());
}

/// The count of matches up to `COUNT_CAP + 1`; `dense`: along the newest-first index
/// (run it where [`Repository::search`] turns bitmaps and table scans off).
pub fn push_count(q: &mut QueryBuilder<'_, Postgres>, p: &SearchParams, dense: bool) {
    q.push("SELECT count(*) FROM (SELECT 1 FROM emails");
    filters(q, p);
    if dense {
        q.push(" ORDER BY created_at DESC, id DESC");
    }
    q.push(" LIMIT ").push_bind(COUNT_CAP + 1).push(") AS capped");
}

/// The page after the count: matches sorted (`created_at + 0` keeps the planner off
/// the order index) unless `dense` or unfiltered, then read along the order index.
pub fn push_page(q: &mut QueryBuilder<'_, Postgres>, p: &SearchParams, dense: bool) {
    q.push(format!("SELECT {} FROM emails", summary_columns(p.body_chars)));
    filters(q, p);
    q.push(if filtered(p) && !dense {
        " ORDER BY created_at + interval '0 s' DESC, id DESC LIMIT "
    } else {
        " ORDER BY created_at DESC, id DESC LIMIT "
    });
    q.push_bind(i64::from(p.size) + 1);
    q.push(" OFFSET ").push_bind(p.offset());
}

fn filtered(p: &SearchParams) -> bool {
    p.tsquery.is_some()
        || p.status.is_some()
        || p.from.is_some()
        || p.to.is_some()
        || p.filters.iter().any(|f| f.kind.narrows())
}

/// The settings under which the dense plans run (see `Repository::search`).
pub const WALKING_THE_ORDER_INDEX: [&str; 3] = [
    "SET LOCAL enable_bitmapscan = off",
    "SET LOCAL enable_seqscan = off",
    "SET LOCAL max_parallel_workers_per_gather = 0",
];

/// Whether `matched` of the [`PROBE`] newest emails make the matches dense enough to
/// count to the cap along the newest-first index (at most twice the cap in rows read).
pub fn probe_is_dense(matched: i64) -> bool {
    matched * 2 >= PROBE
}

/// Newest emails a search looks at first (see [`Repository::search`]).
pub const PROBE: i64 = 2_000;

/// How long a search's density, learned from its probe, picks how to count it.
pub const DENSITY_KEPT: Duration = Duration::from_secs(60);

/// The projection that writes `emails`: its version ([`checkpoints::version`]) is the
/// read model's.
const READ_MODEL: &str = "emails";

/// What a search is remembered under: `p` without its page (its words, fields, tenant).
fn search_key(p: &SearchParams) -> String {
    format!("{:?}", (&p.tenant, &p.tsquery, &p.status, &p.from, &p.to, p.since, p.until, &p.filters))
}

/// Whether the matches of `p` can only grow: it filters on nothing an email's later
/// events change (its status and its recipients' outcomes), and emails are never
/// removed from the read model, so a count past the cap stays past it.
fn grows_only(p: &SearchParams) -> bool {
    p.status.is_none()
        && p.filters
            .iter()
            .all(|f| !matches!(f.kind, FilterKind::Status(_) | FilterKind::Bounced | FilterKind::Suppressed))
}

/// A remembered count: `n` (up to `COUNT_CAP + 1`), holding while the read model is at
/// version `at`, or for good (`None`: past the cap, and the matches can only grow).
#[derive(Clone, Debug)]
struct Counted {
    n: i64,
    at: Option<String>,
}

/// Searches remembered at most, per instance (past it the oldest half is forgotten).
const SEARCHES_KEPT: usize = 1024;

/// What recent searches learned, per search (see [`search_key`]), held per instance and
/// at most [`SEARCHES_KEPT`] of them: the density of the matches among the newest emails
/// (a choice of plan), and the count (see [`Counted`]).
struct Kept<V>(Mutex<HashMap<String, (V, Instant)>>);

impl<V> Default for Kept<V> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<V: Clone> Kept<V> {
    /// What is kept under `key`, if it is younger than `max_age` (any age: `None`).
    fn get(&self, key: &str, max_age: Option<Duration>) -> Option<V> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.get(key).filter(|(_, at)| max_age.is_none_or(|max| at.elapsed() < max)).map(|(v, _)| v.clone())
    }

    fn put(&self, key: String, value: V) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= SEARCHES_KEPT && !kept.contains_key(&key) {
            let mut ages: Vec<Instant> = kept.values().map(|(_, at)| *at).collect();
            let (_, middle, _) = ages.select_nth_unstable(SEARCHES_KEPT / 2);
            let middle = *middle;
            kept.retain(|_, (_, at)| *at > middle);
        }
        kept.insert(key, (value, Instant::now()));
    }
}

/// A row of the probe, with how many of the probed emails matched and how many were read.
#[derive(sqlx::FromRow)]
struct Probed {
    #[sqlx(flatten)]
    row: SummaryRow,
    matched: i64,
    seen: i64,
}

impl Page<EmailSummary> {
    /// The page of `rows` (one more than the page size when there are more) for a
    /// search with `counted` matches, counted up to `COUNT_CAP + 1` when `capped`.
    fn new(p: &SearchParams, mut rows: Vec<SummaryRow>, counted: i64, capped: bool) -> Self {
        let offset = p.offset();
        let has_more = rows.len() > p.size as usize;
        rows.truncate(p.size as usize);
        let total_exact = !capped || counted <= COUNT_CAP;
        // Past the cap the count is a lower bound, and never below what paging has shown.
        let total_count =
            if total_exact { counted } else { COUNT_CAP.max(offset + rows.len() as i64 + i64::from(has_more)) };
        let size = i64::from(p.size);
        Page {
            items: rows.into_iter().map(EmailSummary::from).collect(),
            total_count,
            total_exact,
            total_pages: (total_count + size - 1) / size,
            page: p.page,
            size: p.size,
            has_more,
        }
    }
}

fn filters(q: &mut QueryBuilder<'_, Postgres>, p: &SearchParams) {
    let mut first = true;
    let mut and = |q: &mut QueryBuilder<'_, Postgres>| {
        q.push(if first { " WHERE " } else { " AND " });
        first = false;
    };
    if let Some(tenant) = &p.tenant {
        and(q);
        q.push("tenant = ").push_bind(tenant.clone());
    }
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
    for f in &p.filters {
        and(q);
        q.push(if f.negated { "NOT " } else { "" });
        push_filter(q, &f.kind);
    }
}

/// One field term, in parentheses. The domain columns and the partial indexes'
/// predicates are those of migrations/0009_search_fields.sql, written exactly so.
fn push_filter(q: &mut QueryBuilder<'_, Postgres>, f: &FilterKind) {
    match f {
        FilterKind::Status(s) => q.push("(status = ").push_bind(s.clone()).push(")"),
        FilterKind::FromAddress(a) => q.push("(from_address = ").push_bind(a.clone()).push(")"),
        FilterKind::FromDomain(d) => q.push("(from_domain = ").push_bind(d.clone()).push(")"),
        FilterKind::ToAddress(a) => q.push("(recipients @> ARRAY[").push_bind(a.clone()).push("]::text[])"),
        FilterKind::ToDomain(d) => q.push("(recipient_domains @> ARRAY[").push_bind(d.clone()).push("]::text[])"),
        FilterKind::Before(t) => q.push("(created_at < ").push_bind(*t).push(")"),
        FilterKind::After(t) => q.push("(created_at >= ").push_bind(*t).push(")"),
        FilterKind::HasHtml => q.push("(html IS NOT NULL)"),
        FilterKind::Bounced => q.push(r#"(deliveries @> '[{"status": "refused"}]')"#),
        FilterKind::Suppressed => q.push(r#"(deliveries @> '[{"status": "suppressed"}]')"#),
    };
}
