//! The feed's recent tail, read once per process and shared by every projection that
//! follows it.
//!
//! Five projections follow the email feed on an instance (the read model, the cache,
//! the schedule, the NATS events, the webhooks). Each reading and decoding every batch
//! for itself cost PostgreSQL five reads of every event (and the service five decodes):
//! a third of the database's time during intake. Here the first projection to need the
//! rows after the newest batch reads them (the others wait for that one read instead of
//! making their own); the batch joins a bounded ring of recent batches, and every
//! projection whose checkpoint falls in the ring is served from memory. One that has
//! fallen behind the ring (the slowest, under load, or after a restart) reads the store
//! itself, as before.
//!
//! Why this is exact: the ring is one contiguous stretch of the feed. Each batch is read
//! after the last row of the batch before it, and the feed never lets a row appear
//! behind a row it has handed out (see [`super::feed`]), so every email event between
//! the ring's start and its end is in the ring, in order. A reader at any checkpoint in
//! that stretch gets exactly what the store would give it, or a shorter prefix of it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sqlx::PgConnection;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::feed::{self, Batch, Checkpoint, Events, FeedError, FeedEvent};
use super::upcast::{UPCASTERS, Upcaster};

/// What the ring holds at most: events, and their stored bytes.
#[derive(Debug, Clone, Copy)]
pub struct TailLimits {
    /// Email events kept.
    pub events: usize,
    /// Stored bytes of the rows kept, about.
    pub bytes: i64,
}

impl Default for TailLimits {
    fn default() -> Self {
        Self { events: 20_000, bytes: 16 * 1024 * 1024 }
    }
}

/// The shared tail. Cheap to clone.
#[derive(Clone)]
pub struct Tail {
    ring: Arc<Mutex<Ring>>,
    limits: TailLimits,
    /// Batches served from memory, ever (also counted in `mailledger_feed_reads_total`).
    served: Arc<std::sync::atomic::AtomicU64>,
}

/// One batch as read: the rows after `after`, up to and including `reached`.
struct Segment {
    after: Checkpoint,
    reached: Checkpoint,
    events: Arc<[FeedEvent]>,
    bytes: i64,
    /// The read it came from took everything below the horizon then.
    drained: bool,
}

#[derive(Default)]
struct Ring {
    segments: VecDeque<Segment>,
    events: usize,
    bytes: i64,
}

impl Ring {
    /// The events after `after` (at most `limit`) when `after` lies in the ring: `after`
    /// is at or past a segment's start and before its end.
    fn slice(&self, after: Checkpoint, limit: usize) -> Option<Batch> {
        let segment = self.segments.iter().find(|s| s.after <= after && after < s.reached)?;
        let from = segment.events.partition_point(|e| e.checkpoint <= after);
        let to = segment.events.len().min(from + limit.max(1));
        let cut = to < segment.events.len();
        let reached = if cut { segment.events[to - 1].checkpoint } else { segment.reached };
        // Drained as that read was, if this slice runs to the end of the ring.
        let drained = !cut && segment.drained && self.end() == Some(segment.reached);
        Some(Batch { events: Events::new(segment.events.clone(), from..to), reached: Some(reached), bytes: 0, drained })
    }

    fn end(&self) -> Option<Checkpoint> {
        self.segments.back().map(|s| s.reached)
    }

    fn start(&self) -> Option<Checkpoint> {
        self.segments.front().map(|s| s.after)
    }

    fn push(&mut self, segment: Segment, limits: TailLimits) {
        self.events += segment.events.len();
        self.bytes += segment.bytes;
        self.segments.push_back(segment);
        while self.segments.len() > 1 && (self.events > limits.events || self.bytes > limits.bytes) {
            let old = self.segments.pop_front().expect("more than one segment");
            self.events -= old.events.len();
            self.bytes -= old.bytes;
        }
    }

    fn clear(&mut self) {
        *self = Ring::default();
    }
}

impl Tail {
    /// An empty tail holding at most `limits`.
    pub fn new(limits: TailLimits) -> Self {
        Self { ring: Arc::default(), limits, served: Arc::default() }
    }

    /// How many batches it has served from memory.
    pub fn served_from_memory(&self) -> u64 {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// For each email of `wanted`, its history through the sequence given there
    /// (`1..=through`) handed to `fold`, when the ring holds all of it; the others are
    /// left out (read them from the store). Exact for the same reason the ring is: it
    /// is one contiguous stretch of the feed, so an email whose first event is in it has
    /// every later event in it too, up to the ring's end. A projection asking for what
    /// precedes its own batch (the cache, folding an outcome onto the email's earlier
    /// events) finds it here without reading the store, as long as the email is recent.
    pub async fn histories<T>(
        &self,
        wanted: &HashMap<Uuid, i64>,
        mut fold: impl FnMut(&[&FeedEvent]) -> Option<T>,
    ) -> HashMap<Uuid, T> {
        if wanted.is_empty() {
            return HashMap::new();
        }
        let ring = self.ring.lock().await;
        let mut found: HashMap<Uuid, Vec<&FeedEvent>> = HashMap::with_capacity(wanted.len());
        // Newest first, and no further than the first event of every email wanted: an
        // email's events follow its first one, so a recent email's history is met within
        // the last few segments (a scan of the whole ring, up to 20,000 lookups, for each
        // batch of the cache was a tenth of the service's CPU end to end).
        let mut unmet = wanted.len();
        'scan: for segment in ring.segments.iter().rev() {
            for e in segment.events.iter().rev() {
                if let Some(&through) = wanted.get(&e.email_id)
                    && e.sequence <= through
                {
                    found.entry(e.email_id).or_default().push(e);
                    if e.sequence == 1 {
                        unmet -= 1;
                        if unmet == 0 {
                            break 'scan;
                        }
                    }
                }
            }
        }
        for events in found.values_mut() {
            events.reverse();
        }
        found
            .into_iter()
            .filter(|(id, events)| {
                let through = wanted[id];
                events.len() as i64 == through && events.iter().enumerate().all(|(i, e)| e.sequence == i as i64 + 1)
            })
            .filter_map(|(id, events)| Some((id, fold(&events)?)))
            .collect()
    }

    /// What [`feed::read_after`] would return (or a prefix of it), from memory when it
    /// can be. `conn` reads the store when it must (the caller's transaction).
    pub async fn read_after(
        &self,
        conn: &mut PgConnection,
        after: Checkpoint,
        limit: i64,
        max_bytes: i64,
        upcasters: &'static [Upcaster],
    ) -> Result<Batch, FeedError> {
        if !std::ptr::eq(upcasters, UPCASTERS) {
            // Decoded with other upcasters (a test's): not what the ring holds.
            return feed::read_after(conn, after, limit, max_bytes, upcasters).await;
        }
        let limit_events = usize::try_from(limit).unwrap_or(1);
        let mut ring = self.ring.lock().await;
        if let Some(batch) = ring.slice(after, limit_events) {
            self.served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::FEED_READS.with_label_values(&["memory"]).inc();
            return Ok(batch);
        }
        let behind = ring.start().is_some_and(|start| after < start);
        if behind {
            // Fallen behind what the ring keeps: read for itself, and leave the ring to
            // the readers at the front.
            drop(ring);
            crate::metrics::FEED_READS.with_label_values(&["database"]).inc();
            return feed::read_after(conn, after, limit, max_bytes, upcasters).await;
        }
        if ring.end() != Some(after) {
            // Ahead of the ring (another instance led this projection meanwhile), or
            // the ring is empty: it starts again here.
            ring.clear();
        }
        // At the ring's end: read the next batch once, for everyone (the others wait on
        // the lock meanwhile and are then served from memory).
        crate::metrics::FEED_READS.with_label_values(&["database"]).inc();
        let batch = feed::read_after(conn, after, limit, max_bytes, upcasters).await?;
        if let Some(reached) = batch.reached {
            let events = batch.events.shared().clone();
            ring.push(Segment { after, reached, events, bytes: batch.bytes, drained: batch.drained }, self.limits);
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::command::EmailEvent;

    fn event(position: i64) -> FeedEvent {
        FeedEvent {
            checkpoint: Checkpoint { txid: 10, position },
            email_id: Uuid::nil(),
            sequence: 1,
            event_type: "Redriven".into(),
            event_version: "1.0".into(),
            recorded_at: Utc::now(),
            event: EmailEvent::Redriven(crate::command::events::Redriven {
                by: "t".into(),
                redriven_at: Utc::now(),
                run: None,
            }),
            metadata: serde_json::json!({}),
        }
    }

    fn at(position: i64) -> Checkpoint {
        Checkpoint { txid: 10, position }
    }

    fn segment(after: i64, positions: &[i64], reached: i64) -> Segment {
        let events: Vec<FeedEvent> = positions.iter().map(|&p| event(p)).collect();
        Segment { after: at(after), reached: at(reached), events: events.into(), bytes: 100, drained: false }
    }

    fn positions(batch: &Batch) -> Vec<i64> {
        batch.events.iter().map(|e| e.checkpoint.position).collect()
    }

    #[test]
    fn a_reader_anywhere_in_the_ring_gets_what_follows_its_checkpoint() {
        let limits = TailLimits::default();
        let mut ring = Ring::default();
        // Positions 5 and 8 are another aggregate's rows: not in the segments, but reached.
        ring.push(segment(0, &[1, 2, 3, 4], 5), limits);
        ring.push(segment(5, &[6, 7], 8), limits);
        let whole = ring.slice(at(0), 500).unwrap();
        assert_eq!((positions(&whole), whole.reached), (vec![1, 2, 3, 4], Some(at(5))));
        let middle = ring.slice(at(2), 500).unwrap();
        assert_eq!((positions(&middle), middle.reached), (vec![3, 4], Some(at(5))));
        // Past the last email event of a segment: nothing to apply, but the reader moves on.
        let skipped = ring.slice(at(4), 500).unwrap();
        assert_eq!((positions(&skipped), skipped.reached), (vec![], Some(at(5))));
        let next = ring.slice(at(5), 500).unwrap();
        assert_eq!((positions(&next), next.reached), (vec![6, 7], Some(at(8))));
        let cut = ring.slice(at(0), 3).unwrap();
        assert_eq!((positions(&cut), cut.reached), (vec![1, 2, 3], Some(at(3))));
        // At the end, before the start: not in the ring.
        assert!(ring.slice(at(8), 500).is_none());
        assert!(ring.slice(at(9), 500).is_none());
        assert_eq!((ring.start(), ring.end()), (Some(at(0)), Some(at(8))));
    }

    #[test]
    fn a_slice_says_it_took_everything_only_when_it_runs_to_the_end_of_a_drained_read() {
        let limits = TailLimits::default();
        let mut ring = Ring::default();
        // Both reads were full (not drained) ...
        ring.push(segment(0, &[1, 2, 3], 3), limits);
        ring.push(segment(3, &[4, 5], 5), limits);
        assert!(!ring.slice(at(3), 500).unwrap().drained, "the last read was not drained");
        // ... then one took everything there was.
        ring.push(Segment { drained: true, ..segment(5, &[6, 7], 7) }, limits);
        assert!(ring.slice(at(5), 500).unwrap().drained);
        assert!(ring.slice(at(6), 500).unwrap().drained);
        assert!(!ring.slice(at(5), 1).unwrap().drained, "cut by its limit: the rest is still to read");
        assert!(!ring.slice(at(0), 500).unwrap().drained, "segments follow in the ring");
    }

    /// Event `sequence` of email `id` at `position`.
    fn of(id: Uuid, sequence: i64, position: i64) -> FeedEvent {
        FeedEvent { email_id: id, sequence, ..event(position) }
    }

    #[tokio::test]
    async fn an_email_s_history_comes_from_the_ring_only_when_the_ring_holds_all_of_it() {
        let (whole, split, early, late) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let tail = Tail::new(TailLimits { events: 6, bytes: 1 << 40 });
        let mut ring = tail.ring.lock().await;
        // `early` started in a batch the ring has since forgotten (limit: 6 events).
        ring.push(
            Segment {
                after: at(0),
                reached: at(2),
                events: vec![of(early, 1, 1), of(early, 2, 2)].into(),
                bytes: 1,
                drained: false,
            },
            tail.limits,
        );
        ring.push(
            Segment {
                after: at(2),
                reached: at(6),
                events: vec![of(whole, 1, 3), of(split, 1, 4), of(whole, 2, 5), of(early, 3, 6)].into(),
                bytes: 1,
                drained: false,
            },
            tail.limits,
        );
        ring.push(
            Segment {
                after: at(6),
                reached: at(8),
                events: vec![of(split, 2, 7), of(whole, 3, 8)].into(),
                bytes: 1,
                drained: false,
            },
            tail.limits,
        );
        assert_eq!(ring.start(), Some(at(2)), "the first batch is forgotten");
        drop(ring);
        let sequences = |events: &[&FeedEvent]| Some(events.iter().map(|e| e.sequence).collect::<Vec<_>>());
        let wanted = HashMap::from([(whole, 2), (split, 2), (early, 3), (late, 1)]);
        let found = tail.histories(&wanted, sequences).await;
        // Through the sequence asked for, not what follows it; across batches; an email
        // whose beginning is gone, or that is not there at all, is left to the store.
        assert_eq!(found.get(&whole), Some(&vec![1, 2]));
        assert_eq!(found.get(&split), Some(&vec![1, 2]));
        assert!(!found.contains_key(&early) && !found.contains_key(&late), "{found:?}");
        // Past what the ring holds: not complete, so not given.
        let ahead = tail.histories(&HashMap::from([(whole, 4)]), sequences).await;
        assert!(ahead.is_empty(), "{ahead:?}");
        // Read newest first and stopped at the first event of each email wanted: the
        // same histories, in order.
        let recent = tail.histories(&HashMap::from([(split, 2), (whole, 3)]), sequences).await;
        assert_eq!(recent, HashMap::from([(split, vec![1, 2]), (whole, vec![1, 2, 3])]));
    }

    #[test]
    fn the_ring_forgets_its_oldest_batches_beyond_its_limits() {
        let limits = TailLimits { events: 4, bytes: 1 << 40 };
        let mut ring = Ring::default();
        ring.push(segment(0, &[1, 2], 2), limits);
        ring.push(segment(2, &[3, 4], 4), limits);
        ring.push(segment(4, &[5, 6], 6), limits);
        assert_eq!((ring.start(), ring.events), (Some(at(2)), 4));
        assert!(ring.slice(at(1), 500).is_none(), "forgotten");
        // One batch larger than the limits is still kept (the readers at the front need it).
        ring.push(segment(6, &[7, 8, 9, 10, 11], 11), limits);
        assert_eq!((ring.start(), ring.events), (Some(at(6)), 5));
    }
}
