//! The auditor's check: recompute the log leaf by leaf, in order, from the events
//! themselves (read from the store or from an export), and hold the recomputed tree to
//! every signed checkpoint — each one's signature by one of the auditor's keys (more
//! than one across a rotation of the signing key), its origin, and its root at its
//! size. Memory stays flat: the tree's right edge is O(log n) hashes.
//!
//! Checkpoints are either met in the stream ([`Audit::checkpoint_here`], an export's
//! lines) or announced ahead ([`Audit::expect`], the store's table, a note the auditor
//! kept, an older export's): each is checked when the tree reaches its size, and one
//! for more events than there are is history that shrank ([`Audit::finish`]).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::merkle::{Frontier, Hash};
use super::note::{Checkpoint, VerifierKey};

/// Where the check stands, or why it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuditError(pub String);

/// The streaming check.
pub struct Audit {
    keys: Vec<VerifierKey>,
    origin: Option<String>,
    frontier: Frontier,
    /// Checkpoints to meet, by size: root and where the checkpoint came from.
    expected: BTreeMap<u64, Vec<(Hash, String)>>,
    checked: u64,
    /// The size of the last checkpoint that held.
    good: u64,
}

/// What a finished check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Leaves recomputed.
    pub leaves: u64,
    /// The root over them.
    pub root: Hash,
    /// Checkpoints checked.
    pub checkpoints: u64,
}

impl Audit {
    /// A check trusting signatures by `key` only.
    pub fn new(key: VerifierKey) -> Self {
        Self::trusting(vec![key])
    }

    /// A check trusting signatures by any of `keys`: the verifier keys of a log whose
    /// signing key was rotated (each checkpoint is signed by the key of its day).
    pub fn trusting(keys: Vec<VerifierKey>) -> Self {
        Self { keys, origin: None, frontier: Frontier::default(), expected: BTreeMap::new(), checked: 0, good: 0 }
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// The root so far.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Opens a signed checkpoint: signed by one of the keys, a well-formed checkpoint, of
    /// the same origin as every other one.
    pub fn open(&mut self, note: &str, from: &str) -> Result<Checkpoint, AuditError> {
        let c = Checkpoint::open_with_any(note, &self.keys).map_err(|e| AuditError(format!("{from}: {e}")))?;
        match &self.origin {
            Some(o) if *o != c.origin => {
                return Err(AuditError(format!("{from}: origin {:?} is not this log's ({o:?})", c.origin)));
            }
            Some(_) => {}
            None => self.origin = Some(c.origin.clone()),
        }
        Ok(c)
    }

    /// Announces a checkpoint to be met when the tree reaches its size.
    pub fn expect(&mut self, note: &str, from: &str) -> Result<u64, AuditError> {
        let c = self.open(note, from)?;
        if c.size == 0 && self.size() == 0 {
            self.compare(&c.root, from)?;
            return Ok(0);
        }
        if c.size <= self.size() {
            return Err(AuditError(format!("{from}: checkpoint of size {} announced too late", c.size)));
        }
        self.expected.entry(c.size).or_default().push((c.root, from.to_owned()));
        Ok(c.size)
    }

    /// A checkpoint met in the stream: it must be for exactly the leaves so far.
    pub fn checkpoint_here(&mut self, note: &str, from: &str) -> Result<Checkpoint, AuditError> {
        let c = self.open(note, from)?;
        if c.size != self.size() {
            return Err(AuditError(format!(
                "{from}: checkpoint of size {} where the log has {} leaves",
                c.size,
                self.size()
            )));
        }
        self.compare(&c.root, from)?;
        Ok(c)
    }

    fn compare(&mut self, signed: &Hash, from: &str) -> Result<(), AuditError> {
        let root = self.root();
        if &root != signed {
            return Err(AuditError(format!(
                "{from}: checkpoint of size {} was signed for root {}, but the events give {}: an event \
                 among leaves {} to {} differs from what was signed (the checkpoint of size {} held)",
                self.size(),
                B64.encode(signed),
                B64.encode(root),
                self.good,
                self.size().saturating_sub(1),
                self.good
            )));
        }
        self.checked += 1;
        self.good = self.size();
        Ok(())
    }

    /// Appends the next leaf and checks every checkpoint expected at the new size.
    pub fn push(&mut self, leaf: Hash) -> Result<(), AuditError> {
        self.frontier.push(leaf, |_, _, _| {});
        if let Some(due) = self.expected.remove(&self.size()) {
            for (root, from) in due {
                self.compare(&root, &from)?;
            }
        }
        Ok(())
    }

    /// Ends the check: a checkpoint still expected is for more events than exist.
    pub fn finish(self) -> Result<Summary, AuditError> {
        if let Some((size, due)) = self.expected.iter().next() {
            return Err(AuditError(format!(
                "{}: checkpoint of size {size}, but there are only {} events: history was truncated \
                 (the first one missing is leaf {})",
                due[0].1,
                self.size(),
                self.size()
            )));
        }
        Ok(Summary { leaves: self.size(), root: self.root(), checkpoints: self.checked })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::merkle::leaf_hash;
    use crate::proof::note::SignerKey;

    fn signed(key: &SignerKey, leaves: &[Hash]) -> String {
        let mut f = Frontier::default();
        for l in leaves {
            f.push(*l, |_, _, _| {});
        }
        Checkpoint { origin: "o".into(), size: f.size(), root: f.root() }.sign(key)
    }

    #[test]
    fn checkpoints_hold_the_stream_to_what_was_signed() {
        let key = SignerKey::generate("o").unwrap();
        let leaves: Vec<Hash> = (0..10u8).map(|i| leaf_hash(&[i])).collect();
        let mut a = Audit::new(key.verifier());
        a.expect(&signed(&key, &leaves[..4]), "kept note").unwrap();
        a.expect(&signed(&key, &leaves), "store").unwrap();
        for l in &leaves {
            a.push(*l).unwrap();
        }
        assert_eq!(a.finish().unwrap().checkpoints, 2);

        // An edited leaf: the first checkpoint after it fails.
        let mut a = Audit::new(key.verifier());
        a.expect(&signed(&key, &leaves[..4]), "kept note").unwrap();
        a.push(leaves[0]).unwrap();
        a.push(leaf_hash(b"forged")).unwrap();
        a.push(leaves[2]).unwrap();
        assert!(a.push(leaves[3]).unwrap_err().0.contains("kept note: checkpoint of size 4"));

        // Fewer events than signed.
        let mut a = Audit::new(key.verifier());
        a.expect(&signed(&key, &leaves), "store").unwrap();
        a.push(leaves[0]).unwrap();
        assert!(a.finish().unwrap_err().0.contains("truncated"));

        // Another key.
        let other = SignerKey::generate("o").unwrap();
        let mut a = Audit::new(key.verifier());
        assert!(a.expect(&signed(&other, &leaves), "store").unwrap_err().0.contains("bad signature"));
    }

    #[test]
    fn a_rotated_signing_key_verifies_with_both_verifier_keys_and_not_with_one() {
        let (old, new) = (SignerKey::generate("o").unwrap(), SignerKey::generate("o").unwrap());
        let leaves: Vec<Hash> = (0..10u8).map(|i| leaf_hash(&[i])).collect();
        // Signed by the old key up to leaf 4, by the new one since.
        let notes = [signed(&old, &leaves[..4]), signed(&new, &leaves[..7]), signed(&new, &leaves)];
        let run = |keys: Vec<VerifierKey>| {
            let mut a = Audit::trusting(keys);
            for (i, n) in notes.iter().enumerate() {
                a.expect(n, &format!("checkpoint {i}"))?;
            }
            for l in &leaves {
                a.push(*l)?;
            }
            a.finish()
        };
        assert_eq!(run(vec![old.verifier(), new.verifier()]).unwrap().checkpoints, 3);
        assert_eq!(run(vec![new.verifier(), old.verifier()]).unwrap().checkpoints, 3, "in any order");
        let only_new = run(vec![new.verifier()]).unwrap_err().0;
        assert!(only_new.contains("checkpoint 0: bad signature: not signed by o+"), "{only_new}");
        let third = SignerKey::generate("o").unwrap();
        let neither = run(vec![new.verifier(), third.verifier()]).unwrap_err().0;
        assert!(neither.contains("checkpoint 0: bad signature: not signed by any of o+"), "{neither}");

        // A bad signature by a trusted key fails the note, though another trusted key
        // signs it too: the new key's signature line added to the old key's note, over
        // other text.
        let forged_line = signed(&new, &leaves[..5]).rsplit_once("\n\n").unwrap().1.to_owned();
        let both = format!("{}{forged_line}", signed(&old, &leaves[..4]));
        let e = Audit::trusting(vec![old.verifier(), new.verifier()]).expect(&both, "kept").unwrap_err().0;
        assert!(e.contains("kept: bad signature: the signature by o does not verify"), "{e}");
    }
}
