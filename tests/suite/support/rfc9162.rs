//! An independent checker of what the proof log hands out, written from the specs and
//! sharing no code with `mailledger::proof`: RFC 6962's recursive definitions (the
//! service verifies with RFC 9162's iterative ones), the C2SP signed-note and
//! tlog-checkpoint formats, and the canonical event bytes as the README defines them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

pub type H = [u8; 32];

fn sha(parts: &[&[u8]]) -> H {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub fn leaf(data: &[u8]) -> H {
    sha(&[&[0], data])
}

fn node(l: &H, r: &H) -> H {
    sha(&[&[1], l, r])
}

fn k(n: u64) -> u64 {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The root that `proof` (RFC 6962 PATH, deepest first) gives leaf `m` of `n`.
fn path_root(m: u64, n: u64, leaf: H, proof: &[H]) -> Option<H> {
    if n == 1 {
        return proof.is_empty().then_some(leaf);
    }
    let (last, rest) = proof.split_last()?;
    let k = k(n);
    if m < k {
        Some(node(&path_root(m, k, leaf, rest)?, last))
    } else {
        Some(node(last, &path_root(m - k, n - k, leaf, rest)?))
    }
}

pub fn inclusion_ok(m: u64, n: u64, leaf: H, proof: &[H], root: &H) -> bool {
    m < n && path_root(m, n, leaf, proof).as_ref() == Some(root)
}

/// (old root, new root) rebuilt from RFC 6962 SUBPROOF(m, D[n], whole).
fn sub(m: u64, n: u64, whole: bool, proof: &[H], first_root: &H) -> Option<(H, H)> {
    if m == n {
        return if whole {
            proof.is_empty().then_some((*first_root, *first_root))
        } else {
            (proof.len() == 1).then(|| (proof[0], proof[0]))
        };
    }
    let (last, rest) = proof.split_last()?;
    let k = k(n);
    if m <= k {
        let (old, new) = sub(m, k, whole, rest, first_root)?;
        Some((old, node(&new, last)))
    } else {
        let (old, new) = sub(m - k, n - k, false, rest, first_root)?;
        Some((node(last, &old), node(last, &new)))
    }
}

pub fn consistency_ok(m: u64, n: u64, proof: &[H], first_root: &H, second_root: &H) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && first_root == second_root;
    }
    sub(m, n, true, proof, first_root) == Some((*first_root, *second_root))
}

/// A checkpoint's (origin, size, root) once its note verifies with `vkey`
/// (`name+hex+base64(0x01 ‖ key)`); `None` if anything is off.
pub fn open_checkpoint(note: &str, vkey: &str) -> Option<(String, u64, H)> {
    let mut parts = vkey.trim().splitn(3, '+');
    let (name, id, key) = (parts.next()?, parts.next()?, B64.decode(parts.next()?).ok()?);
    if key.len() != 33 || key[0] != 1 {
        return None;
    }
    let public: [u8; 32] = key[1..].try_into().ok()?;
    let want_id = sha(&[name.as_bytes(), b"\n", &[1], &public]);
    if hex::encode(&want_id[..4]) != id {
        return None;
    }
    let cut = note.find("\n\n")?;
    let (text, sigs) = (&note[..cut + 1], &note[cut + 2..]);
    let verifying = VerifyingKey::from_bytes(&public).ok()?;
    let signed = sigs.lines().any(|line| {
        let Some((who, blob)) = line.strip_prefix("— ").and_then(|l| l.split_once(' ')) else { return false };
        let Ok(blob) = B64.decode(blob) else { return false };
        who == name
            && blob.len() == 68
            && blob[..4] == want_id[..4]
            && Signature::from_slice(&blob[4..]).is_ok_and(|s| verifying.verify(text.as_bytes(), &s).is_ok())
    });
    if !signed {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != 3 {
        return None;
    }
    let root: H = B64.decode(lines[2]).ok()?.try_into().ok()?;
    Some((lines[0].to_owned(), lines[1].parse().ok()?, root))
}

/// The canonical bytes of an event (README, "What a leaf is").
#[allow(clippy::too_many_arguments)]
pub fn canonical(
    position: i64,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    version: &str,
    recorded_at_micros: i64,
    payload: &str,
    metadata: &str,
) -> Vec<u8> {
    let mut out = b"mailledger-event-v1".to_vec();
    let s = |out: &mut Vec<u8>, t: &str| {
        out.extend_from_slice(&u32::try_from(t.len()).unwrap().to_be_bytes());
        out.extend_from_slice(t.as_bytes());
    };
    out.extend_from_slice(&position.to_be_bytes());
    s(&mut out, aggregate_type);
    s(&mut out, aggregate_id);
    out.extend_from_slice(&sequence.to_be_bytes());
    s(&mut out, event_type);
    s(&mut out, version);
    out.extend_from_slice(&recorded_at_micros.to_be_bytes());
    s(&mut out, payload);
    s(&mut out, metadata);
    out
}

pub fn b64(s: &str) -> H {
    B64.decode(s).unwrap().try_into().unwrap()
}
