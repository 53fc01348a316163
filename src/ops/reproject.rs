//! Re-projection without downtime: rebuild a projection from position zero into a
//! shadow table while the live one keeps serving (and its projection keeps running),
//! then catch up and swap the two atomically.
//!
//! 1. `<table>_shadow` is created like the live table, with only its primary key.
//! 2. The feed is applied from the start in large batches (multi-row upserts), the
//!    shadow's checkpoint kept as `<name>__shadow`; the next batch is read while one
//!    is written, and each batch is written by [`writers`] connections at once, each
//!    taking the emails whose id falls in its share (an email's events all go to one
//!    writer, so each folds whole histories), so the rows are written on every core.
//! 3. The live table's other indexes are built on the shadow, which is vacuumed and
//!    analysed.
//! 4. One transaction: lock the live projection's checkpoint row (its runner waits
//!    between two batches), apply what is left of the feed to the shadow, take over
//!    active delivery leases, rename live → old and shadow → live, drop old, give the
//!    indexes their names back, and move the live checkpoint to the shadow's.
//!
//! Readers wait a moment on the final lock and then see the new table: never an empty
//! or half-built one. The Redis cache needs no shadow: its views are written by
//! version, so re-projecting it rewrites every view in place.

use std::time::Instant;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};

use super::progress::Progress;
use crate::projections::Projection;
use crate::projections::cache::CacheProjection;
use crate::projections::emails::EmailsProjection;
use crate::query::cache::Cache;
use crate::saga::schedule::ScheduleProjection;
use crate::store::checkpoints;
use crate::store::feed::{self, Checkpoint, FeedEvent};
use crate::store::upcast::Upcaster;

/// What can be re-projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The `emails` read model.
    Emails,
    /// The delivery schedule.
    Schedule,
    /// The Redis view cache.
    Cache,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "emails" => Ok(Target::Emails),
            "schedule" | "deliveries" => Ok(Target::Schedule),
            "cache" => Ok(Target::Cache),
            other => Err(format!("no projection {other:?}; choose emails, schedule or cache")),
        }
    }
}

/// How a rebuild went.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Events applied.
    pub events: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Of those, writing the rows (the feed from position zero into the shadow).
    pub load_seconds: f64,
    /// Of those, building the indexes and vacuuming the shadow.
    pub index_seconds: f64,
}

/// Bytes of events per batch, about: a rebuild's memory stays flat whatever the bodies.
const BATCH_BYTES: i64 = 64 * 1024 * 1024;

struct Shape {
    name: &'static str,
    table: &'static str,
    key: &'static str,
}

fn shape(target: Target) -> Shape {
    match target {
        Target::Emails => Shape { name: "emails", table: "emails", key: "id" },
        Target::Schedule => Shape { name: "schedule", table: "deliveries", key: "email_id" },
        Target::Cache => Shape { name: "cache", table: "", key: "" },
    }
}

/// Rebuilds `target` while everything keeps running.
pub async fn reproject(
    pool: &PgPool,
    target: Target,
    cache: Option<Cache>,
    batch: i64,
    upcasters: &'static [Upcaster],
    progress: &dyn Progress,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let total = crate::store::stats::count(pool).await?;
    progress.start(total.max(0) as u64);
    if target == Target::Cache {
        let cache = cache.context("the cache needs Redis settings")?;
        let projection = CacheProjection::new(cache);
        let mut reader = pool.acquire().await?;
        let events =
            apply_all(&mut reader, &mut conn, &projection, Checkpoint::default(), batch, upcasters, progress, None)
                .await?;
        let seconds = started.elapsed().as_secs_f64();
        return Ok(Report { events, seconds, load_seconds: seconds, index_seconds: 0.0 });
    }
    let s = shape(target);
    let shadow = format!("{}_shadow", s.table);
    let shadow_checkpoint = format!("{}__shadow", s.name);
    let projection: Box<dyn Projection> = match target {
        Target::Emails => Box::new(EmailsProjection::into_table(&shadow)),
        _ => Box::new(ScheduleProjection::into_table(&shadow)),
    };

    // 1. An empty shadow with the live table's columns, defaults and primary key.
    sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}")).execute(&mut *conn).await?;
    sqlx::query(&format!(
        "CREATE TABLE {shadow} (LIKE {live} INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)",
        live = s.table
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!("ALTER TABLE {shadow} ADD PRIMARY KEY ({})", s.key)).execute(&mut *conn).await?;

    // 2. Everything from position zero, in big batches, on several connections.
    let mut reader = pool.acquire().await?;
    // Writers, and the reader beside them, within the pool.
    let n = writers().min((pool.options().get_max_connections() as usize).saturating_sub(1)).max(1);
    let mut others = Vec::new();
    for _ in 1..n {
        others.push(pool.acquire().await?);
    }
    let mut writing: Vec<&mut PgConnection> = vec![&mut *conn];
    writing.extend(others.iter_mut().map(|c| &mut **c));
    let mut events =
        load_all(&mut reader, &mut writing, projection.as_ref(), batch, upcasters, progress, &shadow_checkpoint)
            .await?;
    drop(writing);
    drop(others);
    let load_seconds = started.elapsed().as_secs_f64();

    // 3. The other indexes, built once on the full table.
    progress.message("building indexes");
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 \
         AND indexname <> $2",
    )
    .bind(s.table)
    .bind(format!("{}_pkey", s.table))
    .fetch_all(&mut *conn)
    .await?;
    for (name, def) in &indexes {
        let def = def.replacen(&format!("INDEX {name} ON"), &format!("INDEX {name}__shadow ON"), 1).replacen(
            &format!(".{} USING", s.table),
            &format!(".{shadow} USING"),
            1,
        );
        sqlx::query(&def).execute(&mut *conn).await.with_context(|| format!("building {def}"))?;
    }

    // The planner needs statistics for the new table from its first query on, and
    // searches need its visibility map to count from the indexes alone (a second or so
    // at a million rows; without it, counts read the table and run slower until
    // autovacuum comes by).
    sqlx::query(&format!("VACUUM (ANALYZE) {shadow}")).execute(&mut *conn).await?;

    let index_seconds = started.elapsed().as_secs_f64() - load_seconds;

    // 4. Catch up and swap, in one transaction.
    progress.message("swapping");
    let mut tx = conn.begin().await?;
    checkpoints::ensure(&mut tx, s.name).await?;
    checkpoints::load(&mut tx, s.name).await?; // waits for the live runner's batch, then holds it off
    let at = checkpoints::load(&mut tx, &shadow_checkpoint).await?;
    events +=
        apply_all(&mut reader, &mut tx, projection.as_ref(), at, batch, upcasters, progress, Some(&shadow_checkpoint))
            .await?;
    if target == Target::Schedule {
        // Leases held by senders right now stay held.
        sqlx::query(&format!(
            "UPDATE {shadow} s SET lease_owner = d.lease_owner, lease_until = d.lease_until FROM deliveries d \
             WHERE d.email_id = s.email_id AND d.lease_until > now()"
        ))
        .execute(&mut *tx)
        .await?;
    }
    let live = s.table;
    sqlx::query(&format!("LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")).execute(&mut *tx).await?;
    sqlx::query(&format!("ALTER TABLE {live} RENAME TO {live}__old")).execute(&mut *tx).await?;
    sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {live}")).execute(&mut *tx).await?;
    sqlx::query(&format!("DROP TABLE {live}__old")).execute(&mut *tx).await?;
    sqlx::query(&format!("ALTER INDEX {shadow}_pkey RENAME TO {live}_pkey")).execute(&mut *tx).await?;
    for (name, _) in &indexes {
        sqlx::query(&format!("ALTER INDEX {name}__shadow RENAME TO {name}")).execute(&mut *tx).await?;
    }
    if target == Target::Schedule {
        sqlx::query(
            "CREATE TRIGGER deliveries_notify AFTER INSERT OR UPDATE OF due_at ON deliveries \
             FOR EACH STATEMENT EXECUTE FUNCTION mailledger_deliveries_notify()",
        )
        .execute(&mut *tx)
        .await?;
    }
    let done = checkpoints::load(&mut tx, &shadow_checkpoint).await?;
    checkpoints::save(&mut tx, s.name, done).await?;
    checkpoints::remove(&mut tx, &shadow_checkpoint).await?;
    tx.commit().await?;
    Ok(Report { events, seconds: started.elapsed().as_secs_f64(), load_seconds, index_seconds })
}

/// Connections that write a rebuild's rows at once: one per core, two to four, fewer when
/// the pool is smaller. (Besides them, a rebuild holds one more, reading the feed.)
pub fn writers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4)
}

/// Applies the whole feed to a shadow on every connection of `writers` at once: each
/// batch is split by email id, each share applied and committed on its own connection
/// (an email's events always land in one share, in order), then the shadow's checkpoint
/// is saved. A rebuild that stops half-way starts again from an empty shadow, so the
/// shares need no common transaction; the catch-up before the swap is applied in one
/// ([`apply_all`]). The next batch is read while one is written.
async fn load_all(
    reader: &mut PgConnection,
    writers: &mut [&mut PgConnection],
    projection: &dyn Projection,
    batch: i64,
    upcasters: &'static [Upcaster],
    progress: &dyn Progress,
    checkpoint: &str,
) -> anyhow::Result<u64> {
    let n = writers.len().max(1);
    let mut applied = 0u64;
    let mut next = feed::read_after(reader, Checkpoint::default(), batch, BATCH_BYTES, upcasters).await?;
    while let Some(last) = next.reached {
        let events = std::mem::take(&mut next).events;
        let count = events.len() as u64;
        let mut shares: Vec<Vec<FeedEvent>> = (0..n).map(|_| Vec::with_capacity(events.len() / n + 1)).collect();
        for e in events.iter() {
            shares[share_of(e.email_id, n)].push(e.clone());
        }
        let writes = futures::future::try_join_all(writers.iter_mut().zip(shares).map(|(conn, share)| async move {
            if !share.is_empty() {
                let mut tx = conn.begin().await?;
                projection.apply(&mut tx, &share).await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        }));
        let (written, read) = tokio::join!(writes, feed::read_after(reader, last, batch, BATCH_BYTES, upcasters));
        written?;
        next = read?;
        checkpoints::save(&mut *writers[0], checkpoint, last).await?;
        applied += count;
        progress.advance(count);
    }
    Ok(applied)
}

/// Which of `n` writers applies the events of `email_id`.
fn share_of(email_id: uuid::Uuid, n: usize) -> usize {
    (email_id.as_u128() % n as u128) as usize
}

/// Applies the feed after `from` until nothing is left below the horizon; with a
/// checkpoint name, keeps that checkpoint (in the same transaction as each batch).
///
/// The next batch is read on `reader` while this one is applied on `conn`: reading
/// and decoding the events (mostly this process's work) overlaps writing the rows
/// (mostly PostgreSQL's), instead of each waiting for the other.
#[allow(clippy::too_many_arguments)]
async fn apply_all(
    reader: &mut PgConnection,
    conn: &mut PgConnection,
    projection: &dyn Projection,
    from: Checkpoint,
    batch: i64,
    upcasters: &'static [Upcaster],
    progress: &dyn Progress,
    checkpoint: Option<&str>,
) -> anyhow::Result<u64> {
    let mut applied = 0u64;
    let mut next = feed::read_after(reader, from, batch, BATCH_BYTES, upcasters).await?;
    while let Some(last) = next.reached {
        let events = std::mem::take(&mut next).events;
        let mut tx = conn.begin().await?;
        let apply = async {
            if !events.is_empty() {
                projection.apply(&mut tx, &events).await?;
            }
            if let Some(name) = checkpoint {
                checkpoints::save(&mut tx, name, last).await?;
            }
            anyhow::Ok(())
        };
        let (written, read) = tokio::join!(apply, feed::read_after(reader, last, batch, BATCH_BYTES, upcasters));
        written?;
        next = read?;
        tx.commit().await?;
        applied += events.len() as u64;
        progress.advance(events.len() as u64);
    }
    Ok(applied)
}
