//! Header text: the subject and the producer's own headers.
//!
//! Every value that ends up in a header line is checked here: no CR, LF, NUL or other
//! control character (tab excepted) may reach the message, so a producer can never
//! inject a header (`Subject: hi\r\nBcc: …`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// RFC 5322 §2.1.1: a line must not exceed 998 octets.
pub const MAX_HEADER_VALUE_BYTES: usize = 998;
/// Longest header name we accept.
pub const MAX_HEADER_NAME_BYTES: usize = 76;

/// Headers a producer may not set: the ledger writes them itself.
const RESERVED: &[&str] = &[
    "bcc",
    "cc",
    "content-transfer-encoding",
    "content-type",
    "date",
    "from",
    "message-id",
    "mime-version",
    "received",
    "reply-to",
    "return-path",
    "sender",
    "subject",
    "to",
];

/// Fails when `text` holds a character that must never appear in a header value.
pub fn check_header_text(text: &str) -> Result<(), String> {
    match text.chars().find(|&c| c.is_control() && c != '\t') {
        None => Ok(()),
        Some('\r') | Some('\n') => Err("contains a line break (CR or LF)".into()),
        Some(c) => Err(format!("contains the control character U+{:04X}", c as u32)),
    }
}

/// A single-line header value of at most 998 bytes, free of control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HeaderValue(String);

impl HeaderValue {
    /// Parses a header value.
    pub fn parse(raw: &str) -> Result<Self, String> {
        check_header_text(raw)?;
        if raw.len() > MAX_HEADER_VALUE_BYTES {
            return Err(format!("is longer than {MAX_HEADER_VALUE_BYTES} bytes"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The subject line: a [`HeaderValue`] that may be empty but must be given.
pub type Subject = HeaderValue;

/// A custom header name (`X-Campaign`): printable ASCII without `:`, not one the ledger owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HeaderName(String);

impl HeaderName {
    /// Parses a header name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("header name is empty".into());
        }
        if raw.len() > MAX_HEADER_NAME_BYTES {
            return Err(format!("header name is longer than {MAX_HEADER_NAME_BYTES} bytes"));
        }
        if let Some(c) = raw.chars().find(|c| !matches!(c, '!'..='9' | ';'..='~')) {
            return Err(format!("header name contains {c:?}; only printable ASCII without ':' is allowed"));
        }
        if RESERVED.contains(&raw.to_ascii_lowercase().as_str()) || raw.to_ascii_lowercase().starts_with("content-") {
            return Err(format!("header {raw:?} is set by the ledger and cannot be given"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rejects_injection_and_reserved_names() {
        assert!(HeaderValue::parse("hello\r\nBcc: x@example.com").is_err());
        assert!(HeaderValue::parse("hello\nworld").is_err());
        assert!(HeaderValue::parse("nul\0").is_err());
        assert!(HeaderValue::parse(&"x".repeat(999)).is_err());
        assert!(HeaderValue::parse("tab\tis fine, ünïcödé too").is_ok());
        assert!(HeaderValue::parse("").is_ok());
        for bad in ["", "Bcc", "FROM", "Content-Disposition", "X Space", "X:Colon", "Ü", &"X".repeat(77)] {
            assert!(HeaderName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(HeaderName::parse("X-Campaign-Id").is_ok());
    }

    proptest! {
        #[test]
        fn printable_values_are_accepted_verbatim(v in "[^\\p{Cc}]{0,200}") {
            prop_assume!(v.len() <= MAX_HEADER_VALUE_BYTES);
            let parsed = HeaderValue::parse(&v).unwrap();
            prop_assert_eq!(parsed.as_str(), v.as_str());
        }

        #[test]
        fn any_control_character_is_rejected(
            a in "[ -~]{0,10}", c in "[\\x00-\\x08\\x0a-\\x1f\\x7f]", b in "[ -~]{0,10}"
        ) {
            let raw = format!("{a}{c}{b}");
            prop_assert!(HeaderValue::parse(&raw).is_err());
        }

        #[test]
        fn x_headers_parse(n in "X-[A-Za-z0-9-]{1,40}") {
            prop_assert!(HeaderName::parse(&n).is_ok());
        }
    }
}
