//! The events of an email's life, in the past tense. Their names and fields are a
//! public, permanent contract: never rename a variant; change a payload only with a new
//! [`EVENT_VERSION`] and an upcaster.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::address::Mailbox;
use super::draft::EmailDraft;
use super::header::{HeaderName, HeaderValue};

/// Version written with every event type today.
pub const EVENT_VERSION: &str = "1.0";

/// Where a request came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A JetStream command on `mail.commands.create`.
    Nats,
    /// `POST /api/v1/emails`.
    Rest,
    /// gRPC `EmailService.Create`.
    Grpc,
}

impl Source {
    /// Lower-case name, as stored and as used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nats => "nats",
            Source::Rest => "rest",
            Source::Grpc => "grpc",
        }
    }
}

/// Everything that happened to one email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmailEvent {
    /// A producer asked for this email.
    Requested(Requested),
    /// The ledger accepted it and queued it for delivery.
    Persisted(Persisted),
    /// The SMTP server accepted it.
    Sent(Sent),
    /// One delivery attempt failed.
    Failed(Failed),
    /// No more attempts will be made.
    DeadLettered(DeadLettered),
    /// An operator queued a dead letter again.
    Redriven(Redriven),
    /// Recipients were not attempted: they are on the suppression list.
    Suppressed(Suppressed),
}

/// The request, verbatim, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Requested {
    /// The email's id (derived from the idempotency key when there is one).
    pub email_id: Uuid,
    /// The transport it arrived on.
    pub source: Source,
    /// The producer's idempotency key, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// What the producer sent, before normalisation.
    pub request: EmailDraft,
    /// When the ledger received it.
    pub requested_at: DateTime<Utc>,
}

/// The accepted email: normalised addresses and the identity of its rendered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    /// RFC 5322 `Message-ID`, with angle brackets; the same on every attempt.
    pub message_id: String,
    /// RFC 5322 `Date`.
    pub date: DateTime<Utc>,
    /// Sender.
    pub from: Mailbox,
    /// Recipients.
    pub to: Vec<Mailbox>,
    /// Carbon-copy recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Mailbox>,
    /// Blind carbon-copy recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Mailbox>,
    /// Reply-To mailboxes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<Mailbox>,
    /// Subject line.
    pub subject: HeaderValue,
    /// Producer's extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, HeaderValue>,
    /// Size of the rendered RFC 5322 message in bytes.
    pub size_bytes: u64,
    /// SHA-256 (hex) of the rendered message.
    pub sha256: String,
    /// SHA-256 (hex) of the normalised request: what an idempotent retry must match.
    pub request_digest: String,
}

/// The SMTP server accepted the message, for some recipients or all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// SMTP reply code (250).
    pub reply_code: u16,
    /// SMTP reply text.
    pub reply_text: String,
    /// When the reply came.
    pub sent_at: DateTime<Utc>,
    /// The recipients it was accepted for; empty: every recipient still pending (as
    /// every `Sent` recorded before per-recipient outcomes means).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

/// One delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// SMTP reply code, when the server answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_code: Option<u16>,
    /// A permanent failure (5xx) is never retried.
    pub permanent: bool,
    /// When it failed.
    pub failed_at: DateTime<Utc>,
    /// When the next attempt is due; `None` when none will be made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The recipients it concerns; empty: every recipient still pending.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
}

/// Delivery gave up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLettered {
    /// Why no more attempts will be made.
    pub reason: String,
    /// Attempts made in all.
    pub attempts: u32,
    /// When it was given up.
    pub dead_lettered_at: DateTime<Utc>,
}

/// Recipients skipped because they are on the suppression list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The recipients not attempted.
    pub recipients: Vec<String>,
    /// Why (the suppression's reason).
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// An operator queued a dead-lettered email again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redriven {
    /// Who asked (operator name or API caller).
    pub by: String,
    /// When.
    pub redriven_at: DateTime<Utc>,
    /// The bulk redrive it was part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<uuid::Uuid>,
}

impl EmailEvent {
    /// The event's type name, as stored in `events.event_type`.
    pub fn kind(&self) -> &'static str {
        match self {
            EmailEvent::Requested(_) => "Requested",
            EmailEvent::Persisted(_) => "Persisted",
            EmailEvent::Sent(_) => "Sent",
            EmailEvent::Failed(_) => "Failed",
            EmailEvent::DeadLettered(_) => "DeadLettered",
            EmailEvent::Redriven(_) => "Redriven",
            EmailEvent::Suppressed(_) => "Suppressed",
        }
    }
}

impl DomainEvent for EmailEvent {
    fn event_type(&self) -> String {
        self.kind().to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}
