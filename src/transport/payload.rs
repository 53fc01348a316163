//! The JSON shape of a create-email request, shared by NATS and REST.
//!
//! The original service's payload `{"from", "to", "subject", "message"}` is accepted as
//! it is (also with its `emailID` and `createdAt`, which are ignored). `to`, `cc`, `bcc`
//! and `reply_to` take one address or a list. Unknown fields are refused, so a typo
//! (`"too"`) is an error rather than a silently dropped recipient.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::command::{EmailDraft, FieldError, ValidationErrors};

/// One address (or several in one string, separated by commas, as the original
/// service's `to` holds them), or a list of them.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `"a@example.com"` or `"a@example.com, \"Lee, Bo\" <b@example.com>"`
    One(String),
    /// `["a@example.com", "Bo <b@example.com>"]`
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            // A string with no address in it stays one (empty) entry, refused by name.
            OneOrMany::One(s) => match crate::command::address::split_list(&s) {
                list if list.is_empty() => vec![s],
                list => list,
            },
            OneOrMany::Many(v) => v,
        }
    }
}

/// A request to send an email.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "from": "Ann Lee <ann@example.com>",
    "to": ["bob@example.org"],
    "subject": "Quarterly report",
    "message": "Hello Bob, the report is attached.",
    "html": "<p>Hello Bob, the report is attached.</p>",
    "headers": {"X-Campaign": "q3"},
    "idempotency_key": "report-2026-q3-bob"
}))]
pub struct CreateEmailPayload {
    /// Sender: `addr` or `Name <addr>`.
    #[schema(required = true, nullable = false)]
    pub from: Option<String>,
    /// Recipients: one, several separated by commas, or a list (at least one).
    #[schema(required = true, nullable = false)]
    pub to: Option<OneOrMany>,
    /// Carbon-copy recipients.
    pub cc: Option<OneOrMany>,
    /// Blind carbon-copy recipients (envelope only).
    pub bcc: Option<OneOrMany>,
    /// Reply-To mailboxes.
    pub reply_to: Option<OneOrMany>,
    /// Subject line (required; may be empty).
    #[schema(required = true, nullable = false)]
    pub subject: Option<String>,
    /// Plain-text body. `text` is accepted as another name.
    #[serde(alias = "text")]
    pub message: Option<String>,
    /// HTML body.
    pub html: Option<String>,
    /// Extra headers; names the ledger writes itself (From, Date, Content-*, …) are refused.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Idempotency key: the same key always names the same email.
    pub idempotency_key: Option<String>,
    /// Sent by the original service's producers; ignored.
    #[serde(rename = "emailID")]
    #[schema(ignore)]
    pub legacy_email_id: Option<serde_json::Value>,
    /// Sent by the original service's producers; ignored.
    #[serde(rename = "createdAt")]
    #[schema(ignore)]
    pub legacy_created_at: Option<serde_json::Value>,
}

/// Why a body could not be read as a [`CreateEmailPayload`].
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but a field has the wrong type or is unknown.
    #[error("{0}")]
    Invalid(ValidationErrors),
}

impl CreateEmailPayload {
    /// Parses a JSON body, naming the offending field on a type error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PayloadError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let field = if path == "." { "body".to_owned() } else { path };
                    let reason = strip_position(&inner.to_string());
                    PayloadError::Invalid(ValidationErrors::single(FieldError::invalid(&field, reason)))
                }
                _ => PayloadError::Malformed(inner.to_string()),
            }
        })
    }

    /// Splits into the draft and the idempotency key.
    pub fn into_draft(self) -> (EmailDraft, Option<String>) {
        let list = |v: Option<OneOrMany>| v.map(OneOrMany::into_vec).unwrap_or_default();
        let draft = EmailDraft {
            from: self.from,
            to: list(self.to),
            cc: list(self.cc),
            bcc: list(self.bcc),
            reply_to: list(self.reply_to),
            subject: self.subject,
            text: self.message,
            html: self.html,
            headers: self.headers.unwrap_or_default(),
        };
        (draft, self.idempotency_key)
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_payload_is_accepted() {
        let p = CreateEmailPayload::from_json(
            br#"{"emailID":"00000000-0000-0000-0000-000000000000","from":"a@example.com","to":"b@example.com","subject":"s","message":"m","createdAt":"2021-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let (draft, key) = p.into_draft();
        assert_eq!(draft.to, vec!["b@example.com"]);
        assert_eq!(draft.text.as_deref(), Some("m"));
        assert_eq!(key, None);
    }

    #[test]
    fn one_string_may_hold_several_addresses() {
        let p = CreateEmailPayload::from_json(
            br#"{"from":"a@example.com","to":"b@example.com, \"Lee, Bo\" <bo@example.com>","subject":"s","cc":" "}"#,
        )
        .unwrap();
        let (draft, _) = p.into_draft();
        assert_eq!(draft.to, vec!["b@example.com", "\"Lee, Bo\" <bo@example.com>"]);
        assert_eq!(draft.cc, vec![" "], "a string without an address is kept, to be refused by name");
    }

    #[test]
    fn errors_name_the_field() {
        match CreateEmailPayload::from_json(br#"{"from": 5}"#) {
            Err(PayloadError::Invalid(e)) => assert_eq!(e.0[0].field, "from"),
            other => panic!("{other:?}"),
        }
        match CreateEmailPayload::from_json(br#"{"too": "x@example.com"}"#) {
            Err(PayloadError::Invalid(e)) => assert!(e.0[0].reason.contains("unknown field `too`"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(CreateEmailPayload::from_json(b"{\"from\": "), Err(PayloadError::Malformed(_))));
        assert!(matches!(CreateEmailPayload::from_json(b"not json"), Err(PayloadError::Malformed(_))));
        assert!(matches!(CreateEmailPayload::from_json(b"[]"), Err(PayloadError::Invalid(_))));
    }
}
