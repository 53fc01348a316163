//! The canonical bytes of an event: what a leaf of the proof log hashes, defined once.
//!
//! ```text
//! canonical = "mailledger-event-v1"
//!           ‖ u64 position ‖ str aggregate_type ‖ str aggregate_id ‖ u64 sequence
//!           ‖ str event_type ‖ str event_version ‖ i64 recorded_at
//!           ‖ str payload ‖ str metadata
//! u64, i64  8 bytes, big-endian (two's complement); recorded_at in microseconds since
//!           1970-01-01T00:00:00Z
//! str       u32 big-endian byte length ‖ the UTF-8 bytes
//! leaf      SHA-256(0x00 ‖ canonical)                       (RFC 6962 §2.1)
//! ```
//!
//! `payload` and `metadata` are PostgreSQL's text of the stored `jsonb` (`payload::text`,
//! the payload as stored: an email event's is wrapped in its type's name), byte for
//! byte; an export carries that very text, so an auditor recomputes each leaf without
//! the database. Every field is length-prefixed: no two different events have the same
//! bytes.

use super::merkle::{Hash, leaf_hash};
use crate::store::raw::RawEvent;

/// The tag every canonical encoding starts with (its version).
pub const TAG: &[u8] = b"mailledger-event-v1";

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The canonical bytes of `e`.
pub fn bytes(e: &RawEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(TAG.len() + 64 + e.payload.len() + e.metadata.len() + e.aggregate_id.len());
    out.extend_from_slice(TAG);
    out.extend_from_slice(&e.position().to_be_bytes());
    put_str(&mut out, &e.aggregate_type);
    put_str(&mut out, &e.aggregate_id);
    out.extend_from_slice(&e.sequence.to_be_bytes());
    put_str(&mut out, &e.event_type);
    put_str(&mut out, &e.event_version);
    out.extend_from_slice(&e.recorded_at.timestamp_micros().to_be_bytes());
    put_str(&mut out, &e.payload);
    put_str(&mut out, &e.metadata);
    out
}

/// The leaf hash of `e`: `SHA-256(0x00 ‖ canonical bytes)`.
pub fn leaf(e: &RawEvent) -> Hash {
    leaf_hash(&bytes(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::feed::Checkpoint;

    #[test]
    fn the_encoding_is_fixed_and_every_field_counts() {
        let e = RawEvent {
            checkpoint: Checkpoint { txid: 9, position: 3 },
            aggregate_type: "Email".into(),
            aggregate_id: "a".into(),
            sequence: 1,
            event_type: "Sent".into(),
            event_version: "1.0".into(),
            recorded_at: chrono::DateTime::from_timestamp_micros(1_000_001).unwrap(),
            payload: "{}".into(),
            metadata: "{\"k\": 1}".into(),
        };
        let b = bytes(&e);
        let mut want = TAG.to_vec();
        want.extend_from_slice(&3i64.to_be_bytes());
        want.extend_from_slice(b"\0\0\0\x05Email\0\0\0\x01a");
        want.extend_from_slice(&1i64.to_be_bytes());
        want.extend_from_slice(b"\0\0\0\x04Sent\0\0\0\x031.0");
        want.extend_from_slice(&1_000_001i64.to_be_bytes());
        want.extend_from_slice(b"\0\0\0\x02{}\0\0\0\x08{\"k\": 1}");
        assert_eq!(b, want);
        // The txid is the log's order, not part of the event.
        let mut moved = e.clone();
        moved.checkpoint.txid = 10;
        assert_eq!(leaf(&moved), leaf(&e));
        let mut edited = e.clone();
        edited.payload = "{ }".into();
        assert_ne!(leaf(&edited), leaf(&e));
        let mut shifted = e.clone();
        shifted.aggregate_type = "Emai".into();
        shifted.aggregate_id = "la".into();
        assert_ne!(leaf(&shifted), leaf(&e));
    }
}
