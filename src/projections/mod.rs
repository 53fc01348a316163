//! Projections: everything derived from the event store, each tailing the
//! [feed](crate::store::feed) with its own checkpoint, run by a [`runner::Runner`].
//!
//! | projection | kind | what it keeps |
//! |---|---|---|
//! | [`emails`] | transactional | the `emails` read model (rows and checkpoint commit together: exactly-once effect) |
//! | [`cache`] | side-effecting, idempotent by version | the Redis view cache (at-least-once; older views never overwrite newer ones) |
//! | `schedule` ([`crate::saga::schedule`]) | transactional | the delivery schedule the sender claims from |
//! | [`events`] | side-effecting, idempotent by message id | domain events on NATS (`mail.events.<kind>`, `mail.dlq.emails`) |
//! | `nats_suppressions` ([`events::SuppressionPublisher`]) | side-effecting, `Suppression` events only | suppression-list changes on NATS (`mail.events.suppression_added` / `_removed`) |
//! | `webhooks` ([`crate::webhooks::projection`]) | transactional | one `webhook_deliveries` row per endpoint and event (sent by [`crate::webhooks::dispatch`]) |
//! | `proof` ([`crate::proof::sealer`]) | transactional, every aggregate ([`Feed::Everything`]) | the proof log's Merkle tree and signed checkpoints |
//!
//! Each projection runs on one instance at a time ([`runner`], PostgreSQL advisory lock);
//! the others stand by and take over when the holder's session ends. Rebuilding one
//! from the start is an operator's tool: [`crate::ops::reproject`].

pub(crate) mod cache;
pub mod emails;
pub(crate) mod events;
pub mod runner;

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::store::feed::FeedEvent;
use crate::store::raw::RawEvent;

/// Which events a projection reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// Email events, decoded ([`Projection::apply`]); other aggregates are passed by.
    Emails,
    /// Every event of every aggregate, as stored ([`Projection::apply_raw`]): the proof
    /// log's sealer.
    Everything,
    /// The events of one other aggregate type, as stored ([`Projection::apply_raw`]):
    /// the publisher of suppression-list changes.
    Aggregate(&'static str),
}

/// How a projection's effects relate to its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectionKind {
    /// Writes PostgreSQL in the same transaction as its checkpoint: each event takes
    /// effect exactly once.
    Transactional,
    /// Writes elsewhere, then moves its checkpoint: at-least-once, so its writes must be
    /// idempotent (here: guarded by the view's version).
    SideEffecting,
}

/// A consumer of the event feed.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique name; also the checkpoint's and the advisory lock's.
    fn name(&self) -> &'static str;

    /// What kind of projection this is.
    fn kind(&self) -> ProjectionKind;

    /// Applies a batch of events, in feed order. `tx` is the open transaction the
    /// checkpoint will be written in (a transactional projection writes its rows there).
    async fn apply(&self, tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()>;

    /// Which events it reads (emails, by default).
    fn feed(&self) -> Feed {
        Feed::Emails
    }

    /// Applies a batch of every aggregate's events as stored, in feed order, in the
    /// transaction of the checkpoint (for [`Feed::Everything`]).
    async fn apply_raw(&self, _tx: &mut PgConnection, _events: &[RawEvent]) -> anyhow::Result<()> {
        anyhow::bail!("projection {} reads only email events", self.name())
    }
}
