//! What can be asked of an `Email`. Clock readings and ids are fields of the command,
//! taken at the edge, so that handling stays pure and repeatable.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::draft::{EmailDraft, ValidEmail};
use super::events::Source;

/// Every command the `Email` aggregate handles.
#[derive(Debug, Clone, PartialEq)]
pub enum EmailCommand {
    /// Record a producer's request and queue it for delivery.
    Request(Box<RequestEmailCommand>),
    /// Record that the SMTP server accepted attempt `attempt`.
    RecordSent(RecordSentCommand),
    /// Record that attempt `attempt` failed.
    RecordFailure(RecordFailureCommand),
    /// Queue a dead-lettered email again.
    Redrive(RedriveCommand),
    /// Record what one delivery attempt came to, recipient by recipient.
    RecordAttempt(RecordAttemptCommand),
}

/// A producer asks for an email.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestEmailCommand {
    /// The id the email gets (derived from the idempotency key when there is one).
    pub email_id: Uuid,
    /// Where the request came in.
    pub source: Source,
    /// The producer's idempotency key.
    pub idempotency_key: Option<String>,
    /// The request verbatim.
    pub draft: EmailDraft,
    /// The request checked ([`EmailDraft::validate`]).
    pub email: ValidEmail,
    /// When it was received.
    pub received_at: DateTime<Utc>,
}

/// The SMTP server accepted the message.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSentCommand {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// SMTP reply code.
    pub reply_code: u16,
    /// SMTP reply text.
    pub reply_text: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A delivery attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordFailureCommand {
    /// Attempt number, from 1.
    pub attempt: u32,
    /// What went wrong.
    pub error: String,
    /// SMTP reply code, when the server answered.
    pub reply_code: Option<u16>,
    /// Permanent failures are never retried.
    pub permanent: bool,
    /// When.
    pub at: DateTime<Utc>,
    /// When the sender would try again, if attempts remain.
    pub retry_at: DateTime<Utc>,
    /// Attempts allowed per round (a redrive starts a new round).
    pub max_attempts: u32,
}

/// What one delivery attempt came to, recipient by recipient.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordAttemptCommand {
    /// Attempt number, from 1 (no SMTP transaction when every recipient left is
    /// suppressed: then it is not counted).
    pub attempt: u32,
    /// Recipients the server took, with its reply.
    pub accepted: Vec<String>,
    /// The server's reply to the message.
    pub reply_code: u16,
    /// Its text.
    pub reply_text: String,
    /// Recipients that failed, grouped by reply.
    pub failures: Vec<RecipientFailure>,
    /// Recipients not attempted because they are suppressed, and why.
    pub suppressed: Vec<String>,
    /// The suppression's reason.
    pub suppression_reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// When the sender would try again, if attempts remain.
    pub retry_at: DateTime<Utc>,
    /// Attempts allowed per round.
    pub max_attempts: u32,
}

/// Recipients refused with one reply.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientFailure {
    /// Who.
    pub recipients: Vec<String>,
    /// What went wrong.
    pub error: String,
    /// The server's code, when it answered.
    pub reply_code: Option<u16>,
    /// A 5xx: never retried (and the address is suppressed).
    pub permanent: bool,
}

/// An operator revives a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct RedriveCommand {
    /// Who asked.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The bulk redrive asking, if one is: an email is redriven once per run, however
    /// often the run is resumed.
    pub run: Option<Uuid>,
}

/// The email id an idempotency key stands for in the default tenant: the same key
/// always names the same email, whichever transport it came in on.
pub fn email_id_for_key(key: &str) -> Uuid {
    /// Namespace of mailledger's idempotency keys (a fixed, random UUID).
    const NAMESPACE: Uuid = Uuid::from_u128(0x6d61_696c_6c65_4467_8e72_1f0b_5a3c_9d01);
    Uuid::new_v5(&NAMESPACE, key.as_bytes())
}

/// The email id an idempotency key stands for in `tenant`: tenants never share an email
/// by using the same key (the default tenant's ids are [`email_id_for_key`]'s, as before
/// tenants existed).
pub fn email_id_for_tenant_key(tenant: &str, key: &str) -> Uuid {
    /// Namespace of the other tenants' idempotency keys (a fixed, random UUID).
    const TENANTS: Uuid = Uuid::from_u128(0x7465_6e61_6e74_4b65_9a1c_33d0_e4b7_5f12);
    if tenant == "default" {
        email_id_for_key(key)
    } else {
        Uuid::new_v5(&TENANTS, format!("{tenant}\0{key}").as_bytes())
    }
}
