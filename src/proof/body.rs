//! The JSON shapes of checkpoints and proofs, the same on REST and the command line.
//! Hashes are base64 (as in checkpoints); `canonical` is the event's canonical bytes
//! (base64), so `SHA-256(0x00 ‖ canonical)` is its leaf hash, recomputable by anyone.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ConsistencyProof, InclusionProof, StoredCheckpoint, canonical};

/// A signed checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckpointBody {
    /// Tree size: the events it covers.
    pub size: u64,
    /// The root hash (base64).
    pub root: String,
    /// The signed note (C2SP tlog-checkpoint): origin, size, root, empty line, signature.
    pub note: String,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
}

impl From<&StoredCheckpoint> for CheckpointBody {
    fn from(c: &StoredCheckpoint) -> Self {
        Self { size: c.size, root: B64.encode(c.root), note: c.note.clone(), signed_at: c.signed_at }
    }
}

/// One event's inclusion proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionEntry {
    /// Its leaf's index.
    pub leaf_index: u64,
    /// The tree it is proved in.
    pub tree_size: u64,
    /// The event's position in the store.
    pub position: i64,
    /// `Email` or `ApiKey`.
    pub aggregate_type: String,
    /// The email's (or key's) id.
    pub aggregate_id: String,
    /// Its sequence in that aggregate.
    pub sequence: i64,
    /// Its type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `SHA-256(0x00 ‖ canonical)`, base64.
    pub leaf_hash: String,
    /// The canonical bytes (base64).
    pub canonical: String,
    /// The audit path, deepest first (base64).
    pub hashes: Vec<String>,
}

impl From<&InclusionProof> for InclusionEntry {
    fn from(p: &InclusionProof) -> Self {
        Self {
            leaf_index: p.leaf_index,
            tree_size: p.tree_size,
            position: p.event.position(),
            aggregate_type: p.event.aggregate_type.clone(),
            aggregate_id: p.event.aggregate_id.clone(),
            sequence: p.event.sequence,
            event_type: p.event.event_type.clone(),
            leaf_hash: B64.encode(p.leaf_hash),
            canonical: B64.encode(canonical::bytes(&p.event)),
            hashes: p.hashes.iter().map(|h| B64.encode(h)).collect(),
        }
    }
}

/// Inclusion proofs against one checkpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionBody {
    /// The checkpoint every proof leads to.
    pub checkpoint: CheckpointBody,
    /// One per event.
    pub proofs: Vec<InclusionEntry>,
}

impl InclusionBody {
    /// The body for `proofs` in `checkpoint`.
    pub fn new(checkpoint: &StoredCheckpoint, proofs: &[InclusionProof]) -> Self {
        Self { checkpoint: checkpoint.into(), proofs: proofs.iter().map(InclusionEntry::from).collect() }
    }
}

/// A consistency proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyBody {
    /// The smaller tree size.
    pub first: u64,
    /// The larger tree size.
    pub second: u64,
    /// The smaller tree's root (base64).
    pub first_root: String,
    /// The larger tree's root (base64).
    pub second_root: String,
    /// The proof (base64), as RFC 6962 `PROOF(first, D[second])`.
    pub hashes: Vec<String>,
}

impl From<&ConsistencyProof> for ConsistencyBody {
    fn from(p: &ConsistencyProof) -> Self {
        Self {
            first: p.first,
            second: p.second,
            first_root: B64.encode(p.first_root),
            second_root: B64.encode(p.second_root),
            hashes: p.hashes.iter().map(|h| B64.encode(h)).collect(),
        }
    }
}
