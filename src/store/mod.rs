//! The event store: the one owner of every statement on `events`, `snapshots`,
//! `projection_checkpoints` and of the commit announcements. Nothing outside this
//! module names those tables.
//!
//! # The table
//! postgres-es's `events` (`aggregate_type, aggregate_id, sequence, event_type,
//! event_version, payload, metadata`) with three more columns: `position` (bigserial,
//! global insertion order), `txid` (`xid8`, the writing transaction) and `recorded_at`.
//! Readers tail it in commit order through `(txid, position)` ([`feed`]).
//!
//! # Two write paths
//! - **New emails** ([`EventStore::append_new`], [`append`]): a new email's history is
//!   empty by definition, so its events go in without loading anything, group-committed
//!   with every other new email waiting at that moment: one `INSERT … UNNEST`, one
//!   durable commit. `ON CONFLICT DO NOTHING` reports an email that already exists,
//!   and only that one takes the second path.
//! - **Every later command** ([`EventStore::execute`]): cqrs-es on postgres-es loads the
//!   email's events (through the [`upcast`]ers), lets the aggregate decide, and appends
//!   with an optimistic check on `sequence` (a concurrent writer is an
//!   `AggregateConflict`, retried by the caller).
//!
//! Both paths write the same rows; after either commit the writer calls
//! [`notify::Announcer::committed`] so projections here and on other instances wake.
//!
//! # Reading
//! [`feed`] (every event in commit order, never skipping a late commit; one email's
//! events), [`raw`] (every aggregate's events exactly as stored, for the proof log),
//! [`tail`] (recent batches of the feed, read once for every projection of the process),
//! [`checkpoints`] (where each projection stands), [`replay`] (time windows, streamed),
//! [`stats`] (head, counts, lag).

pub(crate) mod append;
pub(crate) mod checkpoints;
mod db;
pub mod feed;
pub mod notify;
pub mod raw;
pub(crate) mod records;
pub(crate) mod replay;
pub(crate) mod stats;
pub mod tail;
pub mod upcast;

use std::collections::HashMap;
use std::sync::Arc;

use cqrs_es::AggregateError;
use cqrs_es::persist::PersistedEventStore;
use postgres_es::{PostgresCqrs, PostgresEventRepository};
use sqlx::PgPool;
use uuid::Uuid;

pub use db::{MIGRATOR, connect, connect_replica, is_unavailable, migrate};

use crate::command::{Email, EmailCommand, EmailError, EmailServices};
use append::{AppendError, Appended, Appender, NewEvents};

/// The current time at PostgreSQL's precision (microseconds), so a time read back from
/// a column equals the one in the event.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

/// The event store, as the write side uses it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct EventStore {
    pool: PgPool,
    cqrs: Arc<PostgresCqrs<Email>>,
    appender: Appender,
}

impl EventStore {
    /// The store on `pool` (already migrated), handing `services` to the aggregate.
    /// Starts the group-commit writers, so it must be called inside a Tokio runtime.
    pub(crate) fn new(pool: PgPool, services: EmailServices) -> Self {
        let events = PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()))
            .with_upcasters(upcast::for_cqrs());
        let cqrs = cqrs_es::CqrsFramework::new(events, vec![], services);
        Self { cqrs: Arc::new(cqrs), appender: Appender::start(pool.clone()), pool }
    }

    /// Appends events decided outside cqrs-es (the first write path: a new email's
    /// whole history, or an attempt's outcome after the history it was decided on);
    /// returns once they are committed, or reports that those sequences are taken.
    pub(crate) async fn append(&self, email: NewEvents) -> Result<Appended, AppendError> {
        self.appender.append(email).await
    }

    /// Whether the store answers at all: one trivial read of `events`. Tells a store that
    /// is down or broken (every command fails) from one that refuses one command.
    pub(crate) async fn probe(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1 FROM events LIMIT 1").execute(&self.pool).await.map(|_| ())
    }

    /// The tenant email `id` belongs to (`None`: no such email). Emails recorded before
    /// tenants existed belong to `default`.
    pub(crate) async fn tenant_of(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        feed::tenant_of(&self.pool, id).await
    }

    /// Runs `command` on the email `id` through cqrs-es (the second write path): load,
    /// decide, append with an optimistic check.
    pub(crate) async fn execute(
        &self,
        id: Uuid,
        command: EmailCommand,
        metadata: HashMap<String, String>,
    ) -> Result<(), AggregateError<EmailError>> {
        self.cqrs.execute_with_metadata(&id.to_string(), command, metadata).await
    }
}
