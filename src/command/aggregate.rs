//! The `Email` aggregate: the rules of an email's life, and nothing else (no I/O).
//!
//! ```text
//!  Request ──► Requested + Persisted ──► queued ──RecordAttempt (every recipient done)──► Sent (final)
//!                                          │  ▲
//!                              RecordAttempt  │ (some recipients refused for now, attempts left)
//!                                          ▼  │
//!                                        failed ──(nothing deliverable, or exhausted)──► DeadLettered
//!                                                                             Redrive ──► queued
//! ```
//!
//! Outcomes are per recipient. An email keeps the recipients still **pending**: a
//! recipient the server takes (`Sent`) or refuses for good (a permanent `Failed`, or
//! `Suppressed` before any attempt) leaves it; one refused for now stays for the next
//! attempt. The email is `Sent` once nothing is pending and someone took it; it is
//! dead-lettered when nothing is pending and nobody took it, or when attempts run out
//! with recipients still pending. A redrive makes every recipient not yet delivered
//! pending again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::commands::{
    EmailCommand, RecipientFailure, RecordAttemptCommand, RecordFailureCommand, RecordSentCommand, RedriveCommand,
    RequestEmailCommand,
};
use super::draft::ValidEmail;
use super::error::EmailError;
use super::events::{DeadLettered, EmailEvent, Failed, Persisted, Redriven, Requested, Sent, Suppressed};

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
    /// Every envelope recipient (to, cc, bcc).
    pub recipients: Vec<String>,
    /// Recipients still to be delivered to.
    pub pending: Vec<String>,
    /// Recipients the server took.
    pub delivered: Vec<String>,
    /// Bulk redrives that have redriven it.
    pub runs: Vec<Uuid>,
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
            EmailCommand::RecordAttempt(c) => self.record_attempt(c)?,
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
                self.recipients = e.to.iter().chain(&e.cc).chain(&e.bcc).map(|m| m.address.to_string()).collect();
                self.pending = self.recipients.clone();
            }
            EmailEvent::Sent(e) => {
                let took = if e.recipients.is_empty() { std::mem::take(&mut self.pending) } else { e.recipients };
                self.pending.retain(|r| !took.contains(r));
                self.delivered.extend(took);
                self.count_attempt(e.attempt);
                self.status = if self.pending.is_empty() { EmailStatus::Sent } else { EmailStatus::Failed };
                self.next_attempt_at = None;
            }
            EmailEvent::Failed(e) => {
                if e.permanent {
                    if e.recipients.is_empty() {
                        self.pending.clear();
                    } else {
                        self.pending.retain(|r| !e.recipients.contains(r));
                    }
                }
                self.count_attempt(e.attempt);
                self.next_attempt_at = e.next_attempt_at;
                self.status = if self.pending.is_empty() && !self.delivered.is_empty() {
                    EmailStatus::Sent
                } else {
                    EmailStatus::Failed
                };
            }
            EmailEvent::Suppressed(e) => {
                self.pending.retain(|r| !e.recipients.contains(r));
                if self.pending.is_empty() && !self.delivered.is_empty() {
                    self.status = EmailStatus::Sent;
                }
            }
            EmailEvent::DeadLettered(_) => {
                self.status = EmailStatus::DeadLettered;
                self.next_attempt_at = None;
            }
            EmailEvent::Redriven(r) => {
                self.runs.extend(r.run);
                self.status = EmailStatus::Queued;
                self.round_attempts = 0;
                self.next_attempt_at = None;
                self.pending = self.recipients.iter().filter(|r| !self.delivered.contains(r)).cloned().collect();
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

    /// The attempt counters move once per attempt, however many events record it.
    fn count_attempt(&mut self, attempt: u32) {
        if attempt > self.attempts {
            self.attempts = attempt;
            self.round_attempts += 1;
        }
    }

    /// Every pending recipient taken by the server.
    fn record_sent(&self, c: RecordSentCommand) -> Result<Vec<EmailEvent>, EmailError> {
        self.record_attempt(RecordAttemptCommand {
            attempt: c.attempt,
            accepted: self.pending.clone(),
            reply_code: c.reply_code,
            reply_text: c.reply_text,
            at: c.at,
            retry_at: c.at,
            max_attempts: u32::MAX,
            ..Default::default()
        })
    }

    /// Every pending recipient refused with one reply.
    fn record_failure(&self, c: RecordFailureCommand) -> Result<Vec<EmailEvent>, EmailError> {
        self.record_attempt(RecordAttemptCommand {
            attempt: c.attempt,
            failures: vec![RecipientFailure {
                recipients: self.pending.clone(),
                error: c.error,
                reply_code: c.reply_code,
                permanent: c.permanent,
            }],
            at: c.at,
            retry_at: c.retry_at,
            max_attempts: c.max_attempts,
            ..Default::default()
        })
    }

    /// The events of one attempt, in the order the schedule needs them: who was
    /// skipped, who was taken, who was refused for good, who was refused for now (with
    /// the next attempt's time), and the dead letter when the email ends undelivered.
    fn record_attempt(&self, c: RecordAttemptCommand) -> Result<Vec<EmailEvent>, EmailError> {
        // Only a pass that suppressed everyone left, and nothing else, made no SMTP attempt.
        let smtp = !c.accepted.is_empty() || !c.failures.is_empty() || c.suppressed.is_empty();
        if smtp {
            self.check_attempt(c.attempt)?;
        } else if !matches!(self.status, EmailStatus::Queued | EmailStatus::Failed) {
            return Err(EmailError::NotFound);
        }
        let known = |r: &String| self.pending.contains(r);
        if c.accepted
            .iter()
            .chain(c.failures.iter().flat_map(|f| &f.recipients))
            .chain(&c.suppressed)
            .any(|r| !known(r))
        {
            return Err(EmailError::UnknownRecipient);
        }
        let mut events = Vec::new();
        let mut pending = self.pending.clone();
        if !c.suppressed.is_empty() {
            pending.retain(|r| !c.suppressed.contains(r));
            events.push(EmailEvent::Suppressed(Suppressed {
                recipients: c.suppressed.clone(),
                reason: c.suppression_reason.clone(),
                at: c.at,
            }));
        }
        let delivered = !self.delivered.is_empty() || !c.accepted.is_empty();
        if !c.accepted.is_empty() {
            pending.retain(|r| !c.accepted.contains(r));
            let all = pending.is_empty()
                && c.failures.is_empty()
                && c.suppressed.is_empty()
                && c.accepted.len() == self.pending.len();
            events.push(EmailEvent::Sent(Sent {
                attempt: c.attempt,
                reply_code: c.reply_code,
                reply_text: c.reply_text.clone(),
                sent_at: c.at,
                // Every pending recipient: said as "all", the shape of every earlier Sent.
                recipients: if all { vec![] } else { c.accepted.clone() },
            }));
        }
        let (permanent, transient): (Vec<&RecipientFailure>, Vec<&RecipientFailure>) =
            c.failures.iter().partition(|f| f.permanent);
        for f in &permanent {
            pending.retain(|r| !f.recipients.contains(r));
        }
        let exhausted = smtp && self.round_attempts + 1 >= c.max_attempts;
        let retry = !pending.is_empty() && !exhausted;
        let all_pending = |rs: &[String]| rs.len() == self.pending.len();
        for f in permanent.iter().chain(&transient) {
            let last_transient = !f.permanent && std::ptr::eq(*f, *transient.last().expect("f is one"));
            events.push(EmailEvent::Failed(Failed {
                attempt: c.attempt,
                error: f.error.clone(),
                reply_code: f.reply_code,
                permanent: f.permanent,
                failed_at: c.at,
                next_attempt_at: (retry && last_transient).then_some(c.retry_at),
                recipients: if all_pending(&f.recipients) { vec![] } else { f.recipients.clone() },
            }));
        }
        let last_error = c.failures.last().map(|f| f.error.clone());
        if pending.is_empty() && !delivered {
            let reason = match &last_error {
                Some(e) => format!("permanent failure: {e}"),
                None => format!("every recipient is suppressed: {}", c.suppression_reason),
            };
            events.push(EmailEvent::DeadLettered(DeadLettered {
                reason,
                attempts: c.attempt.max(self.attempts),
                dead_lettered_at: c.at,
            }));
        } else if !pending.is_empty() && exhausted {
            let reason = format!(
                "gave up after {} attempts; last error: {}",
                self.round_attempts + 1,
                last_error.unwrap_or_default()
            );
            events.push(EmailEvent::DeadLettered(DeadLettered { reason, attempts: c.attempt, dead_lettered_at: c.at }));
        }
        Ok(events)
    }

    fn redrive(&self, c: RedriveCommand) -> Result<Vec<EmailEvent>, EmailError> {
        match self.status {
            EmailStatus::New => Err(EmailError::NotFound),
            // Redriven by this bulk run already (a resumed run): nothing more.
            _ if c.run.is_some_and(|run| self.runs.contains(&run)) => Ok(vec![]),
            EmailStatus::DeadLettered => {
                Ok(vec![EmailEvent::Redriven(Redriven { by: c.by, redriven_at: c.at, run: c.run })])
            }
            _ => Err(EmailError::NotDeadLettered),
        }
    }
}

#[cfg(test)]
mod tests;
