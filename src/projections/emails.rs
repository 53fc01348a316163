//! The `emails` read model (transactional): each batch folds its events onto the
//! current rows ([`crate::query::view::fold_batch`]) and writes them back — new rows in
//! one multi-row upsert, outcomes on existing rows in one narrow update of their state
//! columns ([`crate::query::row`]) — in the same transaction as the checkpoint. An
//! event at or below a row's `last_sequence` is skipped, so applying a batch twice
//! changes nothing.

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Projection, ProjectionKind};
use crate::command::EmailEvent;
use crate::query::row::{self, TABLE};
use crate::query::view::fold_batch;
use crate::store::feed::FeedEvent;

/// The `emails` projection, writing into `table` (a shadow table during a re-projection).
pub struct EmailsProjection {
    table: String,
}

impl EmailsProjection {
    /// The live projection, into `emails`.
    pub fn new() -> Self {
        Self::into_table(TABLE)
    }

    /// The same projection into another table with the same shape (a shadow).
    pub fn into_table(table: &str) -> Self {
        Self { table: table.into() }
    }
}

impl Default for EmailsProjection {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Projection for EmailsProjection {
    fn name(&self) -> &'static str {
        "emails"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Transactional
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        if self.table == TABLE {
            for e in events {
                crate::metrics::EVENTS_APPENDED.with_label_values(&[&e.event_type]).inc();
            }
        }
        // Emails whose history starts in this batch (their `Requested` is here) have no
        // row yet: new emails, the bulk of a busy batch and of every rebuild, cost no read.
        // Rows that exist and receive only outcomes (the bulk of a sending batch) are read
        // and written without their bodies; a row whose `Persisted` is here (split from
        // its `Requested` by a batch boundary) is read and written whole.
        let starts_here: HashSet<Uuid> = events.iter().filter(|e| e.sequence == 1).map(|e| e.email_id).collect();
        let whole: HashSet<Uuid> = events
            .iter()
            .filter(|e| matches!(e.event, EmailEvent::Requested(_) | EmailEvent::Persisted(_)))
            .map(|e| e.email_id)
            .collect();
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.email_id).filter(|id| !starts_here.contains(id)).collect();
        ids.sort_unstable();
        ids.dedup();
        let (full, outcomes): (Vec<Uuid>, Vec<Uuid>) = ids.into_iter().partition(|id| whole.contains(id));
        let mut current = row::load(tx, &self.table, &full).await?;
        current.extend(row::load_state(tx, &self.table, &outcomes).await?);
        let (rows, states): (Vec<_>, Vec<_>) =
            fold_batch(current, events).into_iter().partition(|view| whole.contains(&view.id));
        row::upsert(tx, &self.table, &rows).await?;
        row::update_state(tx, &self.table, &states).await?;
        Ok(())
    }
}
