//! RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification: pure code,
//! no I/O. Owns the tree's arithmetic; where the hashes live is [`super::tree`]'s job.
//!
//! - A leaf is `SHA-256(0x00 ‖ data)`, an interior node `SHA-256(0x01 ‖ left ‖ right)`,
//!   the empty tree `SHA-256("")` (RFC 6962 §2.1).
//! - A stored node `(level, index)` is the hash of the complete subtree over leaves
//!   `[index·2^level, (index+1)·2^level)`; every hash of any range is built from them
//!   ([`range_hash`]), so proofs cost O(log n) stored nodes.
//! - Proofs are generated as RFC 6962 §2.1.1 (`PATH`) and §2.1.2 (`PROOF`) define them,
//!   and verified with RFC 9162 §2.1.3.2 and §2.1.4.2.
//! - [`Frontier`] is the right edge of a tree (one complete subtree per set bit of its
//!   size): appending a leaf yields every node it completes, and the root at any size.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The hash of leaves `[a, b)` (RFC 6962's `MTH(D[a:b])`, a < b), from stored nodes:
/// `node(level, index)` gives the complete subtree at that place.
pub fn range_hash(a: u64, b: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Hash {
    let n = b - a;
    if n.is_power_of_two() && a.is_multiple_of(n) {
        let level = n.trailing_zeros();
        return node(level, a >> level);
    }
    let k = split(n);
    let left = range_hash(a, a + k, node);
    let right = range_hash(a + k, b, node);
    node_hash(&left, &right)
}

/// The root of a complete subtree from its leaf hashes (a power of two of them).
pub fn complete_root(leaves: &[Hash]) -> Hash {
    debug_assert!(leaves.len().is_power_of_two());
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    level[0]
}

/// The root of the tree of `size` leaves (`size` ≥ 1).
pub fn root(size: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Hash {
    if size == 0 { empty_root() } else { range_hash(0, size, node) }
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 6962 `PATH`),
/// deepest sibling first. `index < size`.
pub fn inclusion_proof(index: u64, size: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Vec<Hash> {
    fn path(m: u64, a: u64, b: u64, node: &mut dyn FnMut(u32, u64) -> Hash, out: &mut Vec<Hash>) {
        if b - a == 1 {
            return;
        }
        let k = split(b - a);
        if m < a + k {
            path(m, a, a + k, node, out);
            out.push(range_hash(a + k, b, node));
        } else {
            path(m, a + k, b, node, out);
            out.push(range_hash(a, a + k, node));
        }
    }
    let mut out = Vec::new();
    if index < size {
        path(index, 0, size, node, &mut out);
    }
    out
}

/// The proof that the tree of `first` leaves is a prefix of the tree of `second`
/// (RFC 6962 `PROOF`); empty when the sizes are equal. `0 < first ≤ second`.
pub fn consistency_proof(first: u64, second: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Vec<Hash> {
    fn sub(m: u64, a: u64, b: u64, whole: bool, node: &mut dyn FnMut(u32, u64) -> Hash, out: &mut Vec<Hash>) {
        let n = b - a;
        if m == n {
            if !whole {
                out.push(range_hash(a, b, node));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            sub(m, a, a + k, whole, node, out);
            out.push(range_hash(a + k, b, node));
        } else {
            sub(m - k, a + k, b, false, node, out);
            out.push(range_hash(a, a + k, node));
        }
    }
    let mut out = Vec::new();
    if 0 < first && first < second {
        sub(first, 0, second, true, node, &mut out);
    }
    out
}

/// Runs `generate` twice: once to learn which stored nodes it reads, then, after `fetch`
/// has looked them all up at once, for real. Returns `None` when `fetch` lacks one.
pub async fn with_nodes<T, E, F, Fut>(
    mut generate: impl FnMut(&mut dyn FnMut(u32, u64) -> Hash) -> T,
    fetch: F,
) -> Result<Option<T>, E>
where
    F: FnOnce(Vec<(u32, u64)>) -> Fut,
    Fut: Future<Output = Result<std::collections::HashMap<(u32, u64), Hash>, E>>,
{
    let mut keys = Vec::new();
    generate(&mut |level, index| {
        keys.push((level, index));
        [0; 32]
    });
    keys.sort_unstable();
    keys.dedup();
    let found = fetch(keys.clone()).await?;
    if keys.iter().any(|k| !found.contains_key(k)) {
        return Ok(None);
    }
    Ok(Some(generate(&mut |level, index| found[&(level, index)])))
}

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Index or sizes out of range.
    #[error("{0}")]
    Range(String),
    /// The proof has the wrong number of hashes.
    #[error("the proof has the wrong number of hashes")]
    Length,
    /// The hashes do not lead to the root.
    #[error("the proof does not lead to the root")]
    Mismatch,
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range(format!("leaf {index} is not in a tree of {size}")));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &r != root { Err(ProofError::Mismatch) } else { Ok(()) }
}

/// Checks that the tree of `first` leaves (root `first_root`) is a prefix of the tree of
/// `second` leaves (root `second_root`) (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    proof: &[Hash],
    first_root: &Hash,
    second_root: &Hash,
) -> Result<(), ProofError> {
    if first == 0 || first > second {
        return Err(ProofError::Range(format!("sizes {first} and {second}: want 0 < first ≤ second")));
    }
    if first == second {
        if !proof.is_empty() {
            return Err(ProofError::Length);
        }
        return if first_root == second_root { Ok(()) } else { Err(ProofError::Mismatch) };
    }
    let mut hashes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        hashes.push(*first_root);
    }
    hashes.extend_from_slice(proof);
    let Some((start, rest)) = hashes.split_first() else {
        return Err(ProofError::Length);
    };
    if proof.is_empty() {
        return Err(ProofError::Length);
    }
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &fr != first_root || &sr != second_root { Err(ProofError::Mismatch) } else { Ok(()) }
}

/// The right edge of a tree: the complete subtrees its leaves fill, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The stored nodes `(level, index)` that make up the edge of a tree of `size`, in
    /// the order [`Frontier::from_nodes`] takes them.
    pub fn keys(size: u64) -> Vec<(u32, u64)> {
        (0..64u32).rev().filter(|l| (size >> l) & 1 == 1).map(|l| (l, (size >> l) - 1)).collect()
    }

    /// The edge of a tree of `size`, from the hashes of [`Frontier::keys`]`(size)`.
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Self { size, nodes })
    }

    /// Leaves so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `emit(level, index, hash)` receives the leaf (level 0) and
    /// every interior node it completes.
    pub fn push(&mut self, leaf: Hash, mut emit: impl FnMut(u32, u64, &Hash)) {
        let index = self.size;
        let mut h = leaf;
        emit(0, index, &h);
        let mut level = 0u32;
        while (self.size >> level) & 1 == 1 {
            let left = self.nodes.pop().expect("a set bit has its subtree");
            h = node_hash(&left, &h);
            level += 1;
            emit(level, index >> level, &h);
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(last) => it.fold(*last, |r, n| node_hash(n, &r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// RFC 6962's test leaves (certificate-transparency's merkle tree tests).
    const LEAVES: [&str; 8] =
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
    /// Roots of the trees of 1 … 8 of those leaves.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(s: &str) -> Hash {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// Every stored node of the 8-leaf tree, built by the frontier.
    fn stored() -> (HashMap<(u32, u64), Hash>, Vec<Hash>) {
        let mut nodes = HashMap::new();
        let mut roots = vec![];
        let mut f = Frontier::default();
        for leaf in LEAVES {
            f.push(leaf_hash(&hex::decode(leaf).unwrap()), |l, i, h| {
                nodes.insert((l, i), *h);
            });
            roots.push(f.root());
        }
        (nodes, roots)
    }

    #[test]
    fn roots_match_the_rfc_vectors() {
        assert_eq!(hex::encode(empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let (nodes, roots) = stored();
        for (size, want) in ROOTS.iter().enumerate() {
            assert_eq!(roots[size], h(want), "frontier root of {}", size + 1);
            assert_eq!(root(size as u64 + 1, &mut |l, i| nodes[&(l, i)]), h(want), "stored root of {}", size + 1);
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_changed_one_does_not() {
        let (nodes, _) = stored();
        let mut node = |l, i| nodes[&(l, i)];
        for size in 1..=8u64 {
            let r = h(ROOTS[size as usize - 1]);
            for index in 0..size {
                let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
                let proof = inclusion_proof(index, size, &mut node);
                verify_inclusion(index, size, &leaf, &proof, &r).unwrap();
                assert!(verify_inclusion(index, size, &node_hash(&leaf, &leaf), &proof, &r).is_err());
                if let Some((first, rest)) = proof.split_first() {
                    let mut bad = vec![node_hash(first, first)];
                    bad.extend_from_slice(rest);
                    assert!(verify_inclusion(index, size, &leaf, &bad, &r).is_err());
                    assert!(verify_inclusion(index, size, &leaf, rest, &r).is_err(), "short proof");
                }
            }
            for first in 1..=size {
                let fr = h(ROOTS[first as usize - 1]);
                let proof = consistency_proof(first, size, &mut node);
                verify_consistency(first, size, &proof, &fr, &r).unwrap();
                if first < size {
                    assert!(verify_consistency(first, size, &proof, &r, &r).is_err());
                    assert!(verify_consistency(first, size, &proof[1..], &fr, &r).is_err());
                }
            }
        }
        assert!(verify_consistency(0, 3, &[], &empty_root(), &h(ROOTS[2])).is_err());
        assert!(verify_consistency(4, 3, &[], &h(ROOTS[3]), &h(ROOTS[2])).is_err());
    }

    #[test]
    fn a_published_consistency_vector_verifies() {
        // Sizes 2 → 5 (the vector every RFC 6962 implementation is checked with).
        let proof = [
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ];
        verify_consistency(2, 5, &proof, &h(ROOTS[1]), &h(ROOTS[4])).unwrap();
        let (nodes, _) = stored();
        assert_eq!(consistency_proof(2, 5, &mut |l, i| nodes[&(l, i)]), proof);
    }

    #[test]
    fn a_frontier_rebuilt_from_stored_nodes_goes_on_like_the_original() {
        let mut nodes = HashMap::new();
        let mut whole = Frontier::default();
        let leaves: Vec<Hash> = (0..100u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for (n, leaf) in leaves.iter().enumerate() {
            whole.push(*leaf, |l, i, h| {
                nodes.insert((l, i), *h);
            });
            let size = n as u64 + 1;
            let edge = Frontier::keys(size).iter().map(|k| nodes[k]).collect();
            let rebuilt = Frontier::from_nodes(size, edge).unwrap();
            assert_eq!(rebuilt, whole);
            assert_eq!(root(size, &mut |l, i| nodes[&(l, i)]), whole.root());
        }
        for level in 0..6u32 {
            for index in 0..(100u64 >> level) {
                let start = (index << level) as usize;
                assert_eq!(complete_root(&leaves[start..start + (1 << level)]), nodes[&(level, index)]);
            }
        }
    }
}
