//! Reads from a PostgreSQL streaming replica (`MAILLEDGER_DATABASE_READ_URL`).
//!
//! Lookups, searches, histories and as-of reads go to the replica while it is close enough
//! behind the primary (`database.read_max_lag`); writes, the feed and projections never
//! leave the primary. A monitor compares the replica's replayed WAL position with the
//! primary's every half second: how far behind it is (bytes and seconds) is a metric, and
//! a replica too far behind, or unreachable, is not read from until it catches up.
//!
//! Read-your-writes: an answer to a write carries `X-Min-Position`, the primary's WAL
//! position once the write committed (see [`crate::transport::consistency`]). A read that
//! sends it back is served by the replica only when the replica has replayed that far,
//! else by the primary. A lookup by id the replica does not (yet) have is asked of the
//! primary before it is called unknown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::repository::Repository;

tokio::task_local! {
    /// The `X-Min-Position` of the request being served, if it sent one.
    pub static MIN_POSITION: Option<Lsn>;
}

/// A WAL position (`pg_lsn`), comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `16/B374D848` → the position; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (high, low) = text.trim().split_once('/')?;
        if high.is_empty() || low.is_empty() || high.len() > 8 || low.len() > 8 {
            return None;
        }
        let high = u64::from_str_radix(high, 16).ok()?;
        let low = u64::from_str_radix(low, 16).ok()?;
        Some(Self((high << 32) | low))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Where the replica stands, as the monitor last saw it.
#[derive(Default)]
struct State {
    replayed: AtomicU64,
    usable: AtomicBool,
}

/// The replica's reads and its state.
#[derive(Clone)]
pub struct Replica {
    pub(super) repo: Repository,
    primary: PgPool,
    pool: PgPool,
    state: Arc<State>,
}

impl Replica {
    /// Reads on `pool` (the replica); `primary` is asked how far the log has gone.
    pub fn new(pool: PgPool, primary: PgPool) -> Self {
        Self { repo: Repository::new(pool.clone()), primary, pool, state: Arc::default() }
    }

    /// Whether a read that needs `min` (if anything) may be served here now.
    pub fn serves(&self, min: Option<Lsn>) -> bool {
        self.state.usable.load(Ordering::Acquire)
            && min.is_none_or(|m| m.0 <= self.state.replayed.load(Ordering::Acquire))
    }

    /// The primary's WAL position now: after a write has committed, a read that waits for
    /// this position sees it.
    pub async fn write_position(&self) -> Option<Lsn> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&self.primary).await.ok()?;
        text.as_deref().and_then(Lsn::parse)
    }

    /// Watches the replica every half second until `stop`, at most `max_lag` behind to be
    /// read from.
    pub async fn monitor(self, max_lag: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut was_usable = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let usable = match self.lag().await {
                Ok((replayed, Some((behind_bytes, behind_seconds)))) => {
                    self.state.replayed.store(replayed.0, Ordering::Release);
                    crate::metrics::REPLICA_LAG_BYTES.set(behind_bytes);
                    crate::metrics::REPLICA_LAG_SECONDS.set(behind_seconds);
                    behind_seconds <= max_lag.as_secs_f64()
                }
                // The primary cannot be asked (restarting, failing over): nothing new is
                // written meanwhile, so the replica serves reads as it did.
                Ok((replayed, None)) => {
                    self.state.replayed.store(replayed.0, Ordering::Release);
                    self.state.usable.load(Ordering::Acquire)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the read replica cannot be reached");
                    false
                }
            };
            self.state.usable.store(usable, Ordering::Release);
            crate::metrics::REPLICA_USABLE.set(i64::from(usable));
            if was_usable != Some(usable) {
                if usable {
                    tracing::info!("reading from the replica");
                } else {
                    tracing::warn!(max_lag = ?max_lag, "the replica is unreachable or too far behind: reading from the primary");
                }
                was_usable = Some(usable);
            }
        }
    }

    /// The replica's replayed position and, when the primary can be asked, how many bytes
    /// of WAL it is behind and for how long (seconds since the last transaction it
    /// replayed; 0 when it has replayed everything).
    pub async fn lag(&self) -> sqlx::Result<(Lsn, Option<(i64, f64)>)> {
        let (replayed, age): (Option<String>, Option<f64>) = sqlx::query_as(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text, \
                    CASE WHEN pg_is_in_recovery() \
                         THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 ELSE 0 END",
        )
        .fetch_one(&self.pool)
        .await?;
        let replayed = replayed.as_deref().and_then(Lsn::parse).unwrap_or(Lsn(0));
        let behind: Option<i64> =
            sqlx::query_scalar("SELECT greatest(pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn), 0)::bigint")
                .bind(replayed.to_string())
                .fetch_one(&self.primary)
                .await
                .ok();
        let lag = behind.map(|bytes| (bytes, if bytes == 0 { 0.0 } else { age.unwrap_or(f64::INFINITY).max(0.0) }));
        Ok((replayed, lag))
    }
}

/// The `status` line: where the replica stands.
pub async fn status_line(replica: &Replica, max_lag: Duration) -> String {
    let within = humantime::format_duration(max_lag);
    match replica.lag().await {
        Ok((replayed, Some((bytes, seconds)))) => {
            let verdict = if seconds <= max_lag.as_secs_f64() { "read from" } else { "NOT read from (too far behind)" };
            format!(
                "read replica: replayed to {replayed}, {bytes} bytes ({seconds:.1} s) behind the primary; {verdict} (limit {within})"
            )
        }
        Ok((replayed, None)) => {
            format!("read replica: replayed to {replayed}; the primary cannot be asked how far behind")
        }
        Err(e) => format!("read replica: unreachable ({e}); reads go to the primary"),
    }
}

/// The `X-Min-Position` of the request being served.
pub fn min_position() -> Option<Lsn> {
    MIN_POSITION.try_with(|m| *m).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_compare_and_print_as_postgresql_does() {
        let a = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(a.0, (0x16 << 32) | 0xB374D848);
        assert_eq!(a.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/0").unwrap() < Lsn::parse("0/1").unwrap());
        assert!(Lsn::parse("0/FFFFFFFF").unwrap() < Lsn::parse("1/0").unwrap());
        for bad in ["", "/", "1/", "/1", "x/1", "1/1/1", "123456789/0", "-1/0", "1"] {
            assert_eq!(Lsn::parse(bad), None, "{bad:?}");
        }
    }
}
