//! Signed notes and checkpoints in the C2SP formats (`signed-note`, `tlog-checkpoint`),
//! which Go's `golang.org/x/mod/sumdb/note` and the transparency-log tools read.
//!
//! - Verifier key: `<name>+<key id, 8 hex>+<base64(0x01 ‖ Ed25519 public key)>`; the key
//!   id is the first 4 bytes of `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
//! - Signer (private) key: `PRIVATE+KEY+<name>+<key id>+<base64(0x01 ‖ seed)>`.
//! - A note: its text (lines ending in `\n`), an empty line, then one line per signature:
//!   `— <name> <base64(key id ‖ Ed25519 signature of the text)>`.
//! - A checkpoint's text: the origin, the tree size in decimal, the root hash in base64,
//!   each on its own line. This log writes no extension lines and accepts none.
//!
//! Parsing never panics: every refusal says what is wrong with which line.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The algorithm byte of an Ed25519 key.
const ED25519: u8 = 0x01;
/// The start of a signature line.
const DASH: &str = "— ";

/// A key or note that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoteError(pub String);

fn err<T>(m: impl Into<String>) -> Result<T, NoteError> {
    Err(NoteError(m.into()))
}

/// A key name: non-empty, no spaces, no `+`, printable (C2SP signed-note).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '+')
}

fn key_id(name: &str, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// A public key that checks signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    id: u32,
    key: VerifyingKey,
}

/// A private key that signs checkpoints. Its `Debug` hides the key.
#[derive(Clone)]
pub struct SignerKey {
    name: String,
    id: u32,
    key: SigningKey,
}

impl std::fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignerKey({}+{:08x})", self.name, self.id)
    }
}

impl SignerKey {
    /// A new random key named `name`.
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        let seed: [u8; 32] = rand::random();
        Self::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return err(format!("{}: a key name has no spaces or '+'", crate::text::echo(name)));
        }
        let key = SigningKey::from_bytes(&seed);
        Ok(Self { name: name.to_owned(), id: key_id(name, key.verifying_key().as_bytes()), key })
    }

    /// Reads `PRIVATE+KEY+<name>+<id>+<base64>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let Some(rest) = text.strip_prefix("PRIVATE+KEY+") else {
            return err("not a signing key (want PRIVATE+KEY+<name>+<id>+<key>, as `mailledger ledger keygen` writes)");
        };
        let (name, id, bytes) = split_key(rest)?;
        if bytes.len() != 33 || bytes[0] != ED25519 {
            return err("the signing key is not an Ed25519 key (algorithm byte 0x01 and 32 bytes)");
        }
        let seed: [u8; 32] = bytes[1..].try_into().expect("33 bytes");
        let key = Self::from_seed(name, seed)?;
        if key.id != id {
            return err(format!("the signing key's id {id:08x} does not match its name and key ({:08x})", key.id));
        }
        Ok(key)
    }

    /// The private key in Go's format.
    pub fn encode(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.id, B64.encode(bytes))
    }

    /// Its public half.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `text` (which must end in a newline) with this key's signature line under it.
    pub fn sign(&self, text: &str) -> String {
        sign_with_all(text, std::slice::from_ref(self))
    }

    /// This key's signature line over `text`.
    fn signature_line(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{DASH}{} {}\n", self.name, B64.encode(blob))
    }
}

/// `text` (which must end in a newline) with one signature line under it for each of
/// `keys`, in order: a note that a verifier holding any one of their verifier keys
/// opens (a signing key's changeover: the old key and the new sign together).
pub fn sign_with_all(text: &str, keys: &[SignerKey]) -> String {
    let mut note = format!("{text}\n");
    for key in keys {
        note.push_str(&key.signature_line(text));
    }
    note
}

/// The keys of a key file, one a line, each with its line number (from 1): lines
/// trimmed, blank lines and `#` comments skipped. Signing and verifier key files alike
/// hold one key, or the old and the new one across a rotation.
pub fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i + 1, l))
}

/// `<name>+<hex id>+<base64>` → its parts.
fn split_key(text: &str) -> Result<(&str, u32, Vec<u8>), NoteError> {
    // The name has no '+'; the base64 may.
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
        return err("malformed key: want <name>+<8 hex digits>+<base64>");
    };
    if !valid_name(name) {
        return err("malformed key: the name is empty or has spaces");
    }
    if id.len() != 8 {
        return err("malformed key: the key id is not 8 hex digits");
    }
    let id = u32::from_str_radix(id, 16).map_err(|_| NoteError("malformed key: the key id is not hex".into()))?;
    let bytes = B64.decode(b64).map_err(|_| NoteError("malformed key: the key is not base64".into()))?;
    Ok((name, id, bytes))
}

impl VerifierKey {
    /// Reads `<name>+<id>+<base64(0x01 ‖ key)>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        if text.starts_with("PRIVATE+KEY+") {
            return err("this is a private signing key; give the public verifier key (the .pub file)");
        }
        let (name, id, bytes) = split_key(text)?;
        if bytes.len() != 33 || bytes[0] != ED25519 {
            return err("not an Ed25519 verifier key (algorithm byte 0x01 and 32 bytes)");
        }
        let public: [u8; 32] = bytes[1..].try_into().expect("33 bytes");
        let key = VerifyingKey::from_bytes(&public).map_err(|_| NoteError("not a valid Ed25519 public key".into()))?;
        if key_id(name, &public) != id {
            return err(format!("the verifier key's id {id:08x} does not match its name and key"));
        }
        Ok(Self { name: name.to_owned(), id, key })
    }

    /// The key in the C2SP format.
    pub fn encode(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.id, B64.encode(bytes))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The text of `note` once a signature by this key over it checks; signatures by
    /// other keys are ignored.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        match self.check(note)? {
            Some(text) => Ok(text),
            // A note with no signature line at all is refused by `check`.
            None => err(format!("bad signature: not signed by {} (only by other keys)", self.label())),
        }
    }

    /// The key as `name+id`, as a signature line's reader names it.
    pub fn label(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }

    /// `Some(text)` when this key's signature over `note` checks, `None` when the note
    /// carries no signature by this key; an error for a malformed note or a signature by
    /// this key that does not verify.
    pub fn check<'a>(&self, note: &'a str) -> Result<Option<&'a str>, NoteError> {
        let Some(split) = note.rfind("\n\n") else {
            return err("not a signed note: no empty line before the signatures");
        };
        let (text, sigs) = (&note[..=split], &note[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return err("not a signed note: no signature lines (each ends in a newline)");
        }
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix(DASH) else {
                return err(format!("malformed signature line {}", crate::text::echo(line)));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return err("malformed signature line: want `— <name> <base64>`");
            };
            let blob = B64.decode(b64).map_err(|_| NoteError("a signature is not base64".into()))?;
            if blob.len() < 4 {
                return err("a signature is too short");
            }
            let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
            if name != self.name || id != self.id {
                continue;
            }
            let sig = Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError(format!("the signature by {name} is not an Ed25519 signature")))?;
            return match self.key.verify(text.as_bytes(), &sig) {
                Ok(()) => Ok(Some(text)),
                Err(_) => err(format!("bad signature: the signature by {name} does not verify")),
            };
        }
        Ok(None)
    }
}

/// The text of `note` once a signature by one of `keys` checks (a log whose signing key
/// was rotated: its checkpoints are signed by one key, then by the next). A signature
/// by one of `keys` that does not verify fails the note, whatever else signs it;
/// signatures by other keys are ignored.
pub fn open_with_any<'a>(note: &'a str, keys: &[VerifierKey]) -> Result<&'a str, NoteError> {
    let mut opened = None;
    for key in keys {
        if let Some(text) = key.check(note)? {
            opened = Some(text);
        }
    }
    if let Some(text) = opened {
        return Ok(text);
    }
    match keys {
        [] => err("no verifier key to check the signature with"),
        [one] => one.open(note),
        _ => {
            let trusted = keys.iter().map(VerifierKey::label).collect::<Vec<_>>().join(", ");
            err(format!("bad signature: not signed by any of {trusted} (only by other keys)"))
        }
    }
}

/// A checkpoint: a tree size and its root hash, for an origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Who keeps the log (`mailledger/<database>`).
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// Its root hash.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root, each line ending in a newline.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Signs the text with `key`: the whole note.
    pub fn sign(&self, key: &SignerKey) -> String {
        key.sign(&self.text())
    }

    /// Signs the text with every one of `keys`: one note, a signature line each.
    pub fn sign_with_all(&self, keys: &[SignerKey]) -> String {
        sign_with_all(&self.text(), keys)
    }

    /// Parses a checkpoint's text (exactly three lines).
    pub fn parse_text(text: &str) -> Result<Self, NoteError> {
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        if lines.len() < 3 {
            return err(format!("checkpoint: {} line(s); want 3 (origin, size, root hash)", lines.len()));
        }
        if lines.len() > 3 {
            return err(format!(
                "checkpoint line 4: unexpected extra line {} (this log writes none)",
                crate::text::echo(lines[3])
            ));
        }
        let origin = lines[0];
        if origin.is_empty() || origin.chars().any(char::is_control) {
            return err("checkpoint line 1: the origin is empty");
        }
        let size_line = lines[1];
        let size: u64 = size_line
            .parse()
            .ok()
            .filter(|_| {
                size_line.bytes().all(|b| b.is_ascii_digit()) && (size_line == "0" || !size_line.starts_with('0'))
            })
            .ok_or_else(|| {
                NoteError(format!("checkpoint line 2: {} is not a tree size", crate::text::echo(size_line)))
            })?;
        let root = B64
            .decode(lines[2])
            .ok()
            .and_then(|b| <Hash>::try_from(b).ok())
            .ok_or_else(|| NoteError("checkpoint line 3: not a base64 SHA-256 hash".into()))?;
        Ok(Self { origin: origin.to_owned(), size, root })
    }

    /// Opens a signed checkpoint note with `key`: the signature must verify and the text
    /// must be a checkpoint.
    pub fn open(note: &str, key: &VerifierKey) -> Result<Self, NoteError> {
        Self::parse_text(key.open(note)?)
    }

    /// Opens a signed checkpoint note signed by any of `keys` (see [`open_with_any`]).
    pub fn open_with_any(note: &str, keys: &[VerifierKey]) -> Result<Self, NoteError> {
        Self::parse_text(open_with_any(note, keys)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // golang.org/x/mod/sumdb/note's test key and note.
    const VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const SKEY: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const TEXT: &str =
        "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const NOTE_SIG: &str =
        "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    #[test]
    fn a_checkpoint_signed_by_two_keys_opens_with_either() {
        let keys = [SignerKey::generate("old").unwrap(), SignerKey::generate("new").unwrap()];
        let c = Checkpoint { origin: "o".into(), size: 3, root: [7; 32] };
        let note = c.sign_with_all(&keys);
        assert_eq!(note.matches("\n— ").count(), 2, "{note}");
        for key in &keys {
            assert_eq!(Checkpoint::open(&note, &key.verifier()).unwrap(), c);
        }
        assert_eq!(Checkpoint::open_with_any(&note, &[keys[1].verifier(), keys[0].verifier()]).unwrap(), c);
        // One key: the note `sign` makes, as before.
        assert_eq!(c.sign_with_all(&keys[..1]), c.sign(&keys[0]));
    }

    #[test]
    fn go_note_vectors() {
        let signer = SignerKey::parse(SKEY).unwrap();
        assert_eq!(signer.encode(), SKEY);
        assert_eq!(signer.verifier().encode(), VKEY);
        let note = signer.sign(TEXT);
        assert_eq!(note, format!("{TEXT}\n{NOTE_SIG}"));
        let verifier = VerifierKey::parse(VKEY).unwrap();
        assert_eq!(verifier.open(&note).unwrap(), TEXT);
    }

    #[test]
    fn other_keys_tampered_text_and_malformed_keys_are_refused() {
        let signer = SignerKey::parse(SKEY).unwrap();
        let other = SignerKey::generate("PeterNeumann").unwrap();
        let note = signer.sign(TEXT);
        assert!(other.verifier().open(&note).unwrap_err().0.contains("bad signature"));
        assert!(VerifierKey::parse(VKEY).unwrap().open(&note.replace("problem", "pr0blem")).is_err());
        assert!(VerifierKey::parse(VKEY).unwrap().open(&other.sign(TEXT)).is_err());
        for bad in ["", "x", "a+b+c", "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", SKEY] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad}");
        }
        assert!(SignerKey::parse(VKEY).is_err());
        assert!(SignerKey::parse("PRIVATE+KEY+x+00000000+AAAA").is_err());
    }

    #[test]
    fn checkpoints_round_trip_and_extra_lines_are_refused() {
        let key = SignerKey::generate("mailledger/test").unwrap();
        let c = Checkpoint { origin: "mailledger/test".into(), size: 42, root: [7; 32] };
        let note = c.sign(&key);
        assert_eq!(Checkpoint::open(&note, &key.verifier()).unwrap(), c);
        let extra = key.sign("mailledger/test\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\nmore\n");
        assert!(Checkpoint::open(&extra, &key.verifier()).unwrap_err().0.contains("line 4"));
        for text in ["o\n042\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n", "o\n-1\nx\n", "o\n1\nAAAA\n", "o\n1\n"] {
            assert!(Checkpoint::parse_text(text).is_err(), "{text}");
        }
    }
}
