//! `EmailView`: what a reader sees of one email, folded from its events. The same fold
//! serves the `emails` read model ([`fold_batch`]), the Redis cache, "as of an instant"
//! and the tests that compare read models.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::command::{EmailEvent, Mailbox};
use crate::store::feed::FeedEvent;

/// One email as readers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmailView {
    /// The email's id.
    pub id: Uuid,
    /// Sender address.
    #[schema(example = "ann@example.com")]
    pub from: String,
    /// Sender display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    /// `To` addresses.
    pub to: Vec<String>,
    /// `Cc` addresses.
    #[serde(default)]
    pub cc: Vec<String>,
    /// `Bcc` addresses.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// Plain-text body (empty when only HTML was given).
    pub body: String,
    /// HTML body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// `queued`, `failed` (retrying), `sent` or `dead_lettered`.
    #[schema(example = "queued")]
    pub status: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 5322 Message-ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `nats`, `rest` or `grpc`.
    pub source: String,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When anything last happened to it.
    pub updated_at: DateTime<Utc>,
    /// When the SMTP server accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When the next delivery attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Sequence of the last event folded in: the view's version.
    pub version: i64,
    /// The tenant it belongs to (its creator's).
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Each envelope recipient's state: `pending`, `sent`, `deferred` (refused for now,
    /// to be tried again), `refused` (for good) or `suppressed` (not attempted).
    #[serde(default)]
    pub deliveries: Vec<RecipientState>,
}

/// Where one recipient of an email stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecipientState {
    /// The address.
    pub address: String,
    /// `pending`, `sent`, `deferred`, `refused` or `suppressed`.
    pub status: String,
    /// The server's reply code for it, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// What the server said, or why it was suppressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The attempt it was settled on (0: not yet).
    #[serde(default)]
    pub attempt: u32,
}

impl RecipientState {
    fn pending(address: String) -> Self {
        Self { address, status: "pending".into(), code: None, detail: None, attempt: 0 }
    }
}

fn default_tenant() -> String {
    crate::access::DEFAULT_TENANT.to_owned()
}

/// The tenant an event's metadata names (`default` for events from before tenants).
pub fn tenant_in(metadata: &serde_json::Value) -> String {
    metadata.get("tenant").and_then(|t| t.as_str()).map_or_else(default_tenant, str::to_owned)
}

/// One search result: an email without its bodies. `snippet` holds the first characters
/// of the text body (200 by default); the whole email is one `GET` away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmailSummary {
    /// The email's id.
    pub id: Uuid,
    /// Sender address.
    pub from: String,
    /// Sender display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<String>,
    /// `To` addresses.
    pub to: Vec<String>,
    /// `Cc` addresses.
    #[serde(default)]
    pub cc: Vec<String>,
    /// `Bcc` addresses.
    #[serde(default)]
    pub bcc: Vec<String>,
    /// Subject line.
    pub subject: String,
    /// The start of the plain-text body.
    pub snippet: String,
    /// Whether the body goes on past the snippet.
    pub snippet_truncated: bool,
    /// Whether the email has an HTML body.
    pub has_html: bool,
    /// `queued`, `failed` (retrying), `sent` or `dead_lettered`.
    pub status: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 5322 Message-ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// `nats`, `rest` or `grpc`.
    pub source: String,
    /// When it was requested.
    pub created_at: DateTime<Utc>,
    /// When anything last happened to it.
    pub updated_at: DateTime<Utc>,
    /// When the SMTP server accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When the next delivery attempt is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Sequence of the last event folded in.
    pub version: i64,
    /// The tenant it belongs to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn addresses(list: &[Mailbox]) -> Vec<String> {
    list.iter().map(|m| m.address.to_string()).collect()
}

impl EmailView {
    /// Folds events (in sequence order, each with its sequence and recording time).
    /// `None` until a `Requested` has been seen.
    pub fn fold<'a>(events: impl IntoIterator<Item = (i64, DateTime<Utc>, &'a EmailEvent)>) -> Option<EmailView> {
        events.into_iter().fold(None, |view, (sequence, at, event)| match view {
            None => Self::start(sequence, event),
            Some(view) => Some(view.apply(sequence, at, event)),
        })
    }

    /// The view a `Requested` event starts; nothing for any other event.
    fn start(sequence: i64, event: &EmailEvent) -> Option<EmailView> {
        let EmailEvent::Requested(r) = event else { return None };
        let request = &r.request;
        Some(EmailView {
            id: r.email_id,
            from: request.from.clone().unwrap_or_default(),
            from_name: None,
            to: request.to.clone(),
            cc: request.cc.clone(),
            bcc: request.bcc.clone(),
            subject: request.subject.clone().unwrap_or_default(),
            body: request.text.clone().unwrap_or_default(),
            html: request.html.clone(),
            status: "requested".into(),
            attempts: 0,
            last_error: None,
            message_id: None,
            source: r.source.as_str().into(),
            created_at: r.requested_at,
            updated_at: r.requested_at,
            sent_at: None,
            next_attempt_at: None,
            version: sequence,
            tenant: default_tenant(),
            deliveries: vec![],
        })
    }

    /// Folds an email's history as the store hands it out (the tenant from its first
    /// event's metadata).
    pub fn from_history<'a>(events: impl IntoIterator<Item = &'a FeedEvent>) -> Option<EmailView> {
        let mut tenant = None;
        let view = Self::fold(
            events
                .into_iter()
                .inspect(|e| {
                    tenant.get_or_insert_with(|| tenant_in(&e.metadata));
                })
                .map(|e| (e.sequence, e.recorded_at, &e.event)),
        );
        view.map(|v| EmailView { tenant: tenant.unwrap_or_else(default_tenant), ..v })
    }

    /// This view with one more event applied.
    pub fn apply(mut self, sequence: i64, at: DateTime<Utc>, event: &EmailEvent) -> EmailView {
        match event {
            EmailEvent::Requested(_) => return self,
            EmailEvent::Persisted(p) => {
                self.from = p.from.address.to_string();
                self.from_name = p.from.name.clone();
                self.to = addresses(&p.to);
                self.cc = addresses(&p.cc);
                self.bcc = addresses(&p.bcc);
                self.subject = p.subject.to_string();
                self.message_id = Some(p.message_id.clone());
                self.status = "queued".into();
                self.deliveries = self.recipients().into_iter().map(RecipientState::pending).collect();
            }
            EmailEvent::Sent(s) => {
                self.mark(&s.recipients, |r| {
                    *r = RecipientState {
                        status: "sent".into(),
                        code: Some(s.reply_code),
                        detail: None,
                        attempt: s.attempt,
                        ..r.clone()
                    };
                });
                self.attempts = s.attempt;
                self.sent_at = Some(s.sent_at);
                self.next_attempt_at = None;
                self.status = self.settled_status();
            }
            EmailEvent::Failed(f) => {
                let status = if f.permanent { "refused" } else { "deferred" };
                self.mark(&f.recipients, |r| {
                    *r = RecipientState {
                        status: status.into(),
                        code: f.reply_code,
                        detail: Some(f.error.clone()),
                        attempt: f.attempt,
                        ..r.clone()
                    };
                });
                self.attempts = f.attempt;
                self.last_error = Some(f.error.clone());
                self.next_attempt_at = f.next_attempt_at.or(self.next_attempt_at.filter(|_| !f.permanent));
                self.status = self.settled_status();
            }
            EmailEvent::Suppressed(x) => {
                self.mark(&x.recipients, |r| {
                    *r = RecipientState {
                        status: "suppressed".into(),
                        code: None,
                        detail: Some(x.reason.clone()),
                        ..r.clone()
                    };
                });
                self.status = self.settled_status();
            }
            EmailEvent::DeadLettered(d) => {
                self.status = "dead_lettered".into();
                self.last_error = Some(d.reason.clone());
                self.next_attempt_at = None;
            }
            EmailEvent::Redriven(r) => {
                self.status = "queued".into();
                self.next_attempt_at = Some(r.redriven_at);
                for d in self.deliveries.iter_mut().filter(|d| d.status != "sent") {
                    d.status = "pending".into();
                }
            }
        }
        self.version = sequence;
        self.updated_at = at;
        self
    }

    /// Applies `change` to the named recipients (none named: every one still waiting,
    /// as outcomes recorded before per-recipient ones mean).
    fn mark(&mut self, named: &[String], change: impl Fn(&mut RecipientState)) {
        for d in &mut self.deliveries {
            let waiting = matches!(d.status.as_str(), "pending" | "deferred");
            if (named.is_empty() && waiting) || named.contains(&d.address) {
                change(d);
            }
        }
    }

    /// `failed` while someone is still waiting, `sent` once nobody is and someone took
    /// it; `failed` too when nobody did (the dead letter that follows says so).
    fn settled_status(&self) -> String {
        let waiting = self.deliveries.iter().any(|d| matches!(d.status.as_str(), "pending" | "deferred"));
        let sent = self.deliveries.iter().any(|d| d.status == "sent");
        if !waiting && sent { "sent" } else { "failed" }.into()
    }

    /// Every recipient: to, cc and bcc.
    pub fn recipients(&self) -> Vec<String> {
        self.to.iter().chain(&self.cc).chain(&self.bcc).cloned().collect()
    }
}

/// Folds a feed batch onto `current` (the views as they stand), returning the views it
/// changed. An event at or below a view's version is skipped: folding twice changes nothing.
pub fn fold_batch(mut current: HashMap<Uuid, EmailView>, events: &[FeedEvent]) -> Vec<EmailView> {
    let mut changed: Vec<Uuid> = Vec::new();
    let mut seen: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    for e in events {
        let known = current.get(&e.email_id).map(|v| v.version);
        if known.is_some_and(|version| e.sequence <= version) {
            continue; // already applied
        }
        let folded = match current.remove(&e.email_id) {
            Some(view) => Some(view.apply(e.sequence, e.recorded_at, &e.event)),
            None => EmailView::from_history([e]),
        };
        if let Some(view) = folded {
            if seen.insert(view.id) {
                changed.push(view.id);
            }
            current.insert(view.id, view);
        }
    }
    changed.into_iter().filter_map(|id| current.remove(&id)).collect()
}
