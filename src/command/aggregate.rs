//! The `Email` aggregate: the rules of an email's life, and nothing else (no I/O).
//!
//! ```text
//!  Request ──► Requested + Persisted ──► queued ──RecordSent──► Sent (final)
//!                                          │  ▲
//!                              RecordFailure  │ (transient, attempts left)
//!                                          ▼  │
//!                                        failed ──(permanent or exhausted)──► DeadLettered
//!                                                                    Redrive ──► queued
//! ```

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::commands::{EmailCommand, RecordFailureCommand, RecordSentCommand, RedriveCommand, RequestEmailCommand};
use super::draft::ValidEmail;
use super::error::EmailError;
use super::events::{DeadLettered, EmailEvent, Failed, Persisted, Redriven, Requested, Sent};

/// Turns a checked email into its RFC 5322 bytes. Implemented outside the domain
/// (with lettre); the same inputs must always give the same bytes.
pub trait MessageRenderer: Send + Sync {
    /// Renders `email` with the given `Message-ID` and `Date`.
    fn render(&self, email: &ValidEmail, message_id: &str, date: DateTime<Utc>) -> Result<Vec<u8>, String>;
}

/// What the aggregate may call while handling a command.
#[derive(Clone)]
pub struct EmailServices {
    /// Renders the message so its size and digest are known at intake.
    pub renderer: Arc<dyn MessageRenderer>,
}

/// Where an email stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailStatus {
    /// Never requested (the empty aggregate).
    #[default]
    New,
    /// Waiting for its next delivery attempt.
    Queued,
    /// The last attempt failed; another is due.
    Failed,
    /// Delivered.
    Sent,
    /// Given up.
    DeadLettered,
}

impl EmailStatus {
    /// Lower-case name, as the read model stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::New => "new",
            EmailStatus::Queued => "queued",
            EmailStatus::Failed => "failed",
            EmailStatus::Sent => "sent",
            EmailStatus::DeadLettered => "dead_lettered",
        }
    }
}

/// One email, folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Email {
    /// Its id, once requested.
    pub id: Option<Uuid>,
    /// Where it stands.
    pub status: EmailStatus,
    /// Digest of the normalised request, to tell an idempotent retry from a conflict.
    pub request_digest: String,
    /// Attempts made in all.
    pub attempts: u32,
    /// Attempts made since it was last queued by a request or a redrive.
    pub round_attempts: u32,
    /// When the next attempt is due, after a transient failure.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The `Message-ID` of an email: stable, unique, and in the sender's domain.
pub fn message_id_for(email_id: Uuid, email: &ValidEmail) -> String {
    format!("<{}@{}>", email_id.simple(), email.from.address.domain())
}

impl Aggregate for Email {
    const TYPE: &'static str = "Email";
    type Command = EmailCommand;
    type Event = EmailEvent;
    type Error = EmailError;
    type Services = EmailServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            EmailCommand::Request(c) => self.request(*c, services)?,
            EmailCommand::RecordSent(c) => self.record_sent(c)?,
            EmailCommand::RecordFailure(c) => self.record_failure(c)?,
            EmailCommand::Redrive(c) => self.redrive(c)?,
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            EmailEvent::Requested(e) => self.id = Some(e.email_id),
            EmailEvent::Persisted(e) => {
                self.status = EmailStatus::Queued;
                self.request_digest = e.request_digest;
            }
            EmailEvent::Sent(e) => {
                self.status = EmailStatus::Sent;
                self.attempts = e.attempt;
                self.round_attempts += 1;
                self.next_attempt_at = None;
            }
            EmailEvent::Failed(e) => {
                self.status = EmailStatus::Failed;
                self.attempts = e.attempt;
                self.round_attempts += 1;
                self.next_attempt_at = e.next_attempt_at;
            }
            EmailEvent::DeadLettered(_) => {
                self.status = EmailStatus::DeadLettered;
                self.next_attempt_at = None;
            }
            EmailEvent::Redriven(_) => {
                self.status = EmailStatus::Queued;
                self.round_attempts = 0;
                self.next_attempt_at = None;
            }
        }
    }
}

impl Email {
    fn request(&self, c: RequestEmailCommand, services: &EmailServices) -> Result<Vec<EmailEvent>, EmailError> {
        let digest = c.email.digest();
        if self.status != EmailStatus::New {
            // The same key again: a retry of the same email is a no-op, anything else a conflict.
            return if digest == self.request_digest { Ok(vec![]) } else { Err(EmailError::IdempotencyConflict) };
        }
        let message_id = message_id_for(c.email_id, &c.email);
        let date = c.received_at;
        let rendered = services.renderer.render(&c.email, &message_id, date).map_err(EmailError::Unrenderable)?;
        let email = c.email;
        Ok(vec![
            EmailEvent::Requested(Requested {
                email_id: c.email_id,
                source: c.source,
                idempotency_key: c.idempotency_key,
                request: c.draft,
                requested_at: c.received_at,
            }),
            EmailEvent::Persisted(Persisted {
                message_id,
                date,
                from: email.from,
                to: email.to,
                cc: email.cc,
                bcc: email.bcc,
                reply_to: email.reply_to,
                subject: email.subject,
                headers: email.headers,
                size_bytes: rendered.len() as u64,
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&rendered)),
                request_digest: digest,
            }),
        ])
    }

    /// Refuses an outcome unless the email awaits exactly this attempt.
    fn check_attempt(&self, attempt: u32) -> Result<(), EmailError> {
        match self.status {
            EmailStatus::New => return Err(EmailError::NotFound),
            EmailStatus::Sent => return Err(EmailError::AlreadySent),
            EmailStatus::DeadLettered => return Err(EmailError::DeadLettered),
            EmailStatus::Queued | EmailStatus::Failed => {}
        }
        let expected = self.attempts + 1;
        if attempt == expected { Ok(()) } else { Err(EmailError::AttemptOutOfOrder { expected, got: attempt }) }
    }

    fn record_sent(&self, c: RecordSentCommand) -> Result<Vec<EmailEvent>, EmailError> {
        self.check_attempt(c.attempt)?;
        Ok(vec![EmailEvent::Sent(Sent {
            attempt: c.attempt,
            reply_code: c.reply_code,
            reply_text: c.reply_text,
            sent_at: c.at,
        })])
    }

    fn record_failure(&self, c: RecordFailureCommand) -> Result<Vec<EmailEvent>, EmailError> {
        self.check_attempt(c.attempt)?;
        let exhausted = self.round_attempts + 1 >= c.max_attempts;
        let gives_up = c.permanent || exhausted;
        let mut events = vec![EmailEvent::Failed(Failed {
            attempt: c.attempt,
            error: c.error.clone(),
            reply_code: c.reply_code,
            permanent: c.permanent,
            failed_at: c.at,
            next_attempt_at: (!gives_up).then_some(c.retry_at),
        })];
        if gives_up {
            let reason = if c.permanent {
                format!("permanent failure: {}", c.error)
            } else {
                format!("gave up after {} attempts; last error: {}", self.round_attempts + 1, c.error)
            };
            events.push(EmailEvent::DeadLettered(DeadLettered { reason, attempts: c.attempt, dead_lettered_at: c.at }));
        }
        Ok(events)
    }

    fn redrive(&self, c: RedriveCommand) -> Result<Vec<EmailEvent>, EmailError> {
        match self.status {
            EmailStatus::New => Err(EmailError::NotFound),
            EmailStatus::DeadLettered => Ok(vec![EmailEvent::Redriven(Redriven { by: c.by, redriven_at: c.at })]),
            _ => Err(EmailError::NotDeadLettered),
        }
    }
}

#[cfg(test)]
mod tests;
