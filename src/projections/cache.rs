//! The Redis view cache (side-effecting, at-least-once, idempotent by version): for
//! every email a batch touches, fold all its events (from the batch when it holds the
//! email's whole history, else from the feed's recent tail in memory, else from the
//! store) and write the view with its version. Replaying a batch rewrites the same
//! versions, which Redis ignores.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Projection, ProjectionKind};
use crate::query::cache::Cache;
use crate::query::view::EmailView;
use crate::store::feed::{self, FeedEvent};
use crate::store::tail::Tail;

/// The cache projection.
pub struct CacheProjection {
    cache: Cache,
    tail: Option<Tail>,
}

impl CacheProjection {
    /// Writes into `cache`.
    pub fn new(cache: Cache) -> Self {
        Self { cache, tail: None }
    }

    /// Finds the earlier events of an email in `tail` (the feed it follows, in memory)
    /// before reading them from the store. During sending, most of a batch is outcomes
    /// of emails requested moments before: their `Requested` and `Persisted` are there.
    pub fn with_tail(mut self, tail: Tail) -> Self {
        self.tail = Some(tail);
        self
    }
}

#[async_trait]
impl Projection for CacheProjection {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::SideEffecting
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        // An email whose whole history is in the batch (it starts at sequence 1) folds
        // from the batch; only the others are read back from the store.
        let mut in_batch: HashMap<Uuid, Vec<&FeedEvent>> = HashMap::new();
        for e in events {
            in_batch.entry(e.email_id).or_default().push(e);
        }
        let (mut views, mut elsewhere) = (Vec::new(), Vec::new());
        for (id, list) in &in_batch {
            let complete = list.iter().enumerate().all(|(i, e)| e.sequence == i as i64 + 1);
            match complete.then(|| EmailView::from_history(list.iter().copied())).flatten() {
                Some(view) => views.push(view),
                None => elsewhere.push(*id),
            }
        }
        if let Some(tail) = self.tail.as_ref().filter(|_| !elsewhere.is_empty()) {
            // Through the last sequence of the batch: what follows it is the next batch's.
            let through: HashMap<Uuid, i64> =
                elsewhere.iter().map(|id| (*id, in_batch[id].iter().map(|e| e.sequence).max().unwrap_or(0))).collect();
            let recent = tail.histories(&through, |events| EmailView::from_history(events.iter().copied())).await;
            crate::metrics::HISTORY_READS.with_label_values(&["memory"]).inc_by(recent.len() as u64);
            elsewhere.retain(|id| !recent.contains_key(id));
            views.extend(recent.into_values());
        }
        if !elsewhere.is_empty() {
            crate::metrics::HISTORY_READS.with_label_values(&["database"]).inc_by(elsewhere.len() as u64);
            let histories = feed::read_emails(conn, &elsewhere).await?;
            views.extend(histories.iter().filter_map(EmailView::from_history));
        }
        self.cache.put_many(&views).await?;
        Ok(())
    }
}
