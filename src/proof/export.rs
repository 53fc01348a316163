//! The proof export (`mailledger replay --proofs`): everything an auditor needs to
//! recompute the log and check its checkpoints with the public key alone. NDJSON, one
//! object a line, in leaf order:
//!
//! ```text
//! {"export":"mailledger-proof-log","version":1,"origin":"mailledger/prod"}
//! {"leaf":0,"leaf_hash":"<base64>","aggregate_type":"ApiKey","aggregate_id":"…","sequence":1,"position":1,
//!  "type":"KeyCreated","version":"1.0","recorded_at":"2026-11-22T10:00:00.123456Z","payload":{…},"metadata":{…}}
//! {"checkpoint":"<signed note>"}          right after the leaf that completes its size
//! {"end":{"leaves":N,"checkpoints":K}}    last: a cut file has none
//! ```
//!
//! `payload` and `metadata` are the stored `jsonb` text verbatim (the canonical bytes
//! hash exactly that text; [`canonical`](super::canonical)); `leaf_hash` is what the log
//! sealed, so an edited line is named by its number. A reader ([`parse`]) refuses any
//! line it cannot read, with its number.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::merkle::Hash;
use crate::store::feed::Checkpoint as FeedCheckpoint;
use crate::store::raw::RawEvent;

/// The first line's `export` value.
pub const KIND: &str = "mailledger-proof-log";

/// The header line.
pub fn header(origin: &str) -> String {
    serde_json::json!({"export": KIND, "version": 1, "origin": origin}).to_string()
}

/// An event's line.
pub fn event_line(index: u64, leaf: &Hash, e: &RawEvent) -> Result<String, serde_json::Error> {
    let s = serde_json::to_string::<str>;
    Ok(format!(
        r#"{{"leaf":{index},"leaf_hash":"{}","aggregate_type":{},"aggregate_id":{},"sequence":{},"position":{},"type":{},"version":{},"recorded_at":"{}","payload":{},"metadata":{}}}"#,
        B64.encode(leaf),
        s(&e.aggregate_type)?,
        s(&e.aggregate_id)?,
        e.sequence,
        e.position(),
        s(&e.event_type)?,
        s(&e.event_version)?,
        e.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        e.payload,
        e.metadata,
    ))
}

/// A checkpoint's line.
pub fn checkpoint_line(note: &str) -> String {
    serde_json::json!({ "checkpoint": note }).to_string()
}

/// The last line.
pub fn end_line(leaves: u64, checkpoints: u64) -> String {
    serde_json::json!({"end": {"leaves": leaves, "checkpoints": checkpoints}}).to_string()
}

/// One line, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The header, with the log's origin.
    Header {
        /// The origin the export names.
        origin: String,
    },
    /// An event and the leaf the log sealed for it.
    Event {
        /// Its leaf index.
        index: u64,
        /// The sealed leaf hash.
        leaf_hash: Hash,
        /// The event.
        event: Box<RawEvent>,
    },
    /// A signed checkpoint note.
    Checkpoint(String),
    /// The end, with the counts.
    End {
        /// Leaves in the export.
        leaves: u64,
        /// Checkpoints in the export.
        checkpoints: u64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFields<'a> {
    leaf: u64,
    leaf_hash: String,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    position: i64,
    r#type: String,
    version: String,
    recorded_at: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(borrow)]
    metadata: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFields {
    export: String,
    version: u32,
    origin: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFields {
    checkpoint: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndFields {
    end: EndCounts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndCounts {
    leaves: u64,
    checkpoints: u64,
}

/// Reads one line (without its newline); the error says what is wrong with it.
pub fn parse(line: &str) -> Result<Line, String> {
    let first_key = line.trim_start().strip_prefix("{\"").and_then(|r| r.split('"').next()).unwrap_or_default();
    let json = |e: serde_json::Error| format!("not a line of a proof export: {e}");
    match first_key {
        "leaf" => {
            let f: EventFields = serde_json::from_str(line).map_err(json)?;
            let leaf_hash = B64
                .decode(&f.leaf_hash)
                .ok()
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or("leaf_hash: not a base64 SHA-256 hash")?;
            let recorded_at =
                chrono::DateTime::parse_from_rfc3339(&f.recorded_at).map_err(|e| format!("recorded_at: {e}"))?.to_utc();
            Ok(Line::Event {
                index: f.leaf,
                leaf_hash,
                event: Box::new(RawEvent {
                    // The txid orders the log, and the export is in that order already.
                    checkpoint: FeedCheckpoint { txid: 0, position: f.position },
                    aggregate_type: f.aggregate_type,
                    aggregate_id: f.aggregate_id,
                    sequence: f.sequence,
                    event_type: f.r#type,
                    event_version: f.version,
                    recorded_at,
                    payload: f.payload.get().to_owned(),
                    metadata: f.metadata.get().to_owned(),
                }),
            })
        }
        "checkpoint" => Ok(Line::Checkpoint(serde_json::from_str::<CheckpointFields>(line).map_err(json)?.checkpoint)),
        "end" => {
            let e: EndFields = serde_json::from_str(line).map_err(json)?;
            Ok(Line::End { leaves: e.end.leaves, checkpoints: e.end.checkpoints })
        }
        "export" => {
            let h: HeaderFields = serde_json::from_str(line).map_err(json)?;
            if h.export != KIND || h.version != 1 {
                return Err(format!(
                    "an export of kind {:?} version {}; this reads {KIND} version 1",
                    h.export, h.version
                ));
            }
            Ok(Line::Header { origin: h.origin })
        }
        _ => Err("not a line of a proof export (want a leaf, checkpoint, export or end object)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proof::canonical;

    #[test]
    fn lines_round_trip_with_the_stored_text_verbatim() {
        let e = RawEvent {
            checkpoint: FeedCheckpoint { txid: 0, position: 7 },
            aggregate_type: "Email".into(),
            aggregate_id: "id \"quoted\"".into(),
            sequence: 2,
            event_type: "Sent".into(),
            event_version: "1.0".into(),
            recorded_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            payload: r#"{"Sent": {"reply_code": 250, "text": "ok \u00e9"}}"#.into(),
            metadata: r#"{"a": [1, 2.50]}"#.into(),
        };
        let leaf = canonical::leaf(&e);
        let line = event_line(3, &leaf, &e).unwrap();
        assert_eq!(parse(&line).unwrap(), Line::Event { index: 3, leaf_hash: leaf, event: Box::new(e) });
        assert_eq!(
            parse(&checkpoint_line("a\n1\nx\n\n— k x\n")).unwrap(),
            Line::Checkpoint("a\n1\nx\n\n— k x\n".into())
        );
        assert_eq!(parse(&end_line(3, 1)).unwrap(), Line::End { leaves: 3, checkpoints: 1 });
        assert_eq!(parse(&header("o")).unwrap(), Line::Header { origin: "o".into() });
        for bad in ["", "{", "[]", r#"{"leaf":1}"#, r#"{"end":{"leaves":-1,"checkpoints":0}}"#, "{\"leaf\":0,\"x\":1}"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
