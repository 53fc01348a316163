//! Views kept in the instance's own memory, in front of Redis: a hit costs no network
//! round trip. Kept coherent by the event feed, on every instance.
//!
//! Each instance runs an [`Invalidator`] that follows the ids and sequences of new email
//! events in the store (a small query on the feed index, woken by the commit
//! announcements, else every [`POLL`]). For every event it drops the email's view and
//! remembers the newest sequence seen for that email. A view read from Redis or
//! PostgreSQL is kept only when it is at least that new: the read model may lag the
//! store, and a lagging view is served (as before) but never kept. So a view in memory is
//! never older than the store's history as of the invalidator's last poll: one feed
//! batch at most, however far the projections are behind.
//!
//! The memory of sequences seen is bounded too. A sequence is forgotten only once both
//! read models (the `emails` table and the Redis cache: their projections' checkpoints)
//! have applied its event, so no later read can return anything older; a read that began
//! before the forgetting is not kept. When the read models fall so far behind that the
//! memory is full of sequences they have not applied, nothing more is kept until they
//! catch up with every event it could not remember. While the invalidator cannot read
//! the store, nothing is kept and nothing is served from memory. A request that asks for read-your-writes
//! (`X-Min-Position`) goes past this cache to Redis and PostgreSQL.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::checkpoints;
use crate::store::feed::{self, Checkpoint};

/// How often the invalidator looks for new events when no announcement wakes it.
pub const POLL: Duration = Duration::from_millis(200);
/// Rows the invalidator reads per query.
const PAGE: i64 = 10_000;

/// A view as served: its JSON, its tenant, its version (the email's last sequence).
#[derive(Debug, Clone)]
pub struct Kept {
    /// The view's JSON.
    pub json: bytes::Bytes,
    /// The email's tenant.
    pub tenant: Arc<str>,
    /// The last event sequence the view holds.
    pub version: i64,
}

/// The in-memory views; cheap to clone.
#[derive(Clone)]
pub struct NearCache {
    state: Arc<Mutex<State>>,
    capacity: usize,
}

/// A read's ticket: taken before the read, shown when keeping its result.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

#[derive(Default)]
struct State {
    views: HashMap<Uuid, Kept>,
    order: VecDeque<Uuid>,
    /// The newest sequence seen in the store per email (and where that event stands in
    /// the feed), and the order they came in.
    seen: HashMap<Uuid, (i64, Checkpoint)>,
    seen_order: VecDeque<Uuid>,
    /// How far both read models have applied the feed (`None`: unknown).
    frontier: Option<Checkpoint>,
    /// The newest event that came while the memory of sequences was full: until the read
    /// models have applied it, nothing is kept.
    unremembered: Option<Checkpoint>,
    /// Bumped whenever sequences are forgotten or the invalidator loses the store: reads
    /// that began before cannot be kept.
    epoch: u64,
    /// The invalidator follows the store (else nothing is kept or served).
    live: bool,
}

impl State {
    fn read_models_have(&self, at: Checkpoint) -> bool {
        self.frontier.is_some_and(|f| at <= f)
    }
}

impl NearCache {
    /// Up to `capacity` views (0: off).
    pub fn new(capacity: usize) -> Self {
        Self { state: Arc::default(), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view of `id`, if kept.
    pub fn get(&self, id: Uuid) -> Option<Kept> {
        if self.capacity == 0 {
            return None;
        }
        let state = self.lock();
        if !state.live {
            return None;
        }
        state.views.get(&id).cloned()
    }

    /// Taken before reading a view elsewhere, to keep it after.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.lock().epoch)
    }

    /// Keeps a view read after `ticket`, unless it is older than the store's newest
    /// event for its email, or memory was forgotten meanwhile.
    pub fn keep(&self, id: Uuid, view: Kept, ticket: Ticket) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let mut state = self.lock();
        let behind = state.unremembered.is_some_and(|u| !state.read_models_have(u));
        if !state.live || behind || ticket.0 != state.epoch || state.seen.get(&id).is_some_and(|s| view.version < s.0) {
            return false;
        }
        if state.views.insert(id, view).is_none() {
            state.order.push_back(id);
            while state.views.len() > self.capacity {
                let Some(old) = state.order.pop_front() else { break };
                state.views.remove(&old);
            }
        }
        true
    }

    /// New events (`(email, sequence, where in the feed)`), with how far both read models
    /// have applied the feed: each email's view is dropped and its newest sequence
    /// remembered; sequences both read models have applied are forgotten once the memory
    /// holds more than it should.
    fn saw(&self, events: &[(Uuid, i64, Checkpoint)], frontier: Option<Checkpoint>) {
        let mut state = self.lock();
        let (soft, hard) = (self.capacity.max(1) * 8, self.capacity.max(1) * 16);
        state.frontier = frontier;
        if state.unremembered.is_some_and(|u| state.read_models_have(u)) {
            state.unremembered = None;
        }
        let before = state.views.len();
        for &(id, sequence, at) in events {
            state.views.remove(&id);
            let room = state.seen.len() < hard;
            match state.seen.get_mut(&id) {
                Some(s) => *s = (s.0.max(sequence), s.1.max(at)),
                None if room => {
                    state.seen.insert(id, (sequence, at));
                    state.seen_order.push_back(id);
                }
                None => state.unremembered = Some(state.unremembered.map_or(at, |u| u.max(at))),
            }
        }
        let mut forgot = false;
        while state.seen.len() > soft {
            let Some(&oldest) = state.seen_order.front() else { break };
            let applied = state.seen.get(&oldest).is_none_or(|s| state.read_models_have(s.1));
            if !applied {
                break;
            }
            state.seen_order.pop_front();
            state.seen.remove(&oldest);
            forgot = true;
        }
        if forgot {
            state.epoch += 1;
        }
        if state.views.len() < before {
            let State { order, views, .. } = &mut *state;
            order.retain(|id| views.contains_key(id));
        }
    }

    /// The invalidator follows the store again (`true`) or lost it (`false`: everything
    /// is dropped).
    fn set_live(&self, live: bool) {
        let mut state = self.lock();
        if !live {
            state.views.clear();
            state.order.clear();
            state.seen.clear();
            state.seen_order.clear();
            state.unremembered = None;
        }
        if live != state.live {
            state.epoch += 1;
        }
        state.live = live;
    }
}

/// Follows the store's new email events for a [`NearCache`].
pub struct Invalidator {
    pool: PgPool,
    near: NearCache,
}

impl Invalidator {
    /// For `near`, reading `pool`.
    pub fn new(pool: PgPool, near: NearCache) -> Self {
        Self { pool, near }
    }

    /// Runs until `stop`, woken by `wake` (commit announcements) or every [`POLL`].
    pub async fn run(self, mut wake: Option<watch::Receiver<u64>>, stop: CancellationToken) {
        if self.near.capacity == 0 {
            return;
        }
        let mut cursor = None;
        while !stop.is_cancelled() {
            match self.follow(&mut cursor).await {
                Ok(()) => self.near.set_live(true),
                Err(e) => {
                    if self.near.lock().live {
                        tracing::warn!(error = %e, "in-memory views off until the event store answers");
                    }
                    self.near.set_live(false);
                    cursor = None;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = crate::store::notify::wait(&mut wake, POLL) => {}
            }
        }
    }

    /// Applies every event below the horizon after `cursor` (from the horizon now, the
    /// first time: nothing is kept yet, so nothing older matters).
    async fn follow(&self, cursor: &mut Option<Checkpoint>) -> Result<(), sqlx::Error> {
        let mut at = match *cursor {
            Some(at) => at,
            None => feed::horizon(&self.pool).await?,
        };
        loop {
            let frontier = checkpoints::lowest(&self.pool, &["emails", "cache"]).await?;
            let page = feed::email_sequences_after(&self.pool, at, PAGE).await?;
            self.near.saw(&page.events, frontier);
            let Some(reached) = page.reached else { break };
            at = reached;
            *cursor = Some(at);
            if page.rows < PAGE as usize {
                break;
            }
        }
        *cursor = Some(at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(version: i64) -> Kept {
        Kept { json: format!("{{\"v\":{version}}}").into_bytes().into(), tenant: "default".into(), version }
    }

    fn live(capacity: usize) -> NearCache {
        let near = NearCache::new(capacity);
        near.set_live(true);
        near
    }

    fn at(position: i64) -> Checkpoint {
        Checkpoint { txid: 5, position }
    }

    /// `n` events of new emails at positions `from`, `from + 1`, …
    fn others(n: i64, from: i64) -> Vec<(Uuid, i64, Checkpoint)> {
        (0..n).map(|i| (Uuid::now_v7(), 1, at(from + i))).collect()
    }

    #[test]
    fn a_view_older_than_the_newest_event_seen_is_not_kept() {
        let near = live(10);
        let id = Uuid::now_v7();
        let ticket = near.ticket();
        near.saw(&[(id, 3, at(1))], None);
        assert!(!near.keep(id, view(2), ticket), "the read model lags the store");
        assert!(near.get(id).is_none());
        assert!(near.keep(id, view(3), ticket));
        assert_eq!(near.get(id).unwrap().version, 3);
        // A new event drops it.
        near.saw(&[(id, 4, at(2))], None);
        assert!(near.get(id).is_none());
    }

    #[test]
    fn sequences_are_forgotten_only_once_the_read_models_have_them_and_reads_in_flight_are_not_kept() {
        // Capacity 1: up to 8 sequences are remembered before any is forgotten.
        let near = live(1);
        let id = Uuid::now_v7();
        let ticket = near.ticket();
        near.saw(&others(9, 1), None);
        assert!(near.keep(id, view(1), ticket), "nothing forgotten: the read models' progress is unknown");
        near.saw(&others(1, 10), Some(at(3)));
        let fresh = near.ticket();
        assert!(!near.keep(id, view(1), ticket), "began before sequences were forgotten");
        assert_eq!(near.lock().seen.len(), 8, "forgotten down to 8, and only what the read models have");
        assert!(near.keep(id, view(1), fresh));
    }

    #[test]
    fn with_the_memory_full_of_what_the_read_models_lack_nothing_is_kept_until_they_catch_up() {
        let near = live(1);
        let id = Uuid::now_v7();
        // 16 remembered, the 17th not: the read models have none of them.
        near.saw(&others(17, 1), None);
        assert!(!near.keep(id, view(1), near.ticket()));
        near.saw(&[], Some(at(16)));
        assert!(!near.keep(id, view(1), near.ticket()), "the unremembered event (17) is not applied yet");
        near.saw(&[], Some(at(17)));
        assert!(near.keep(id, view(1), near.ticket()));
    }

    #[test]
    fn nothing_is_kept_or_served_while_the_store_is_not_followed() {
        let near = live(10);
        let id = Uuid::now_v7();
        assert!(near.keep(id, view(1), near.ticket()));
        let ticket = near.ticket();
        near.set_live(false);
        assert!(near.get(id).is_none());
        assert!(!near.keep(id, view(1), ticket));
        near.set_live(true);
        assert!(!near.keep(id, view(1), ticket), "began while the store was not followed");
        assert!(near.keep(id, view(1), near.ticket()));
    }

    #[test]
    fn the_oldest_views_make_room() {
        let near = live(2);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            assert!(near.keep(*id, view(1), near.ticket()));
        }
        assert!(near.get(ids[0]).is_none());
        assert!(near.get(ids[1]).is_some() && near.get(ids[2]).is_some());
    }
}
