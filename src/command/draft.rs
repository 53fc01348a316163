//! What a producer asked for ([`EmailDraft`]) and the checked email it becomes ([`ValidEmail`]).
//!
//! Every transport (NATS, REST, gRPC) turns its input into an [`EmailDraft`] and calls
//! [`EmailDraft::validate`]; nothing else can make a [`ValidEmail`]. The rules:
//! `from`, at least one `to`, `subject`, and a `message` or `html` body are required;
//! every address parses ([`Mailbox::parse`]); no header value carries CR/LF; the bodies
//! together fit [`Limits::max_body_bytes`] and hold no NUL; `to` + `cc` + `bcc` fit
//! [`Limits::max_recipients`]; at most [`Limits::max_reply_to`] reply-to mailboxes and
//! [`Limits::max_headers`] custom headers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::address::Mailbox;
use super::error::{FieldError, ValidationErrors};
use super::header::{HeaderName, HeaderValue, Subject};

/// Size and count limits applied to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Text and HTML bodies together, in bytes (UTF-8).
    pub max_body_bytes: usize,
    /// `to` + `cc` + `bcc`.
    pub max_recipients: usize,
    /// Custom headers.
    pub max_headers: usize,
    /// `reply_to` mailboxes.
    #[serde(default = "default_max_reply_to")]
    pub max_reply_to: usize,
}

fn default_max_reply_to() -> usize {
    10
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_body_bytes: 10 * 1024 * 1024, max_recipients: 100, max_headers: 50, max_reply_to: 10 }
    }
}

/// A request exactly as the producer gave it (addresses not yet parsed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailDraft {
    /// Sender mailbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Recipients.
    #[serde(default)]
    pub to: Vec<String>,
    /// Carbon-copy recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    /// Blind carbon-copy recipients (in the envelope, never in the headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    /// Reply-To mailboxes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<String>,
    /// Subject line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Plain-text body (the original service's `message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// HTML body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Extra headers (`X-Campaign: spring`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A checked email: every field parsed, every limit respected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidEmail {
    /// Sender.
    pub from: Mailbox,
    /// Recipients (at least one).
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
    pub subject: Subject,
    /// Plain-text body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// HTML body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<HeaderName, HeaderValue>,
}

impl ValidEmail {
    /// Every envelope recipient: `to`, `cc` and `bcc`.
    pub fn recipients(&self) -> impl Iterator<Item = &Mailbox> {
        self.to.iter().chain(&self.cc).chain(&self.bcc)
    }

    /// SHA-256 (hex) of the canonical JSON of this email: two requests with the same
    /// digest asked for the same email, whatever their JSON spelling.
    pub fn digest(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a ValidEmail always serialises");
        hex::encode(Sha256::digest(canonical))
    }

    /// Size of the bodies in bytes.
    pub fn body_bytes(&self) -> usize {
        self.text.as_ref().map_or(0, String::len) + self.html.as_ref().map_or(0, String::len)
    }
}

impl EmailDraft {
    /// Checks every field, collecting every problem rather than stopping at the first.
    pub fn validate(&self, limits: &Limits) -> Result<ValidEmail, ValidationErrors> {
        let mut errors = Vec::new();
        let from = match &self.from {
            None => {
                errors.push(FieldError::missing("from"));
                None
            }
            Some(raw) => parse_or_push(&mut errors, "from", Mailbox::parse(raw)),
        };
        if self.to.is_empty() {
            errors.push(FieldError::invalid("to", "at least one recipient is required"));
        }
        let to = mailboxes(&mut errors, "to", &self.to);
        let cc = mailboxes(&mut errors, "cc", &self.cc);
        let bcc = mailboxes(&mut errors, "bcc", &self.bcc);
        let reply_to = mailboxes(&mut errors, "reply_to", &self.reply_to);
        let recipients = self.to.len() + self.cc.len() + self.bcc.len();
        if recipients > limits.max_recipients {
            errors.push(FieldError::too_large(
                "to",
                format!("{recipients} recipients (to + cc + bcc); at most {} are allowed", limits.max_recipients),
            ));
        }
        if self.reply_to.len() > limits.max_reply_to {
            errors.push(FieldError::too_large(
                "reply_to",
                format!("{} reply-to addresses; at most {} are allowed", self.reply_to.len(), limits.max_reply_to),
            ));
        }
        let subject = match &self.subject {
            None => {
                errors.push(FieldError::missing("subject"));
                None
            }
            Some(raw) => parse_or_push(&mut errors, "subject", HeaderValue::parse(raw)),
        };
        let text = self.text.clone();
        let html = self.html.clone();
        for (field, body) in [("message", &text), ("html", &html)] {
            if body.as_deref().is_some_and(|b| b.contains('\0')) {
                // Mail cannot carry it (SMTP forbids NUL outside BINARYMIME), nor can jsonb.
                errors.push(FieldError::invalid(field, "contains a NUL character (U+0000)"));
            }
        }
        if text.is_none() && html.is_none() {
            errors.push(FieldError::missing("message").with_reason("is required (give `message`, `html` or both)"));
        }
        let body = text.as_ref().map_or(0, String::len) + html.as_ref().map_or(0, String::len);
        if body > limits.max_body_bytes {
            errors.push(FieldError::too_large(
                "message",
                format!("the body is {body} bytes; at most {} are allowed", limits.max_body_bytes),
            ));
        }
        if self.headers.len() > limits.max_headers {
            errors.push(FieldError::too_large(
                "headers",
                format!("{} headers; at most {} are allowed", self.headers.len(), limits.max_headers),
            ));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in &self.headers {
            // The path names the header, cut short: an answer never grows with its question.
            let shown: String = name.chars().take(80).collect();
            let field = format!("headers.{shown}");
            let name = parse_or_push(&mut errors, &field, HeaderName::parse(name));
            let value = parse_or_push(&mut errors, &field, HeaderValue::parse(value));
            if let (Some(name), Some(value)) = (name, value) {
                headers.insert(name, value);
            }
        }
        match (from, subject) {
            (Some(from), Some(subject)) if errors.is_empty() => {
                Ok(ValidEmail { from, to, cc, bcc, reply_to, subject, text, html, headers })
            }
            _ => Err(ValidationErrors(errors)),
        }
    }
}

fn parse_or_push<T>(errors: &mut Vec<FieldError>, field: &str, parsed: Result<T, String>) -> Option<T> {
    parsed.map_err(|reason| errors.push(FieldError::invalid(field, reason))).ok()
}

fn mailboxes(errors: &mut Vec<FieldError>, field: &str, raw: &[String]) -> Vec<Mailbox> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, r)| parse_or_push(errors, &format!("{field}[{i}]"), Mailbox::parse(r)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::error::ErrorKind;

    fn draft() -> EmailDraft {
        EmailDraft {
            from: Some("Sender <sender@example.com>".into()),
            to: vec!["rcpt@example.org".into()],
            subject: Some("Hello".into()),
            text: Some("Body".into()),
            ..Default::default()
        }
    }

    fn fields(d: &EmailDraft, limits: &Limits) -> Vec<(String, ErrorKind)> {
        d.validate(limits).unwrap_err().0.into_iter().map(|e| (e.field, e.kind)).collect()
    }

    #[test]
    fn a_complete_draft_validates() {
        let v = draft().validate(&Limits::default()).unwrap();
        assert_eq!(v.from.address.as_str(), "sender@example.com");
        assert_eq!(v.recipients().count(), 1);
    }

    #[test]
    fn missing_fields_are_all_reported() {
        let got = fields(&EmailDraft::default(), &Limits::default());
        let names: Vec<_> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(names, ["from", "to", "subject", "message"]);
    }

    #[test]
    fn injection_is_rejected_in_every_header_field() {
        let mut d = draft();
        d.subject = Some("hi\r\nBcc: victim@example.com".into());
        assert_eq!(fields(&d, &Limits::default())[0].0, "subject");
        let mut d = draft();
        d.headers.insert("X-Tag".into(), "a\nb".into());
        assert_eq!(fields(&d, &Limits::default())[0].0, "headers.X-Tag");
        let mut d = draft();
        d.reply_to = vec!["ok@example.com".into(), "x@example.com\r\nTo: y@example.com".into()];
        assert_eq!(fields(&d, &Limits::default())[0].0, "reply_to[1]");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits { max_body_bytes: 10, max_recipients: 2, max_headers: 1, max_reply_to: 1 };
        let mut d = draft();
        d.text = Some("x".repeat(6));
        d.html = Some("y".repeat(5));
        d.cc = vec!["a@example.com".into(), "b@example.com".into()];
        d.headers.insert("X-A".into(), "1".into());
        d.headers.insert("X-B".into(), "2".into());
        d.reply_to = vec!["r1@example.com".into(), "r2@example.com".into()];
        let got = fields(&d, &limits);
        assert!(got.contains(&("reply_to".into(), ErrorKind::TooLarge)));
        assert!(got.contains(&("message".into(), ErrorKind::TooLarge)));
        assert!(got.contains(&("to".into(), ErrorKind::TooLarge)));
        assert!(got.contains(&("headers".into(), ErrorKind::TooLarge)));
        let mut d = draft();
        d.text = Some("x".repeat(10));
        assert!(d.validate(&limits).is_ok(), "exactly at the limit is fine");
    }

    #[test]
    fn a_nul_in_a_body_is_refused_naming_the_field() {
        let mut d = draft();
        d.text = Some("a\0b".into());
        d.html = Some("<p>\0</p>".into());
        let got = fields(&d, &Limits::default());
        assert_eq!(got, [("message".into(), ErrorKind::Invalid), ("html".into(), ErrorKind::Invalid)]);
    }

    #[test]
    fn html_alone_is_a_body_and_digest_ignores_spelling() {
        let mut d = draft();
        d.text = None;
        d.html = Some("<p>hi</p>".into());
        let a = d.validate(&Limits::default()).unwrap();
        let mut d2 = d.clone();
        d2.from = Some("Sender <sender@EXAMPLE.com>".into());
        let b = d2.validate(&Limits::default()).unwrap();
        assert_eq!(a.digest(), b.digest());
        d2.subject = Some("Other".into());
        assert_ne!(a.digest(), d2.validate(&Limits::default()).unwrap().digest());
    }
}
