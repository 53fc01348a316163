//! Renders a [`ValidEmail`] into RFC 5322 bytes with lettre.
//!
//! Rendering is deterministic: the same email, `Message-ID` and `Date` always give the
//! same bytes (the MIME boundary is derived from the `Message-ID`), so the size and
//! digest recorded in `Persisted` hold for every delivery attempt. `Bcc` never appears
//! in the rendered headers; it lives only in the SMTP envelope.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use lettre::Message;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox as LettreMailbox, MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::command::{Mailbox, MessageRenderer, ValidEmail};

/// The lettre-backed renderer.
#[derive(Debug, Clone, Copy, Default)]
pub struct LettreRenderer;

impl LettreRenderer {
    /// Builds the lettre message (used by the sender, which also needs the envelope).
    pub fn message(email: &ValidEmail, message_id: &str, date: DateTime<Utc>) -> Result<Message, String> {
        let mut builder = Message::builder()
            .message_id(Some(message_id.to_owned()))
            .date(SystemTime::from(date))
            .from(mailbox(&email.from)?)
            .subject(email.subject.as_str());
        for m in &email.to {
            builder = builder.to(mailbox(m)?);
        }
        for m in &email.cc {
            builder = builder.cc(mailbox(m)?);
        }
        for m in &email.bcc {
            builder = builder.bcc(mailbox(m)?);
        }
        for m in &email.reply_to {
            builder = builder.reply_to(mailbox(m)?);
        }
        for (name, value) in &email.headers {
            let name =
                HeaderName::new_from_ascii(name.as_str().to_owned()).map_err(|e| format!("header {name:?}: {e}"))?;
            builder = builder.raw_header(HeaderValue::new(name, value.as_str().to_owned()));
        }
        let built = match (&email.text, &email.html) {
            (Some(text), None) => builder.singlepart(SinglePart::plain(text.clone())),
            (None, Some(html)) => builder.singlepart(SinglePart::html(html.clone())),
            (Some(text), Some(html)) => builder.multipart(
                MultiPart::alternative()
                    .boundary(boundary(message_id))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text.clone()))
                    .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone())),
            ),
            (None, None) => return Err("the email has no body".into()),
        };
        built.map_err(|e| e.to_string())
    }
}

impl MessageRenderer for LettreRenderer {
    fn render(&self, email: &ValidEmail, message_id: &str, date: DateTime<Utc>) -> Result<Vec<u8>, String> {
        Ok(Self::message(email, message_id, date)?.formatted())
    }
}

fn mailbox(m: &Mailbox) -> Result<LettreMailbox, String> {
    let address = m.address.as_str().parse().map_err(|e| format!("address {}: {e}", m.address))?;
    Ok(LettreMailbox::new(m.name.clone(), address))
}

fn boundary(message_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(message_id.as_bytes()));
    format!("mailledger-{}", &digest[..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{EmailDraft, Limits};

    fn email(text: Option<&str>, html: Option<&str>) -> ValidEmail {
        let mut draft = EmailDraft {
            from: Some("Ann Lee <ann@example.com>".into()),
            to: vec!["bob@example.org".into(), "Cé <ce@example.org>".into()],
            bcc: vec!["hidden@example.net".into()],
            subject: Some("Grüße".into()),
            text: text.map(Into::into),
            html: html.map(Into::into),
            ..Default::default()
        };
        draft.headers.insert("X-Campaign".into(), "spring".into());
        draft.validate(&Limits::default()).unwrap()
    }

    #[test]
    fn rendering_is_deterministic_and_hides_bcc() {
        let date = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().to_utc();
        let e = email(Some("hello"), Some("<p>hello</p>"));
        let a = LettreRenderer.render(&e, "<id1@example.com>", date).unwrap();
        let b = LettreRenderer.render(&e, "<id1@example.com>", date).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert!(text.contains("Message-ID: <id1@example.com>"), "{text}");
        assert!(text.contains("Date: Sun, 22 Nov 2026 10:00:00 +0000"), "{text}");
        assert!(text.contains("X-Campaign: spring"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(!text.to_lowercase().contains("hidden@example.net"), "{text}");
        let envelope = LettreRenderer::message(&e, "<id1@example.com>", date).unwrap();
        assert_eq!(envelope.envelope().to().len(), 3, "bcc stays in the envelope");
    }

    #[test]
    fn single_part_bodies() {
        let date = Utc::now();
        let plain =
            String::from_utf8(LettreRenderer.render(&email(Some("hi"), None), "<a@b.c>", date).unwrap()).unwrap();
        assert!(plain.contains("text/plain"));
        let html = String::from_utf8(LettreRenderer.render(&email(None, Some("<b>hi</b>")), "<a@b.c>", date).unwrap())
            .unwrap();
        assert!(html.contains("text/html"));
    }
}
