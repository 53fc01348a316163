//! Webhook secrets at rest: sealed with ChaCha20-Poly1305 under `webhooks.encryption_key`
//! when one is set (`enc:v1:` + base64 of nonce ‖ ciphertext ‖ tag, the endpoint's id as
//! associated data, so a sealed secret cannot be moved to another endpoint), else kept
//! as issued. A stored value without the prefix is a secret kept as issued: both kinds
//! open, so setting a key later needs no migration (a rotation seals the new secret).

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

const PREFIX: &str = "enc:v1:";

/// Seals and opens stored secrets.
#[derive(Clone, Default)]
pub struct SecretBox(Option<Arc<LessSafeKey>>);

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SecretBox(sealing)" } else { "SecretBox(none)" })
    }
}

impl SecretBox {
    /// The key in `path` (64 hex digits), or none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(Self(None)) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("webhooks.encryption_key: cannot read {}: {e}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| anyhow::anyhow!("webhooks.encryption_key: {} must hold 64 hex digits", path.display()))?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| anyhow::anyhow!("unusable key"))?;
        Ok(Self(Some(Arc::new(LessSafeKey::new(key)))))
    }

    /// Whether secrets are sealed.
    pub fn sealing(&self) -> bool {
        self.0.is_some()
    }

    /// What to store for `secret` of endpoint `id`.
    pub fn seal(&self, id: Uuid, secret: &str) -> anyhow::Result<String> {
        let Some(key) = &self.0 else { return Ok(secret.to_owned()) };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut sealed = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(id.as_bytes()), &mut sealed)
            .map_err(|_| anyhow::anyhow!("cannot seal"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)))
    }

    /// The secret `stored` for endpoint `id` holds.
    pub fn open(&self, id: Uuid, stored: &str) -> Result<String, String> {
        let Some(text) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_owned()) };
        let key = self.0.as_ref().ok_or("the secret is sealed and webhooks.encryption_key is not set")?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(text)
            .map_err(|_| "the stored secret is damaged".to_owned())?;
        if bytes.len() < NONCE_LEN {
            return Err("the stored secret is damaged".into());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "the stored secret is damaged".to_owned())?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut sealed)
            .map_err(|_| "the stored secret does not open with webhooks.encryption_key".to_owned())?;
        String::from_utf8(plain.to_vec()).map_err(|_| "the stored secret is damaged".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> (SecretBox, tempfile::NamedTempFile) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{}\n", "ab".repeat(32))).unwrap();
        (SecretBox::load(Some(file.path())).unwrap(), file)
    }

    #[test]
    fn sealed_secrets_open_only_for_their_endpoint_and_key() {
        let (sealer, _file) = keyed();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let stored = sealer.seal(a, "whsec_abc").unwrap();
        assert!(stored.starts_with(PREFIX) && !stored.contains("whsec_abc"));
        assert_ne!(stored, sealer.seal(a, "whsec_abc").unwrap(), "a fresh nonce each time");
        assert_eq!(sealer.open(a, &stored).unwrap(), "whsec_abc");
        assert!(sealer.open(b, &stored).is_err(), "bound to its endpoint");
        assert!(SecretBox::default().open(a, &stored).is_err(), "needs the key");
        let mut damaged = stored.clone();
        damaged.pop();
        damaged.push(if stored.ends_with('A') { 'B' } else { 'A' });
        assert!(sealer.open(a, &damaged).is_err());
        // Kept as issued (no key, or before one was set): opens as it is.
        assert_eq!(SecretBox::default().seal(a, "whsec_x").unwrap(), "whsec_x");
        assert_eq!(sealer.open(a, "whsec_x").unwrap(), "whsec_x");
    }

    #[test]
    fn a_bad_key_file_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not hex").unwrap();
        assert!(SecretBox::load(Some(file.path())).unwrap_err().to_string().contains("64 hex digits"));
        assert!(SecretBox::load(Some(Path::new("/nonexistent/key"))).is_err());
    }
}
