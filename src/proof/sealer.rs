//! The sealer: a transactional projection over the raw feed (every aggregate) that
//! appends one leaf per event to the proof log, in the same transaction as its feed
//! checkpoint, and signs a checkpoint when one is due ([`Signing`]). The write path and
//! its group commit do not change: sealing follows commits, like every projection.
//!
//! A checkpoint is due when `every` events have been sealed since the last one, or
//! `interval` has passed and the tree has grown. The sealer signs in its batch; when
//! no batch comes, [`run_signer`] signs the rest, so a new event is covered within
//! about `interval` plus the feed's lag. Events written before the log existed are
//! sealed on the first start, as the projection catches up from position zero.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::merkle::{Frontier, Hash};
use super::note::{Checkpoint, SignerKey, VerifierKey, key_lines};
use super::{canonical, tree};
use crate::config::ProofSettings;
use crate::projections::{Feed, Projection, ProjectionKind};
use crate::store::feed::FeedEvent;
use crate::store::raw::RawEvent;

/// The projection's name (its checkpoint and lock).
pub const NAME: &str = "proof";

/// How checkpoints are signed.
#[derive(Debug, Clone)]
pub struct Signing {
    /// The private keys, each signing every checkpoint: one, or two while the signing
    /// key is changed over (the old and the new, so auditors holding either verify).
    pub keys: Arc<[SignerKey]>,
    /// The checkpoints' origin line.
    pub origin: String,
    /// Sign after this many new events…
    pub every: u64,
    /// …or after this long, once the tree has grown.
    pub interval: Duration,
}

impl Signing {
    /// The verifier keys of the signing keys, in the C2SP format.
    pub fn verifiers(&self) -> Vec<VerifierKey> {
        self.keys.iter().map(SignerKey::verifier).collect()
    }

    /// The signing set up by `settings` (`None` without a key), for the log of
    /// `database` (the default origin's name). A key file that cannot be used is an
    /// error naming it.
    pub fn load(settings: &ProofSettings, database: &str) -> anyhow::Result<Option<Self>> {
        let Some(path) = &settings.signing_key else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("MAILLEDGER_SIGNING_KEY {}: cannot be read", path.display()))?;
        // One key a line: more than one while the key is changed over.
        let mut keys = Vec::new();
        for (n, line) in key_lines(&text) {
            keys.push(SignerKey::parse(line).with_context(|| {
                format!("MAILLEDGER_SIGNING_KEY {} line {n}: not a usable signing key", path.display())
            })?);
        }
        anyhow::ensure!(
            !keys.is_empty(),
            "MAILLEDGER_SIGNING_KEY {}: not a usable signing key (the file holds none)",
            path.display()
        );
        Ok(Some(Self {
            keys: keys.into(),
            origin: settings.origin(database),
            every: settings.checkpoint_every.max(1),
            interval: settings.checkpoint_interval,
        }))
    }

    /// Signs the tree of `size` leaves with `root` if a checkpoint is due, in `tx`, which
    /// holds the tree's lock. Returns the size signed.
    pub async fn sign_if_due(&self, tx: &mut PgConnection, size: u64, root: &Hash) -> anyhow::Result<Option<u64>> {
        let due = match tree::latest(tx).await? {
            None => size > 0,
            Some(last) => {
                let age = (chrono::Utc::now() - last.signed_at).to_std().unwrap_or_default();
                size > last.size && (size - last.size >= self.every || age >= self.interval)
            }
        };
        if !due {
            return Ok(None);
        }
        let note = Checkpoint { origin: self.origin.clone(), size, root: *root }.sign_with_all(&self.keys);
        tree::insert_checkpoint(tx, size, root, &note).await?;
        crate::metrics::PROOF_CHECKPOINT_SIZE.set(size as i64);
        Ok(Some(size))
    }
}

/// The sealer projection.
pub struct Sealer {
    signing: Option<Signing>,
}

impl Sealer {
    /// A sealer that signs with `signing` (none: it builds the tree and signs nothing).
    pub fn new(signing: Option<Signing>) -> Self {
        Self { signing }
    }
}

/// Appends `events` to the tree whose edge is `frontier`: the new leaves and interior
/// nodes, to be stored.
type Appended = (Vec<(u64, i64, Hash)>, Vec<(u32, u64, Hash)>);

fn seal(frontier: &mut Frontier, events: &[RawEvent]) -> Appended {
    let mut leaves = Vec::with_capacity(events.len());
    let mut interior = Vec::with_capacity(events.len());
    for e in events {
        let position = e.position();
        frontier.push(canonical::leaf(e), |level, index, hash| {
            if level == 0 {
                leaves.push((index, position, *hash));
            } else {
                interior.push((level, index, *hash));
            }
        });
    }
    (leaves, interior)
}

#[async_trait]
impl Projection for Sealer {
    fn name(&self) -> &'static str {
        NAME
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Transactional
    }

    fn feed(&self) -> Feed {
        Feed::Everything
    }

    async fn apply(&self, _: &mut PgConnection, _: &[FeedEvent]) -> anyhow::Result<()> {
        anyhow::bail!("the sealer reads the raw feed")
    }

    async fn apply_raw(&self, tx: &mut PgConnection, events: &[RawEvent]) -> anyhow::Result<()> {
        let (size, _) = tree::lock(tx).await?;
        let mut frontier = tree::frontier(tx, size).await?;
        let (leaves, interior) = seal(&mut frontier, events);
        let root = frontier.root();
        tree::append(tx, &leaves, &interior, frontier.size(), &root).await?;
        crate::metrics::PROOF_TREE_SIZE.set(frontier.size() as i64);
        if size / 100_000 != frontier.size() / 100_000 {
            tracing::info!(sealed = frontier.size(), "proof log: sealing");
        }
        if let Some(signing) = &self.signing {
            signing.sign_if_due(tx, frontier.size(), &root).await?;
        }
        Ok(())
    }
}

/// Signs a due checkpoint when no batch does (an idle store after its last events),
/// looking twice per interval (at most every half second) until `stop`.
pub async fn run_signer(pool: PgPool, signing: Signing, stop: CancellationToken) {
    let tick = (signing.interval / 2).min(Duration::from_millis(500)).max(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let signed = async {
            let mut tx = pool.begin().await?;
            // The sealer holds the tree while it appends: then it signs itself.
            let Some((size, root)) = tree::try_lock(&mut tx).await? else { return anyhow::Ok(()) };
            signing.sign_if_due(&mut tx, size, &root).await?;
            tx.commit().await?;
            Ok(())
        };
        if let Err(e) = signed.await {
            tracing::warn!(error = format!("{e:#}"), "proof log: cannot sign a checkpoint; retrying");
        }
    }
}
