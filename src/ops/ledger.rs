//! `mailledger ledger …` and `replay --proofs`: the auditor's tools for the proof log.
//!
//! - [`keygen`]: an Ed25519 key pair in the Go note formats.
//! - [`verify_store`]: recompute the whole log from `events`, leaf by leaf, beside the
//!   leaves the log sealed and every stored (and every kept) checkpoint; names the first
//!   position where the store and the log disagree.
//! - [`export`]: the offline export; [`verify_exports`] checks exports with the public
//!   key alone, and each later export against every checkpoint of the earlier ones.
//!
//! All stream (flat memory). Each returns `Ok(Err(reason))` when the log does not
//! verify, and `Err` when the check itself could not run.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context;
use futures::TryStreamExt;
use sqlx::PgPool;

use super::progress::Progress;
use crate::proof::audit::{Audit, Summary};
use crate::proof::export::{self, Line};
use crate::proof::merkle::Hash;
use crate::proof::note::{SignerKey, VerifierKey, key_lines};
use crate::proof::tree::{self, Leaf, StoredCheckpoint};
use crate::proof::{ProofLog, body, canonical};
use crate::store::raw;

/// A check's outcome: what was verified, or why it did not.
pub type Verdict = Result<Summary, String>;

/// Makes a key pair named `name`: the private key to `out` (mode 0600; never
/// overwritten) and the verifier key to `out.pub`. Returns the verifier key.
pub fn keygen(name: &str, out: &Path) -> anyhow::Result<String> {
    let key = SignerKey::generate(name)?;
    let public = key.verifier().encode();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file =
        options.open(out).with_context(|| format!("{}: cannot create (it is never overwritten)", out.display()))?;
    writeln!(file, "{}", key.encode())?;
    let pub_path = format!("{}.pub", out.display());
    std::fs::write(&pub_path, format!("{public}\n")).with_context(|| format!("{pub_path}: cannot write"))?;
    Ok(public)
}

/// Every verifier key given, each a key or a file of keys, one a line (blank lines and
/// `#` comments skipped): the keys of a log whose signing key was rotated.
pub fn load_verifiers(given: &[String]) -> anyhow::Result<Vec<VerifierKey>> {
    let mut keys = Vec::new();
    for text_or_path in given {
        if !Path::new(text_or_path).is_file() {
            let key = VerifierKey::parse(text_or_path)
                .with_context(|| format!("{}: not a verifier key", crate::text::echo(text_or_path)))?;
            keys.push(key);
            continue;
        }
        let text = std::fs::read_to_string(text_or_path).with_context(|| format!("{text_or_path}: cannot be read"))?;
        let before = keys.len();
        for (n, line) in key_lines(&text) {
            keys.push(
                VerifierKey::parse(line).with_context(|| format!("{text_or_path} line {n}: not a verifier key"))?,
            );
        }
        anyhow::ensure!(keys.len() > before, "{text_or_path}: holds no verifier key");
    }
    Ok(keys)
}

/// Stored leaves, in index order, read a chunk at a time.
struct Leaves<'a> {
    pool: &'a PgPool,
    next: u64,
    buffer: VecDeque<Leaf>,
}

impl<'a> Leaves<'a> {
    fn new(pool: &'a PgPool) -> Self {
        Self { pool, next: 0, buffer: VecDeque::new() }
    }

    async fn next(&mut self) -> anyhow::Result<Option<Leaf>> {
        if self.buffer.is_empty() {
            self.buffer.extend(tree::leaves_from(self.pool, self.next, 10_000).await?);
        }
        let leaf = self.buffer.pop_front();
        if let Some(l) = leaf {
            self.next = l.index + 1;
        }
        Ok(leaf)
    }
}

/// Stored checkpoints up to `up_to`, smallest first, read a chunk at a time.
struct Checkpoints<'a> {
    pool: &'a PgPool,
    after: u64,
    up_to: u64,
    buffer: VecDeque<StoredCheckpoint>,
}

impl<'a> Checkpoints<'a> {
    fn new(pool: &'a PgPool, up_to: u64) -> Self {
        Self { pool, after: 0, up_to, buffer: VecDeque::new() }
    }

    /// The next checkpoint, if any is left.
    async fn peek(&mut self) -> anyhow::Result<Option<&StoredCheckpoint>> {
        if self.buffer.is_empty() && self.after < self.up_to {
            let chunk = tree::checkpoints_after(self.pool, self.after, 1_000).await?;
            self.after = chunk.last().map_or(self.up_to, |c| c.size);
            self.buffer.extend(chunk.into_iter().filter(|c| c.size <= self.up_to));
        }
        Ok(self.buffer.front())
    }

    fn pop(&mut self) -> Option<StoredCheckpoint> {
        self.buffer.pop_front()
    }
}

/// Recomputes the log from every event in the store and checks it against the sealed
/// leaves, every stored checkpoint and every note in `kept` (label, note).
pub async fn verify_store(
    pool: &PgPool,
    keys: Vec<VerifierKey>,
    kept: &[(String, String)],
    progress: &dyn Progress,
) -> anyhow::Result<Verdict> {
    // The log first, then the events: every sealed event is in the later snapshot.
    let (log_size, log_root) = tree::head(pool).await?;
    let last_signed = {
        let mut conn = pool.acquire().await?;
        tree::latest(&mut conn).await?.map_or(0, |c| c.size)
    };
    let mut audit = Audit::trusting(keys);
    for (label, note) in kept {
        if let Err(e) = audit.expect(note, label) {
            return Ok(Err(e.0));
        }
    }
    progress.start(raw::count(pool).await?.max(0) as u64);
    let mut leaves = Leaves::new(pool);
    let mut checkpoints = Checkpoints::new(pool, last_signed.max(log_size));
    let mut conn = pool.acquire().await?;
    let mut events = raw::stream(&mut conn);
    let mut unsealed = 0u64;
    let mut unreported = 0;
    while let Some(e) = events.try_next().await? {
        let index = audit.size();
        let leaf = canonical::leaf(&e);
        if index < log_size {
            let Some(sealed) = leaves.next().await? else {
                return Ok(Err(format!(
                    "the log says it holds {log_size} leaves but leaf {index} is missing: the log was truncated"
                )));
            };
            if sealed.position != e.position() {
                return Ok(Err(format!(
                    "first disagreement at leaf {index}: the log sealed the event at position {} there, the store \
                     has position {} (an event was deleted, inserted or re-ordered)",
                    sealed.position,
                    e.position()
                )));
            }
            if sealed.hash != leaf {
                return Ok(Err(format!(
                    "first disagreement at position {} (leaf {index}): the event there differs from the one the \
                     log sealed (edited, or moved from another position)",
                    e.position()
                )));
            }
        } else {
            unsealed += 1;
        }
        while let Some(c) = checkpoints.peek().await? {
            if c.size > index + 1 {
                break;
            }
            let c = checkpoints.pop().expect("peeked");
            if let Err(e) = audit.expect(&c.note, &format!("stored checkpoint of size {}", c.size)) {
                return Ok(Err(e.0));
            }
        }
        if let Err(e) = audit.push(leaf) {
            return Ok(Err(e.0));
        }
        if audit.size() == log_size && audit.root() != log_root {
            return Ok(Err(format!("the log's own root at size {log_size} is not the root of its leaves")));
        }
        unreported += 1;
        if unreported == 4096 {
            progress.advance(unreported);
            unreported = 0;
        }
    }
    progress.advance(unreported);
    drop(events);
    if audit.size() < log_size {
        let missing = leaves.next().await?.map_or_else(|| "?".to_owned(), |l| l.position.to_string());
        return Ok(Err(format!(
            "the log sealed {log_size} events but the store holds {}: position {missing} (leaf {}) and every later \
             sealed event are missing (truncated)",
            audit.size(),
            audit.size()
        )));
    }
    // Checkpoints past the events: history that shrank.
    while checkpoints.peek().await?.is_some() {
        let c = checkpoints.pop().expect("peeked");
        if let Err(e) = audit.expect(&c.note, &format!("stored checkpoint of size {}", c.size)) {
            return Ok(Err(e.0));
        }
    }
    if unsealed > 0 {
        progress.message(&format!("{unsealed} events not sealed yet"));
    }
    Ok(audit.finish().map_err(|e| e.0))
}

/// Writes the export of every sealed event and stored checkpoint to `out`; returns
/// (leaves, checkpoints).
pub async fn export(
    pool: &PgPool,
    origin: &str,
    out: &mut impl Write,
    progress: &dyn Progress,
) -> anyhow::Result<(u64, u64)> {
    let (log_size, _) = tree::head(pool).await?;
    progress.start(log_size);
    writeln!(out, "{}", export::header(origin))?;
    let mut leaves = Leaves::new(pool);
    let mut checkpoints = Checkpoints::new(pool, log_size);
    let mut conn = pool.acquire().await?;
    let mut events = raw::stream(&mut conn);
    let (mut n, mut written) = (0u64, 0u64);
    while n < log_size {
        let Some(e) = events.try_next().await? else {
            anyhow::bail!("the store lacks sealed events from leaf {n} on: run `mailledger ledger verify`")
        };
        let leaf: Hash = match leaves.next().await? {
            Some(l) => l.hash,
            None => anyhow::bail!("the log lacks leaf {n}: run `mailledger ledger verify`"),
        };
        writeln!(out, "{}", export::event_line(n, &leaf, &e)?)?;
        n += 1;
        while let Some(c) = checkpoints.peek().await? {
            if c.size > n {
                break;
            }
            let c = checkpoints.pop().expect("peeked");
            writeln!(out, "{}", export::checkpoint_line(&c.note))?;
            written += 1;
        }
        if n.is_multiple_of(4096) {
            progress.advance(4096);
        }
    }
    writeln!(out, "{}", export::end_line(n, written))?;
    out.flush()?;
    Ok((n, written))
}

/// Checks exports with the public keys alone, in the order given (oldest first): each
/// recomputed from its events and held to its own checkpoints, to the notes in `kept`,
/// and to every checkpoint of the exports before it (history only grew).
pub fn verify_exports(
    files: &[impl AsRef<Path>],
    keys: &[VerifierKey],
    kept: &[(String, String)],
    progress: &dyn Progress,
) -> anyhow::Result<Verdict> {
    let mut known: Vec<(String, String)> = kept.to_vec();
    let mut last = None;
    for path in files {
        let path = path.as_ref();
        let file = std::fs::File::open(path).with_context(|| format!("{}: cannot be read", path.display()))?;
        match verify_export(path, std::io::BufReader::new(file), keys, &known, progress)? {
            Ok((summary, notes)) => {
                known.extend(notes);
                last = Some(summary);
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(last.ok_or_else(|| "no export given".to_owned()))
}

type ExportVerdict = Result<(Summary, Vec<(String, String)>), String>;

fn verify_export(
    path: &Path,
    reader: impl BufRead,
    keys: &[VerifierKey],
    known: &[(String, String)],
    progress: &dyn Progress,
) -> anyhow::Result<ExportVerdict> {
    let name = path.display();
    let mut audit = Audit::trusting(keys.to_vec());
    for (label, note) in known {
        if let Err(e) = audit.expect(note, label) {
            return Ok(Err(e.0));
        }
    }
    let mut notes = Vec::new();
    let mut ended = None;
    let mut number = 0u64;
    for line in reader.lines() {
        number += 1;
        let at = format!("{name} line {number}");
        let line = line.with_context(|| format!("{at}: cannot be read"))?;
        if ended.is_some() {
            return Ok(Err(format!("{at}: a line after the end line")));
        }
        let parsed = match export::parse(&line) {
            Ok(p) => p,
            Err(e) => return Ok(Err(format!("{at}: {e}"))),
        };
        match parsed {
            Line::Header { .. } if number == 1 => {}
            _ if number == 1 => return Ok(Err(format!("{at}: not a proof export (no header line)"))),
            Line::Header { .. } => return Ok(Err(format!("{at}: a second header"))),
            Line::Event { index, leaf_hash, event } => {
                if index != audit.size() {
                    return Ok(Err(format!("{at}: leaf {index} where leaf {} comes next", audit.size())));
                }
                let leaf = canonical::leaf(&event);
                if leaf != leaf_hash {
                    return Ok(Err(format!(
                        "{at} (leaf {index}, position {}): the event does not hash to the leaf the log sealed: it \
                         was changed",
                        event.position()
                    )));
                }
                if let Err(e) = audit.push(leaf) {
                    return Ok(Err(e.0));
                }
                progress.advance(1);
            }
            Line::Checkpoint(note) => {
                if let Err(e) = audit.checkpoint_here(&note, &at) {
                    return Ok(Err(e.0));
                }
                notes.push((format!("checkpoint at {at}"), note));
            }
            Line::End { leaves, checkpoints } => {
                if leaves != audit.size() || checkpoints != notes.len() as u64 {
                    return Ok(Err(format!(
                        "{at}: the end line counts {leaves} leaves and {checkpoints} checkpoints, the file has {} \
                         and {}",
                        audit.size(),
                        notes.len()
                    )));
                }
                ended = Some(number);
            }
        }
    }
    if ended.is_none() {
        return Ok(Err(format!("{name}: no end line after line {number}: the export is cut short")));
    }
    if notes.is_empty() {
        return Ok(Err(format!("{name}: no signed checkpoint in the export: nothing to verify against")));
    }
    Ok(audit.finish().map(|s| (s, notes)).map_err(|e| e.0))
}

/// Every event of email `id` with its inclusion proof in the newest checkpoint, as JSON.
pub async fn prove(pool: &PgPool, id: uuid::Uuid, by: &crate::access::Principal) -> anyhow::Result<serde_json::Value> {
    let log = ProofLog::new(pool.clone());
    let (checkpoint, proofs) = log.prove_email(id, by, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(serde_json::to_value(body::InclusionBody::new(&checkpoint, &proofs))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::progress::Silent;
    use crate::proof::merkle::Frontier;
    use crate::proof::note::Checkpoint;
    use crate::store::feed::Checkpoint as At;
    use crate::store::raw::RawEvent;

    fn event(position: i64, subject: &str) -> RawEvent {
        RawEvent {
            checkpoint: At { txid: 0, position },
            aggregate_type: "Email".into(),
            aggregate_id: format!("e{position}"),
            sequence: 1,
            event_type: "Requested".into(),
            event_version: "1.0".into(),
            recorded_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_000_000 + position).unwrap(),
            payload: format!(r#"{{"Requested": {{"subject": "{subject}"}}}}"#),
            metadata: "{}".into(),
        }
    }

    /// An export of `events`, signed by `key` after every `every` events.
    fn export_of(dir: &Path, name: &str, events: &[RawEvent], key: &SignerKey, every: usize) -> std::path::PathBuf {
        let mut lines = vec![export::header("o")];
        let mut f = Frontier::default();
        let mut notes = 0;
        for (i, e) in events.iter().enumerate() {
            let leaf = canonical::leaf(e);
            f.push(leaf, |_, _, _| {});
            lines.push(export::event_line(i as u64, &leaf, e).unwrap());
            if (i + 1) % every == 0 {
                let note = Checkpoint { origin: "o".into(), size: f.size(), root: f.root() }.sign(key);
                lines.push(export::checkpoint_line(&note));
                notes += 1;
            }
        }
        lines.push(export::end_line(f.size(), notes));
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    #[test]
    fn a_newer_export_is_held_to_the_older_exports_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let key = SignerKey::generate("o").unwrap();
        let old: Vec<RawEvent> = (1..=6).map(|p| event(p, "hello")).collect();
        let mut grown = old.clone();
        grown.extend((7..=9).map(|p| event(p, "later")));
        let a = export_of(dir.path(), "a.ndjson", &old, &key, 3);
        let b = export_of(dir.path(), "b.ndjson", &grown, &key, 3);
        let verdict = verify_exports(&[&a, &b], &[key.verifier()], &[], &Silent).unwrap();
        assert_eq!(verdict.unwrap().leaves, 9);

        // History rewritten and re-signed by the key's holder: each export verifies alone,
        // but the older one's checkpoints expose the newer one.
        let mut rewritten = grown.clone();
        rewritten[1] = event(2, "HELLO");
        let c = export_of(dir.path(), "c.ndjson", &rewritten, &key, 3);
        assert!(verify_exports(&[&c], &[key.verifier()], &[], &Silent).unwrap().is_ok());
        let err = verify_exports(&[&a, &c], &[key.verifier()], &[], &Silent).unwrap().unwrap_err();
        assert!(err.contains("a.ndjson line") && err.contains("size 3"), "{err}");

        // History cut back: the older export's checkpoint is past the newer one's end.
        let shorter = export_of(dir.path(), "d.ndjson", &old[..3], &key, 3);
        let err = verify_exports(&[&a, &shorter], &[key.verifier()], &[], &Silent).unwrap().unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
