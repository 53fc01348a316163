//! The proof log: a tamper-evident record of every event in `events`, with the proofs
//! transparency logs use (RFC 6962 / RFC 9162 Merkle trees, C2SP signed checkpoints).
//!
//! - [`canonical`]: the bytes a leaf hashes, defined once.
//! - [`merkle`]: hashing, proofs and their verification (pure).
//! - [`note`]: Ed25519 keys, signed notes and checkpoints in the C2SP / Go formats.
//! - [`tree`]: the tree and checkpoints in PostgreSQL (owns the `proof_*` tables).
//! - [`sealer`]: the projection that appends a leaf per event, in commit order, and
//!   signs checkpoints; [`publish`] copies them to NATS, outside the database.
//! - [`export`]: the offline export (`replay --proofs`) and its reader.
//! - [`audit`]: the streaming check that recomputes the log from events (from the
//!   store or an export) and holds it to every checkpoint.
//!
//! [`ProofLog`] answers the API: checkpoints, inclusion proofs (by email, tenant-scoped,
//! or by position) and consistency proofs. It promises O(log n) stored nodes per proof,
//! read in one statement.

pub mod audit;
pub mod body;
pub mod canonical;
pub mod export;
pub mod merkle;
pub mod note;
pub mod publish;
pub mod sealer;
pub mod tree;

use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::store::raw::{self, RawEvent};
use merkle::Hash;
pub use tree::StoredCheckpoint;

/// One event's inclusion proof.
#[derive(Debug, Clone)]
pub struct InclusionProof {
    /// Its leaf's index in the tree.
    pub leaf_index: u64,
    /// The size of the tree it is proved in.
    pub tree_size: u64,
    /// `SHA-256(0x00 ‖ canonical bytes)`.
    pub leaf_hash: Hash,
    /// The audit path, deepest first.
    pub hashes: Vec<Hash>,
    /// The event, as stored.
    pub event: RawEvent,
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone)]
pub struct ConsistencyProof {
    /// The smaller tree.
    pub first: u64,
    /// The larger tree.
    pub second: u64,
    /// The smaller tree's root.
    pub first_root: Hash,
    /// The larger tree's root.
    pub second_root: Hash,
    /// The proof's hashes.
    pub hashes: Vec<Hash>,
}

/// Why a proof was not given.
#[derive(Debug, thiserror::Error)]
pub enum ProofLogError {
    /// The request cannot be answered as asked (a size of 0, sizes out of order, a size
    /// past the newest checkpoint).
    #[error("{0}")]
    BadRequest(String),
    /// No such checkpoint, email or sealed position (or not yet).
    #[error("{0}")]
    NotFound(String),
    /// The database failed, or the log is damaged.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ProofLogError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// The proof log, as the API reads it. Cheap to clone.
#[derive(Clone)]
pub struct ProofLog {
    pool: PgPool,
}

impl ProofLog {
    /// The log in `pool`'s database.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The checkpoint of size `size`, or the newest one.
    pub async fn checkpoint(&self, size: Option<u64>) -> Result<StoredCheckpoint, ProofLogError> {
        match size {
            Some(0) => Err(ProofLogError::BadRequest("size: must be at least 1".into())),
            Some(n) => tree::checkpoint_at(&self.pool, n)
                .await?
                .ok_or_else(|| ProofLogError::NotFound(format!("no checkpoint of size {n}"))),
            None => {
                let mut conn = self.pool.acquire().await?;
                tree::latest(&mut conn).await?.ok_or_else(|| {
                    ProofLogError::NotFound("no signed checkpoint yet (is MAILLEDGER_SIGNING_KEY set?)".into())
                })
            }
        }
    }

    /// Inclusion proofs of every event of email `id` that checkpoint `size` (or the
    /// newest) covers. Another tenant's email is not found, like an unknown one.
    pub async fn prove_email(
        &self,
        id: Uuid,
        by: &Principal,
        size: Option<u64>,
    ) -> Result<(StoredCheckpoint, Vec<InclusionProof>), ProofLogError> {
        let not_found = || ProofLogError::NotFound(format!("no email {id}"));
        let tenant = crate::store::feed::tenant_of(&self.pool, id).await?.ok_or_else(not_found)?;
        if !by.sees(&tenant) {
            return Err(not_found());
        }
        let events = raw::of_aggregate(&self.pool, "Email", &id.to_string()).await?;
        let checkpoint = self.checkpoint(size).await?;
        let proofs = self.prove(events, checkpoint.size).await?;
        if proofs.is_empty() {
            return Err(ProofLogError::NotFound(format!(
                "email {id} is not covered by checkpoint {} yet; retry in a few seconds",
                checkpoint.size
            )));
        }
        Ok((checkpoint, proofs))
    }

    /// The inclusion proof of the event at `position` in checkpoint `size` (or the newest).
    pub async fn prove_position(
        &self,
        position: i64,
        size: Option<u64>,
    ) -> Result<(StoredCheckpoint, InclusionProof), ProofLogError> {
        let checkpoint = self.checkpoint(size).await?;
        let events = raw::at_positions(&self.pool, &[position]).await?;
        let proof = self.prove(events, checkpoint.size).await?.pop().ok_or_else(|| {
            ProofLogError::NotFound(format!(
                "position {position} is not in the log at size {} (no such event, or not sealed yet)",
                checkpoint.size
            ))
        })?;
        Ok((checkpoint, proof))
    }

    /// Proofs of those of `events` whose leaves are in the tree of `size` leaves.
    async fn prove(&self, events: Vec<RawEvent>, size: u64) -> Result<Vec<InclusionProof>, ProofLogError> {
        let positions: Vec<i64> = events.iter().map(RawEvent::position).collect();
        let leaves = tree::leaves_at(&self.pool, &positions).await?;
        let mut covered: Vec<(tree::Leaf, RawEvent)> = Vec::new();
        for event in events {
            if let Some(leaf) = leaves.iter().find(|l| l.position == event.position() && l.index < size) {
                covered.push((*leaf, event));
            }
        }
        let paths = self
            .with_nodes(|node| {
                covered.iter().map(|(l, _)| merkle::inclusion_proof(l.index, size, node)).collect::<Vec<_>>()
            })
            .await?;
        Ok(covered
            .into_iter()
            .zip(paths)
            .map(|((leaf, event), hashes)| InclusionProof {
                leaf_index: leaf.index,
                tree_size: size,
                leaf_hash: leaf.hash,
                hashes,
                event,
            })
            .collect())
    }

    /// The consistency proof from size `first` to `second` (default: the newest
    /// checkpoint), with both roots; `second` may not pass the newest checkpoint.
    pub async fn consistency(&self, first: u64, second: Option<u64>) -> Result<ConsistencyProof, ProofLogError> {
        if first == 0 || second == Some(0) {
            return Err(ProofLogError::BadRequest("sizes start at 1".into()));
        }
        let latest = self.checkpoint(None).await?;
        let second = second.unwrap_or(latest.size);
        if first > second {
            return Err(ProofLogError::BadRequest(format!(
                "sizes out of order: first ({first}) is larger than second ({second})"
            )));
        }
        if second > latest.size {
            return Err(ProofLogError::BadRequest(format!(
                "size {second} is past the newest checkpoint (size {})",
                latest.size
            )));
        }
        let (hashes, first_root, second_root) = self
            .with_nodes(|node| {
                (merkle::consistency_proof(first, second, node), merkle::root(first, node), merkle::root(second, node))
            })
            .await?;
        Ok(ConsistencyProof { first, second, first_root, second_root, hashes })
    }

    /// Runs `generate` over the stored nodes it needs, fetched in one statement.
    async fn with_nodes<T>(
        &self,
        generate: impl FnMut(&mut dyn FnMut(u32, u64) -> Hash) -> T,
    ) -> Result<T, ProofLogError> {
        let mut conn = self.pool.acquire().await?;
        merkle::with_nodes(generate, |keys| async move { tree::nodes(&mut conn, &keys).await })
            .await?
            .ok_or_else(|| ProofLogError::Store(anyhow::anyhow!("the proof log lacks a node it should hold")))
    }
}
