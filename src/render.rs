//! Renders a [`ValidEmail`] into RFC 5322 bytes, and its SMTP envelope.
//!
//! **Every line is at most 998 octets, whatever was accepted** (RFC 5322 §2.1.1; a
//! server refuses longer ones). The header block is written here: address lists fold
//! between mailboxes; display names are quoted strings, or RFC 2047 encoded-words when
//! they are not ASCII; an unstructured value (the subject, a producer's header) folds
//! at its spaces when it is printable ASCII with no word too long to fit a line, and is
//! otherwise written as RFC 2047 encoded-words of at most 75 characters each. The body
//! parts are lettre's: 7bit, quoted-printable or base64, chosen so that no line is long.
//!
//! Rendering is deterministic: the same email, `Message-ID` and `Date` always give the
//! same bytes (the MIME boundary is derived from the `Message-ID`), so the size and
//! digest recorded in `Persisted` hold for every delivery attempt. `Bcc` never appears
//! in the rendered headers; it lives only in the SMTP envelope.

use base64::Engine;
use chrono::{DateTime, Utc};
use lettre::address::{Address, Envelope};
use lettre::message::header::ContentType;
use lettre::message::{MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::command::{Mailbox, MessageRenderer, ValidEmail};

/// Longest line RFC 5322 allows, without its CRLF.
pub const MAX_LINE: usize = 998;
/// Where lines are folded when they can be (RFC 5322's "SHOULD": 78).
const FOLD_AT: usize = 78;
/// Bytes of text per RFC 2047 encoded-word: base64 of 45 bytes is 60 characters, and
/// `=?utf-8?b?…?=` adds 12, within the 75 an encoded-word may have.
const WORD_BYTES: usize = 45;

/// The rendered message and where it goes.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// RFC 5322 bytes.
    pub bytes: Vec<u8>,
    /// The SMTP envelope: the sender, and every recipient (to, cc and bcc).
    pub envelope: Envelope,
}

/// The renderer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Renderer;

impl Renderer {
    /// Renders `email` with this `Message-ID` and `Date`.
    pub fn render(email: &ValidEmail, message_id: &str, date: DateTime<Utc>) -> Result<Rendered, String> {
        let mut head = Head::default();
        head.addresses("From", std::slice::from_ref(&email.from));
        head.addresses("To", &email.to);
        head.addresses("Cc", &email.cc);
        head.addresses("Reply-To", &email.reply_to);
        head.unstructured("Subject", email.subject.as_str());
        head.line(&format!("Date: {}", date.to_rfc2822()));
        head.line(&format!("Message-ID: {message_id}"));
        head.line("MIME-Version: 1.0");
        for (name, value) in &email.headers {
            head.unstructured(name.as_str(), value.as_str());
        }
        let body = match (&email.text, &email.html) {
            (Some(text), None) => SinglePart::plain(text.clone()).formatted(),
            (None, Some(html)) => SinglePart::html(html.clone()).formatted(),
            (Some(text), Some(html)) => MultiPart::alternative()
                .boundary(boundary(message_id))
                .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text.clone()))
                .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html.clone()))
                .formatted(),
            (None, None) => return Err("the email has no body".into()),
        };
        let mut bytes = head.out.into_bytes();
        bytes.extend_from_slice(&body);
        Ok(Rendered { bytes, envelope: envelope(email)? })
    }
}

impl MessageRenderer for Renderer {
    fn render(&self, email: &ValidEmail, message_id: &str, date: DateTime<Utc>) -> Result<Vec<u8>, String> {
        Ok(Self::render(email, message_id, date)?.bytes)
    }
}

fn envelope(email: &ValidEmail) -> Result<Envelope, String> {
    let address =
        |m: &Mailbox| m.address.as_str().parse::<Address>().map_err(|e| format!("address {}: {e}", m.address));
    let to = email.recipients().map(address).collect::<Result<Vec<_>, _>>()?;
    Envelope::new(Some(address(&email.from)?), to).map_err(|e| e.to_string())
}

fn boundary(message_id: &str) -> String {
    let digest = hex::encode(Sha256::digest(message_id.as_bytes()));
    format!("mailledger-{}", &digest[..32])
}

/// A header block being written, one folded field at a time.
#[derive(Default)]
struct Head {
    out: String,
}

/// One field: tokens joined by a space, or by a fold where the line would grow past
/// [`FOLD_AT`]. A token never contains a line break.
struct Field<'a> {
    out: &'a mut String,
    line: usize,
    first: bool,
}

impl<'a> Field<'a> {
    fn start(out: &'a mut String, name: &str) -> Self {
        out.push_str(name);
        out.push(':');
        Self { out, line: name.len() + 1, first: true }
    }

    fn token(&mut self, token: &str) {
        if !self.first && self.line + 1 + token.len() > FOLD_AT {
            self.out.push_str("\r\n ");
            self.line = 1;
        } else {
            self.out.push(' ');
            self.line += 1;
        }
        self.first = false;
        self.out.push_str(token);
        self.line += token.len();
    }

    fn end(self) {
        self.out.push_str("\r\n");
    }
}

impl Head {
    fn line(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push_str("\r\n");
    }

    /// `Name: a@example.com, "Lee, Ann" <ann@example.org>, =?utf-8?b?…?= <c@example.net>`
    fn addresses(&mut self, name: &str, list: &[Mailbox]) {
        if list.is_empty() {
            return;
        }
        let mut field = Field::start(&mut self.out, name);
        for (i, m) in list.iter().enumerate() {
            let comma = if i + 1 < list.len() { "," } else { "" };
            match m.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                None => field.token(&format!("{}{comma}", m.address)),
                Some(display) => {
                    if is_printable_ascii(display) {
                        field.token(&quoted(display));
                    } else {
                        for word in encoded_words(display) {
                            field.token(&word);
                        }
                    }
                    field.token(&format!("<{}>{comma}", m.address));
                }
            }
        }
        field.end();
    }

    /// An unstructured value, folded at its spaces or encoded (see the module header).
    fn unstructured(&mut self, name: &str, value: &str) {
        let mut field = Field::start(&mut self.out, name);
        let plain = is_printable_ascii(value)
            && !value.contains("=?")
            && value.split(' ').all(|w| name.len() + 2 + w.len() <= FOLD_AT);
        if plain {
            // Folding puts a CRLF before an existing space: unfolding gives the value back.
            let mut words = value.split(' ');
            if let Some(first) = words.next() {
                field.out.push(' ');
                field.out.push_str(first);
                field.line += 1 + first.len();
                field.first = false;
            }
            for word in words {
                field.token(word);
            }
        } else {
            for word in encoded_words(value) {
                field.token(&word);
            }
        }
        field.end();
    }
}

fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// `"Ann \"Nan\" Lee"`
fn quoted(display: &str) -> String {
    let mut q = String::with_capacity(display.len() + 2);
    crate::text::push_quoted(&mut q, display);
    q
}

/// RFC 2047 B encoded-words of at most [`WORD_BYTES`] bytes of `text` each, never
/// splitting a character. Whitespace between adjacent encoded-words is dropped by a
/// decoder, so their concatenation is `text`.
fn encoded_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + WORD_BYTES).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let b64 = base64::engine::general_purpose::STANDARD.encode(&text.as_bytes()[start..end]);
        words.push(format!("=?utf-8?b?{b64}?="));
        start = end;
    }
    if words.is_empty() {
        words.push("=?utf-8?b??=".to_owned());
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{EmailDraft, Limits};
    use proptest::prelude::*;

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

    fn date() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().to_utc()
    }

    #[test]
    fn rendering_is_deterministic_and_hides_bcc() {
        let e = email(Some("hello"), Some("<p>hello</p>"));
        let a = Renderer::render(&e, "<id1@example.com>", date()).unwrap();
        let b = Renderer::render(&e, "<id1@example.com>", date()).unwrap();
        assert_eq!(a.bytes, b.bytes);
        let text = String::from_utf8(a.bytes).unwrap();
        assert!(text.contains("Message-ID: <id1@example.com>\r\n"), "{text}");
        assert!(text.contains("Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n"), "{text}");
        assert!(text.contains("X-Campaign: spring\r\n"), "{text}");
        assert!(text.contains("From: \"Ann Lee\" <ann@example.com>\r\n"), "{text}");
        assert!(text.contains("Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(!text.to_lowercase().contains("hidden@example.net"), "{text}");
        assert_eq!(a.envelope.to().len(), 3, "bcc stays in the envelope");
    }

    #[test]
    fn single_part_bodies() {
        let plain = Renderer::render(&email(Some("hi"), None), "<a@b.c>", date()).unwrap();
        assert!(String::from_utf8(plain.bytes).unwrap().contains("text/plain"));
        let html = Renderer::render(&email(None, Some("<b>hi</b>")), "<a@b.c>", date()).unwrap();
        assert!(String::from_utf8(html.bytes).unwrap().contains("text/html"));
    }

    #[test]
    fn ascii_folds_at_spaces_and_unfolds_to_the_value() {
        let mut head = Head::default();
        let value = "a quarterly report that is long enough to need folding twice over, with several words in it all";
        head.unstructured("Subject", value);
        assert!(head.out.contains("\r\n "), "{}", head.out);
        let unfolded = head.out.trim_end().replace("\r\n ", " ");
        assert_eq!(unfolded, format!("Subject: {value}"));
    }

    #[test]
    fn encoded_words_never_split_a_character() {
        let text = "é".repeat(100) + "🦆🦆";
        let words = encoded_words(&text);
        let mut decoded = Vec::new();
        for w in &words {
            assert!(w.len() <= 75, "{w}");
            let b64 = w.strip_prefix("=?utf-8?b?").unwrap().strip_suffix("?=").unwrap();
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
            std::str::from_utf8(&bytes).expect("each word holds whole characters");
            decoded.extend(bytes);
        }
        assert_eq!(String::from_utf8(decoded).unwrap(), text);
    }

    /// Every line of `bytes`, without its CRLF.
    fn longest_line(bytes: &[u8]) -> usize {
        bytes.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l).len()).max().unwrap_or(0)
    }

    #[test]
    fn the_probes_long_lines_now_fold() {
        let long_word = "x".repeat(998);
        let mut draft = EmailDraft {
            from: Some(format!("{} <a@example.com>", "Ä".repeat(128))),
            to: (0..100).map(|i| format!("recipient-number-{i:03}@example.org")).collect(),
            reply_to: (0..10).map(|i| format!("\"Reply {i}, please\" <r{i}@example.org>")).collect(),
            subject: Some("y".repeat(998)),
            text: Some(format!("{long_word}\n{}", "z".repeat(5000))),
            ..Default::default()
        };
        draft.headers.insert("X-Long".into(), long_word.clone());
        let email = draft.validate(&Limits::default()).unwrap();
        let rendered = Renderer::render(&email, "<id@example.com>", date()).unwrap();
        assert!(longest_line(&rendered.bytes) <= MAX_LINE, "{}", String::from_utf8_lossy(&rendered.bytes));
        assert_eq!(rendered.envelope.to().len(), 100);
    }

    fn address() -> impl Strategy<Value = String> {
        ("[a-z0-9._+-]{1,64}", "[a-z0-9-]{1,20}", "[a-z]{2,6}").prop_map(|(l, d, t)| {
            let local = l.trim_matches('.').replace("..", ".");
            let local = if local.is_empty() { "x".to_owned() } else { local };
            format!("{local}@{d}.{t}")
        })
    }

    fn mailbox() -> impl Strategy<Value = String> {
        (proptest::option::of("[^\\p{Cc}<>\"]{0,120}"), address()).prop_map(|(name, addr)| match name {
            Some(n) if !n.trim().is_empty() => format!("\"{}\" <{addr}>", n.replace('\\', "")),
            _ => addr,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_accepted_draft_renders_lines_of_at_most_998_octets(
            from in mailbox(),
            to in proptest::collection::vec(mailbox(), 1..100),
            reply_to in proptest::collection::vec(mailbox(), 0..10),
            subject in "[^\\p{Cc}]{0,400}",
            header in "[^\\p{Cc}]{0,400}",
            body in "(?s).{0,3000}",
        ) {
            let mut draft = EmailDraft {
                from: Some(from), to, reply_to, subject: Some(subject), text: Some(body), ..Default::default()
            };
            draft.headers.insert("X-Any".into(), header);
            if let Ok(email) = draft.validate(&Limits::default()) {
                let rendered = Renderer::render(&email, "<id@example.com>", date()).unwrap();
                prop_assert!(longest_line(&rendered.bytes) <= MAX_LINE);
            }
        }
    }
}
