//! Dead letters for commands: the original bytes, with why they were refused in headers.
//!
//! Headers on a message in `<ns>.dlq.commands`:
//! `Mailledger-Error` (the reason, one line), `Mailledger-Error-Field` (the first field
//! at fault, when there is one), `Mailledger-Original-Subject`,
//! `Mailledger-Original-Stream`, `Mailledger-Original-Sequence`,
//! `Mailledger-Original-Msg-Id` (the producer's `Nats-Msg-Id`), and
//! `Mailledger-Truncated: true` when the original was too big to carry whole.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use crate::text::header_safe;

/// Room left for headers under the server's `max_payload`.
const HEADER_ROOM: usize = 8 * 1024;

/// A refused command, ready to be dead-lettered.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Why it was refused.
    pub reason: String,
    /// The field at fault.
    pub field: Option<String>,
    /// Where it was published.
    pub subject: String,
    /// Its stream.
    pub stream: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// The producer's `Nats-Msg-Id`.
    pub msg_id: Option<String>,
    /// Its bytes.
    pub payload: Bytes,
}

/// Publishes `letter` to `subject` and waits for JetStream to store it.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    max_payload: usize,
    letter: &DeadLetter,
) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    headers.insert("Mailledger-Error", header_safe(&letter.reason).as_str());
    if let Some(field) = &letter.field {
        headers.insert("Mailledger-Error-Field", header_safe(field).as_str());
    }
    headers.insert("Mailledger-Original-Subject", header_safe(&letter.subject).as_str());
    headers.insert("Mailledger-Original-Stream", header_safe(&letter.stream).as_str());
    headers.insert("Mailledger-Original-Sequence", letter.sequence.to_string().as_str());
    if let Some(id) = &letter.msg_id {
        headers.insert("Mailledger-Original-Msg-Id", header_safe(id).as_str());
    }
    // A retry of this same dead letter is dropped by JetStream's duplicate window.
    headers.insert("Nats-Msg-Id", format!("dlq:{}:{}", letter.stream, letter.sequence).as_str());
    let room = max_payload.saturating_sub(HEADER_ROOM);
    let payload = if letter.payload.len() > room {
        headers.insert("Mailledger-Truncated", "true");
        letter.payload.slice(..room)
    } else {
        letter.payload.clone()
    };
    js.publish_with_headers(subject.to_owned(), headers, payload).await?.await?;
    Ok(())
}
