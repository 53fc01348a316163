//! Runs one projection: take its advisory lock (or stand by), then catch up on the
//! feed, and after that wake on `NOTIFY mailledger_events` (through the process's
//! [`crate::store::notify::Notifier`]) with a polling fallback.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Feed, Projection, ProjectionKind};
use crate::store::feed::{self, Checkpoint};
use crate::store::raw;
use crate::store::tail::Tail;
use crate::store::upcast::{UPCASTERS, Upcaster};
use crate::store::{checkpoints, notify};

/// Namespace of mailledger's advisory locks (first key of the two-key form; the second
/// names what is locked).
pub const LOCK_NAMESPACE: i32 = 0x6d6c_6472; // "mldr"
/// How often a leader asks its lock's session whether it is still alive.
const LOCK_CHECK: Duration = Duration::from_secs(1);

/// Tuning of a runner.
#[derive(Debug, Clone, Copy)]
pub struct RunnerOptions {
    /// Events per batch (and per transaction).
    pub batch_size: i64,
    /// Bytes of events per batch, about (at least one event): what a batch, and a
    /// projection retrying it, holds in memory.
    pub batch_bytes: i64,
    /// How often to look for events when no notification comes.
    pub poll_interval: Duration,
    /// How often a standby instance tries to take the lock.
    pub standby_interval: Duration,
    /// After a wake-up, how long to let events gather before reading them: one batch
    /// of many events costs far less than many batches of one.
    pub coalesce: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batch_bytes: 16 * 1024 * 1024,
            poll_interval: Duration::from_secs(1),
            standby_interval: Duration::from_secs(2),
            coalesce: Duration::from_millis(20),
        }
    }
}

/// Drives one projection.
#[derive(Clone)]
pub struct Runner {
    pool: PgPool,
    projection: Arc<dyn Projection>,
    options: RunnerOptions,
    wake: Option<watch::Receiver<u64>>,
    upcasters: &'static [Upcaster],
    tail: Option<Tail>,
}

impl Runner {
    /// A runner for `projection` on `pool`.
    pub fn new(pool: PgPool, projection: Arc<dyn Projection>, options: RunnerOptions) -> Self {
        Self { pool, projection, options, wake: None, upcasters: UPCASTERS, tail: None }
    }

    /// Reads the email feed through `tail`, shared with the process's other projections.
    pub fn with_tail(mut self, tail: Tail) -> Self {
        self.tail = Some(tail);
        self
    }

    /// Reads old event versions with these upcasters (the production set by default).
    pub fn with_upcasters(mut self, upcasters: &'static [Upcaster]) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Wakes on these ticks (see [`notify::Notifier::events`]) besides polling.
    pub fn wake_on(mut self, wake: watch::Receiver<u64>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Applies the next batch after the checkpoint, and moves the checkpoint: the single
    /// step tests drive. Returns how many events were applied.
    pub async fn try_execute_once(&self) -> anyhow::Result<usize> {
        Ok(self.step().await?.0)
    }

    /// One batch: (events applied, whether the checkpoint moved, whether the read took
    /// everything there was). A batch of other aggregates' events only applies nothing
    /// and still moves it.
    async fn step(&self) -> anyhow::Result<(usize, bool, bool)> {
        let name = self.projection.name();
        let mut tx = self.pool.begin().await?;
        // A projection can always be rebuilt from the store: its commits need not wait for
        // the disk. A crash loses at most its last moments, which it then applies again.
        sqlx::query("SET LOCAL synchronous_commit TO off").execute(&mut *tx).await?;
        let at = checkpoints::load(&mut tx, name).await?;
        match self.projection.feed() {
            Feed::Emails => {}
            Feed::Everything => return self.apply_raw(tx, at, None).await.map(|n| (n, n > 0, false)),
            Feed::Aggregate(kind) => return self.apply_raw(tx, at, Some(kind)).await.map(|n| (n, n > 0, false)),
        }
        let (limit, bytes) = (self.options.batch_size, self.options.batch_bytes);
        let batch = match &self.tail {
            Some(tail) => tail.read_after(&mut tx, at, limit, bytes, self.upcasters).await?,
            None => feed::read_after(&mut tx, at, limit, bytes, self.upcasters).await?,
        };
        let Some(last) = batch.reached else {
            tx.commit().await?;
            return Ok((0, false, true));
        };
        let events = &batch.events;
        match self.projection.kind() {
            ProjectionKind::Transactional => {
                if !events.is_empty() {
                    self.projection.apply(&mut tx, events).await?;
                }
                checkpoints::save(&mut tx, name, last).await?;
                tx.commit().await?;
            }
            ProjectionKind::SideEffecting => {
                // Finish the read transaction first: side effects must not hold it open.
                tx.commit().await?;
                let mut conn = self.pool.acquire().await?;
                if !events.is_empty() {
                    self.projection.apply(&mut conn, events).await?;
                }
                let mut tx = conn.begin().await?;
                sqlx::query("SET LOCAL synchronous_commit TO off").execute(&mut *tx).await?;
                checkpoints::save(&mut tx, name, last).await?;
                tx.commit().await?;
            }
        }
        crate::metrics::PROJECTED.with_label_values(&[name]).inc_by(events.len() as u64);
        if crate::telemetry::otel_enabled() {
            // One short span per event, in the trace that caused it.
            for e in events.iter() {
                let span = tracing::info_span!("projection.applied", projection = name, event = %e.event_type, trace_id = tracing::field::Empty);
                crate::telemetry::continue_trace(&span, &crate::telemetry::MetadataCarrier(&e.metadata));
            }
        }
        Ok((events.len(), true, batch.drained))
    }

    /// [`Self::try_execute_once`] for a projection of every aggregate's events, as
    /// stored.
    async fn apply_raw(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        at: Checkpoint,
        only: Option<&'static str>,
    ) -> anyhow::Result<usize> {
        let name = self.projection.name();
        let events = match only {
            None => raw::read_after(&mut tx, at, self.options.batch_size, self.options.batch_bytes).await?,
            Some(kind) => raw::read_after_of(&mut tx, kind, at, self.options.batch_size).await?,
        };
        let Some(last) = events.last().map(|e| e.checkpoint) else {
            tx.commit().await?;
            return Ok(0);
        };
        match self.projection.kind() {
            ProjectionKind::Transactional => {
                self.projection.apply_raw(&mut tx, &events).await?;
                checkpoints::save(&mut tx, name, last).await?;
                tx.commit().await?;
            }
            ProjectionKind::SideEffecting => {
                tx.commit().await?;
                let mut conn = self.pool.acquire().await?;
                self.projection.apply_raw(&mut conn, &events).await?;
                let mut tx = conn.begin().await?;
                sqlx::query("SET LOCAL synchronous_commit TO off").execute(&mut *tx).await?;
                checkpoints::save(&mut tx, name, last).await?;
                tx.commit().await?;
            }
        }
        crate::metrics::PROJECTED.with_label_values(&[name]).inc_by(events.len() as u64);
        Ok(events.len())
    }

    /// Applies batches until the feed has nothing more below its horizon.
    pub async fn catch_up(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            // A batch that took everything below the horizon (fewer rows than asked for,
            // not cut by its byte budget) ends it without another read to find nothing:
            // what commits meanwhile is announced, and read on that wake.
            let (n, moved, drained) = self.step().await?;
            total += n;
            if !moved || drained {
                return Ok(total);
            }
        }
    }

    /// The projection's checkpoint now.
    pub async fn checkpoint(&self) -> anyhow::Result<Checkpoint> {
        let mut conn = self.pool.acquire().await?;
        Ok(checkpoints::load(&mut conn, self.projection.name()).await?)
    }

    /// Runs until `shutdown`: standby until the lock is ours, then follow the feed.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.projection.name();
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(true) => {}
                Ok(false) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(self.options.standby_interval) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(projection = name, error = format!("{e:#}"), "projection interrupted; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        tracing::info!(projection = name, "projection stopped");
    }

    /// Takes the lock if free and follows the feed while holding it. Ok(false): another
    /// instance holds it.
    async fn lead(&self, shutdown: &CancellationToken) -> anyhow::Result<bool> {
        let name = self.projection.name();
        // A connection of its own: the lock lives exactly as long as this session.
        let mut lock = PgConnection::connect_with(&self.pool.connect_options()).await.context("lock connection")?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(LOCK_NAMESPACE)
            .bind(name)
            .fetch_one(&mut lock)
            .await?;
        if !got {
            return Ok(false);
        }
        tracing::info!(projection = name, "projection leading");
        let mut wake = self.wake.clone();
        let mut failures = 0u32;
        let mut checked = std::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            // Still ours? If the lock's session died, another instance may lead now. Asked
            // at most once a second, not on every wake (it was one statement in seven at a
            // moderate load): until the answer, two leaders may both step, and the
            // checkpoint's row lock still puts their batches one after the other.
            if checked.elapsed() >= LOCK_CHECK {
                sqlx::query("SELECT 1").execute(&mut lock).await.context("lock connection lost")?;
                checked = std::time::Instant::now();
            }
            match self.catch_up().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    let wait = Duration::from_millis(200 * u64::from(failures.min(50)));
                    tracing::warn!(projection = name, error = format!("{e:#}"), retry_in = ?wait, "projection batch failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = notify::wait(&mut wake, self.options.poll_interval) => {}
            }
            tokio::time::sleep(self.options.coalesce).await;
        }
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(LOCK_NAMESPACE)
            .bind(name)
            .execute(&mut lock)
            .await;
        let _ = lock.close().await;
        Ok(true)
    }
}
