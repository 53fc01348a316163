//! Email addresses and mailboxes (`Name <local@domain>`), parsed once at the edge.
//!
//! An [`EmailAddress`] is an RFC 5322 `addr-spec` that also fits the RFC 5321 limits
//! (local part ≤ 64 octets, domain ≤ 255, whole address ≤ 254), whose domain has at
//! least two labels and is not a literal (`[127.0.0.1]`), with the domain lower-cased and,
//! when internationalised, written as its A-label (`bücher.example` → `xn--bcher-kva.example`);
//! a non-ASCII local part is refused (it would need SMTPUTF8).
//! A [`Mailbox`] adds an optional display name, which may not carry CR, LF or any
//! other control character (header injection).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::header::check_header_text;

/// Longest display name we accept, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;

/// A syntactically valid, normalised email address (`local@domain`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses a bare address (`local@domain`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("is empty".into());
        }
        check_header_text(raw)?;
        if raw.trim() != raw {
            return Err("has leading or trailing white space".into());
        }
        let options =
            email_address::Options::default().with_required_tld().without_domain_literal().without_display_text();
        let parsed = email_address::EmailAddress::parse_with_options(raw, options)
            .map_err(|e| format!("is not a valid address: {e}"))?;
        let (local, domain) = (parsed.local_part(), parsed.domain());
        if !local.is_ascii() {
            return Err("has a non-ASCII local part, which needs SMTPUTF8 (this sender does not use it)".into());
        }
        // An internationalised domain goes on the wire as its A-label (punycode).
        let domain = idna::domain_to_ascii(domain)
            .map_err(|_| "has a domain that is not a valid internationalised domain name".to_owned())?;
        let address = format!("{local}@{domain}");
        if domain.len() > 255 || address.len() > 254 {
            return Err("is longer than RFC 5321 allows once its domain is written in ASCII".into());
        }
        Ok(Self(address))
    }

    /// The address as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An address with an optional display name: `a@b.example` or `Ann Lee <a@b.example>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mailbox {
    /// The display name, unquoted, if one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The address itself.
    pub address: EmailAddress,
}

impl Mailbox {
    /// Parses `addr`, `<addr>`, `Name <addr>` or `"Quoted, Name" <addr>`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        check_header_text(raw)?;
        let raw = raw.trim();
        let Some(open) = raw.rfind('<') else {
            return Ok(Self { name: None, address: EmailAddress::parse(raw)? });
        };
        let Some(inner) = raw[open + 1..].strip_suffix('>') else {
            return Err("has a '<' without a closing '>' at the end".into());
        };
        let address = EmailAddress::parse(inner.trim())?;
        let name = unquote(raw[..open].trim())?;
        Ok(Self { name, address })
    }

    /// Formats as it would stand in a header (display names quoted when needed).
    pub fn to_header_string(&self) -> String {
        match &self.name {
            None => self.address.to_string(),
            Some(name) => {
                let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
                format!("\"{escaped}\" <{}>", self.address)
            }
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header_string())
    }
}

/// Splits a comma-separated address list (`a@x.org, "Lee, Ann" <ann@y.org>`), keeping
/// commas inside quoted display names; empty items are dropped.
pub fn split_list(raw: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut current, mut quoted, mut escaped) = (String::new(), false, false);
    for c in raw.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items.into_iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

fn unquote(name: &str) -> Result<Option<String>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    let name = match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next().ok_or("display name ends with a lone '\\'")?),
                    '"' => return Err("display name has an unescaped '\"'".into()),
                    c => out.push(c),
                }
            }
            out
        }
        None if name.contains('"') => return Err("display name has an unbalanced '\"'".into()),
        None => name.to_owned(),
    };
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(format!("display name is longer than {MAX_DISPLAY_NAME_CHARS} characters"));
    }
    if name.contains(['<', '>']) {
        return Err("display name contains '<' or '>'".into());
    }
    Ok(Some(name).filter(|n| !n.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_and_named_forms() {
        let m = Mailbox::parse("a.b+tag@Example.COM").unwrap();
        assert_eq!(m.address.as_str(), "a.b+tag@example.com");
        assert_eq!(m.name, None);
        let m = Mailbox::parse("Ann Lee <ann@example.org>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Ann Lee"));
        let m = Mailbox::parse(r#""Lee, Ann \"AL\"" <ann@example.org>"#).unwrap();
        assert_eq!(m.name.as_deref(), Some(r#"Lee, Ann "AL""#));
        assert_eq!(Mailbox::parse(&m.to_header_string()).unwrap(), m);
        assert_eq!(Mailbox::parse("<ann@example.org>").unwrap().name, None);
    }

    #[test]
    fn lists_split_outside_quotes() {
        assert_eq!(split_list(r#"a@x.org, "Lee, Ann" <ann@y.org>,,"#), vec!["a@x.org", r#""Lee, Ann" <ann@y.org>"#]);
        assert_eq!(split_list(r#""a\", b" <c@d.org>"#), vec![r#""a\", b" <c@d.org>"#]);
        assert!(split_list(" ").is_empty());
    }

    #[test]
    fn rejects_broken_addresses() {
        for bad in [
            "",
            "plainaddress",
            "@example.com",
            "a@",
            "a@localhost",
            "a@[127.0.0.1]",
            "a b@example.com",
            "a@@example.com",
            "a@example.com\r\nBcc: victim@example.com",
            "Ann <a@example.com",
            "Ann\n <a@example.com>",
            "\"Ann <a@example.com>",
            " a@example.com\u{0}",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long_local).is_err());
        let long_domain = format!("a@{}.com", "b".repeat(260));
        assert!(EmailAddress::parse(&long_domain).is_err());
    }

    #[test]
    fn international_domains_become_a_labels_and_utf8_local_parts_are_refused() {
        assert_eq!(EmailAddress::parse("ann@Bücher.example").unwrap().as_str(), "ann@xn--bcher-kva.example");
        assert_eq!(EmailAddress::parse("ann@xn--bcher-kva.example").unwrap().domain(), "xn--bcher-kva.example");
        let refused = EmailAddress::parse("jörg@example.com").unwrap_err();
        assert!(refused.contains("SMTPUTF8"), "{refused}");
    }

    proptest! {
        #[test]
        fn valid_simple_addresses_round_trip(
            local in "[a-z0-9][a-z0-9._+-]{0,30}[a-z0-9]",
            domain in "[a-z][a-z0-9-]{0,20}[a-z0-9]\\.[a-z]{2,6}",
        ) {
            prop_assume!(!local.contains(".."));
            let raw = format!("{local}@{domain}");
            let parsed = EmailAddress::parse(&raw).unwrap();
            prop_assert_eq!(parsed.as_str(), raw.as_str());
            prop_assert_eq!(EmailAddress::parse(parsed.as_str()).unwrap(), parsed);
        }

        #[test]
        fn nothing_with_a_line_break_is_ever_accepted(
            before in "[ -~]{0,20}", after in "[ -~]{0,20}", brk in "[\r\n]"
        ) {
            let raw = format!("{before}{brk}{after}");
            prop_assert!(Mailbox::parse(&raw).is_err());
            prop_assert!(EmailAddress::parse(&raw).is_err());
        }

        #[test]
        fn display_names_round_trip(name in "[^\\p{Cc}<>]{1,40}") {
            prop_assume!(!name.trim().is_empty());
            let m = Mailbox { name: Some(name.clone()), address: EmailAddress::parse("x@example.com").unwrap() };
            let back = Mailbox::parse(&m.to_header_string()).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
