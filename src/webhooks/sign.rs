//! Signatures: `Mailledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`,
//! one `v1=` per valid secret (the new one first during a rotation's grace period), as
//! Stripe does. The key is the secret string's bytes (`whsec_…`, as shown at creation).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The header every delivery carries.
pub const HEADER: &str = "Mailledger-Signature";

/// A new secret: `whsec_` and 32 random bytes in hex.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("whsec_{}", hex::encode(bytes))
}

/// Hex HMAC-SHA256 of `"<t>.<body>"` under `secret`.
pub fn v1(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The header's value for `body` at `t`, signed with each of `secrets`.
pub fn header_value(secrets: &[&str], t: i64, body: &[u8]) -> String {
    let mut out = format!("t={t}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&v1(s, t, body));
    }
    out
}

/// Whether `header` carries a valid `v1` signature of `body` under `secret` (what a
/// receiver does; the tests and the README's examples do the same).
pub fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut sigs = vec![];
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let want = v1(secret, t, body);
    sigs.iter().any(|s| subtle::ConstantTimeEq::ct_eq(s.as_bytes(), want.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        // HMAC-SHA256 with key "Jefe" over "what do ya want for nothing?", as "t.body"
        // cannot be arranged for this vector, checked on the MAC itself.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_signature_is_what_the_readme_computes() {
        // Python: hmac.new(b"whsec_test", b"1700000000." + body, hashlib.sha256).hexdigest()
        let body = br#"{"id":"x:3","type":"sent"}"#;
        assert_eq!(
            v1("whsec_test", 1_700_000_000, body),
            "9790b77f9c2331b1355733313e77bc517780b89ac3ac5a482a1b77d34296d04d"
        );
    }

    #[test]
    fn both_secrets_sign_during_a_rotation_and_either_verifies() {
        let (new, old) = (new_secret(), new_secret());
        assert_ne!(new, old);
        assert!(new.starts_with("whsec_") && new.len() == 6 + 64);
        let body = br#"{"id":"x"}"#;
        let h = header_value(&[&new, &old], 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        assert!(verify(&new, &h, body) && verify(&old, &h, body));
        assert!(!verify(&new_secret(), &h, body));
        assert!(!verify(&new, &h, br#"{"id":"y"}"#), "another body");
        assert!(!verify(&new, &h.replace("t=1700000000", "t=1700000001"), body), "another time");
    }
}
