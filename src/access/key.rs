//! The API key format: `mlk_` (the type prefix secret scanners look for), 43 characters
//! of base62 holding 256 random bits, and 6 of base62 holding a CRC-32 of them — so a
//! scanner (or mailledger itself) tells a real key from a typo without a lookup.
//!
//! A key is shown once, when it is made; only [`hash`] (SHA-256 of the whole key) is
//! stored. Comparing hashes is constant-time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with.
pub const PREFIX: &str = "mlk_";
const BODY: usize = 43;
const CHECK: usize = 6;
/// The length of every key.
pub const LEN: usize = PREFIX.len() + BODY + CHECK;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new key: 256 bits from the operating system's generator.
pub fn generate() -> String {
    let mut random = [0u8; 32];
    rand::fill(&mut random);
    let body = base62(&random, BODY);
    let check = base62(&crc32fast::hash(body.as_bytes()).to_be_bytes(), CHECK);
    format!("{PREFIX}{body}{check}")
}

/// Whether `text` has the shape of a key (prefix, length, alphabet, checksum): the
/// cheap test every presented key passes before it is hashed and looked up.
pub fn well_formed(text: &str) -> bool {
    let Some(rest) = text.strip_prefix(PREFIX) else { return false };
    if rest.len() != BODY + CHECK || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, check) = rest.split_at(BODY);
    let mut expected = [0u8; CHECK];
    base62_into(&crc32fast::hash(body.as_bytes()).to_be_bytes(), &mut expected);
    expected == check.as_bytes()
}

/// What is stored of a key: SHA-256 of the whole of it.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares two hashes in constant time.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// `bytes` as a big-endian number in base 62, left-padded to `width` digits.
fn base62(bytes: &[u8], width: usize) -> String {
    let mut digits = vec![0u8; width];
    base62_into(bytes, &mut digits);
    String::from_utf8(digits).expect("ASCII digits")
}

/// `bytes` (at most 32) as a big-endian number in base 62 into `out`, left-padded with
/// `0` (its lowest `out.len()` digits: every caller makes room for all of them). Takes
/// no allocation: every presented key's checksum is computed with it.
fn base62_into(bytes: &[u8], out: &mut [u8]) {
    let mut n = [0u32; 32];
    let n = &mut n[..bytes.len()];
    for (d, &b) in n.iter_mut().zip(bytes) {
        *d = u32::from(b);
    }
    out.fill(b'0');
    let mut at = out.len();
    while at > 0 && n.iter().any(|&d| d != 0) {
        // One long division of the base-256 number by 62.
        let mut rem = 0u32;
        for d in n.iter_mut() {
            let cur = rem * 256 + *d;
            *d = cur / 62;
            rem = cur % 62;
        }
        at -= 1;
        out[at] = ALPHABET[rem as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_shape_and_checksum() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.len(), LEN);
        assert!(a.starts_with("mlk_") && well_formed(&a), "{a}");
        // One character changed breaks the checksum.
        let mut typo = a.clone().into_bytes();
        let i = PREFIX.len() + 5;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert!(!well_formed(&String::from_utf8(typo).unwrap()));
        for bad in ["", "mlk_", "Bearer x", &a[..LEN - 1], &format!("{a}x"), &a.replace("mlk_", "mlx_")] {
            assert!(!well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn hashes_compare_in_full() {
        let k = generate();
        assert!(same(&hash(&k), &hash(&k)));
        assert!(!same(&hash(&k), &hash(&generate())));
        assert_eq!(base62(&[0, 0, 1], 3), "001");
        assert_eq!(base62(&[255], 2), "47");
    }
}
