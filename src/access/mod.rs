//! Who may do what: API keys, the principal a request acts as, tenants, scopes, and
//! the limits on each key.
//!
//! - [`key`]: the key format (`mlk_…` with a checksum) and its hash — only the hash is
//!   stored.
//! - [`keys`]: creating, listing and revoking keys; each change is recorded as an event
//!   (`KeyCreated`, `KeyRevoked`, aggregate type `ApiKey`) in the same transaction as the
//!   `api_keys` row, so an auditor can tell who could do what, and when.
//! - [`keyring`]: every key in memory, looked up by hash on each request, reloaded
//!   within half a second of a change on every instance (a revoked key stops working
//!   within a second everywhere).
//! - [`limits`]: a token bucket per key (requests) and a daily send quota per key.
//!
//! A [`Principal`] is what a request acts as: a key's name, tenant, scopes and the
//! domains it may send from; or an operator at the command line (`cli:<user>`), or, with
//! authentication off, an anonymous principal with every scope in tenant `default`.

pub mod key;
pub mod keyring;
pub mod keys;
pub mod limits;

use std::collections::HashMap;
use std::fmt;

use uuid::Uuid;

use crate::command::EmailAddress;

/// The tenant of everything made without a tenant.
pub const DEFAULT_TENANT: &str = "default";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Create emails.
    Send,
    /// Look up, search, history, as-of.
    Read,
    /// Redrive dead letters.
    Redrive,
    /// Manage keys; act in every tenant.
    Admin,
    /// Manage the tenant's webhook endpoints, see their delivery logs, replay.
    Webhooks,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 5] = [Scope::Send, Scope::Read, Scope::Redrive, Scope::Admin, Scope::Webhooks];

    /// Its name (`send`, `read`, `redrive`, `admin`, `webhooks`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Redrive => "redrive",
            Scope::Admin => "admin",
            Scope::Webhooks => "webhooks",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope.
    pub fn all() -> Self {
        Self(Scope::ALL.iter().fold(0, |b, s| b | s.bit()))
    }

    /// Whether `scope` is in the set.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Parses `send,read` or `all` (case-insensitive, spaces ignored); an unknown name
    /// is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut set = 0;
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            set |= match name.to_ascii_lowercase().as_str() {
                "all" => Self::all().0,
                other => Scope::ALL.iter().find(|s| s.as_str() == other).map(|s| s.bit()).ok_or_else(|| {
                    format!("{} is not a scope (send, read, redrive, admin, webhooks or all)", crate::text::echo(name))
                })?,
            };
        }
        if set == 0 {
            return Err("give at least one scope (send, read, redrive, admin, webhooks or all)".into());
        }
        Ok(Self(set))
    }

    /// The names, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL.iter().filter(|s| self.has(**s)).map(|s| s.as_str()).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// What a request acts as.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// The key, when one was presented.
    pub key_id: Option<Uuid>,
    /// The key's name, or `cli:<user>`, `nats:<subject>`, `anonymous`.
    pub name: String,
    /// The tenant it acts in.
    pub tenant: String,
    /// What it may do.
    pub scopes: Scopes,
    /// Domains it may send from (lower case); empty: any.
    pub from_domains: Vec<String>,
}

impl Principal {
    /// An operator at the command line: every scope, in the default tenant.
    pub fn operator(user: &str) -> Self {
        Self {
            key_id: None,
            name: format!("cli:{user}"),
            tenant: DEFAULT_TENANT.into(),
            scopes: Scopes::all(),
            from_domains: vec![],
        }
    }

    /// Everyone, when authentication is off (`MAILLEDGER_AUTH=off`).
    pub fn anonymous() -> Self {
        Self {
            key_id: None,
            name: "anonymous".into(),
            tenant: DEFAULT_TENANT.into(),
            scopes: Scopes::all(),
            from_domains: vec![],
        }
    }

    /// A NATS command without a key (NATS's own permissions guard the subject): it may
    /// send, in the default tenant.
    pub fn nats(subject: &str) -> Self {
        Self {
            key_id: None,
            name: format!("nats:{subject}"),
            tenant: DEFAULT_TENANT.into(),
            scopes: Scopes::parse("send").expect("a scope"),
            from_domains: vec![],
        }
    }

    /// Fails unless the principal has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AccessError> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            crate::metrics::key_request(&self.name, "forbidden");
            Err(AccessError::Forbidden(format!("this key lacks the `{}` scope", scope.as_str())))
        }
    }

    /// The tenant its reads are limited to: none for an admin (every tenant).
    pub fn tenant_filter(&self) -> Option<&str> {
        (!self.scopes.has(Scope::Admin)).then_some(self.tenant.as_str())
    }

    /// The tenant a change acts in: its own, or — admin keys only — the one `asked`.
    pub fn acting_tenant(&self, asked: Option<&str>) -> Result<String, AccessError> {
        match asked.filter(|t| !t.is_empty()) {
            Some(t) if t != self.tenant && self.tenant_filter().is_some() => {
                crate::metrics::key_request(&self.name, "forbidden");
                Err(AccessError::Forbidden("only an admin key may act in another tenant".into()))
            }
            Some(t) => Ok(t.to_owned()),
            None => Ok(self.tenant.clone()),
        }
    }

    /// The tenant a read is limited to: none for an admin that names none (every
    /// tenant), the one an admin names, or the key's own.
    pub fn reading_tenant(&self, asked: Option<&str>) -> Result<Option<String>, AccessError> {
        match (asked.filter(|t| !t.is_empty()), self.tenant_filter()) {
            (None, None) => Ok(None),
            (asked, _) => self.acting_tenant(asked).map(Some),
        }
    }

    /// Whether it may see something of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant_filter().is_none_or(|t| t == tenant)
    }

    /// Fails unless it may send as `from` (its domain, compared in lower case, is one of
    /// the key's `from_domains`, or the key has none).
    pub fn may_send_from(&self, from: &EmailAddress) -> Result<(), AccessError> {
        if self.from_domains.is_empty() || self.from_domains.iter().any(|d| d == from.domain()) {
            Ok(())
        } else {
            crate::metrics::key_request(&self.name, "forbidden");
            Err(AccessError::Forbidden(format!(
                "this key may send only from {}",
                self.from_domains.iter().map(|d| format!("@{d}")).collect::<Vec<_>>().join(", ")
            )))
        }
    }

    /// Who acted, for an event's metadata: `actor` (the name), `key_id`, `tenant`.
    pub fn stamp(&self, metadata: &mut HashMap<String, String>) {
        metadata.insert("actor".into(), self.name.clone());
        if let Some(id) = self.key_id {
            metadata.insert("key_id".into(), id.to_string());
        }
        metadata.insert("tenant".into(), self.tenant.clone());
    }
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No usable key: missing, malformed, unknown, revoked or expired (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The key may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The key's request rate is spent; retry after this many seconds (429).
    #[error("the request rate of this key is exceeded; retry in {0} s")]
    RateLimited(u64),
    /// The key's daily quota is spent; it resets at midnight UTC, this many seconds away (429).
    #[error("the daily send quota of this key is spent; it resets at 00:00 UTC")]
    QuotaExceeded(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_by_name_and_all() {
        assert_eq!(Scopes::parse("all").unwrap(), Scopes::all());
        let s = Scopes::parse(" Send , read").unwrap();
        assert!(s.has(Scope::Send) && s.has(Scope::Read) && !s.has(Scope::Admin));
        assert_eq!(s.to_string(), "send,read");
        assert!(Scopes::parse("send,root").unwrap_err().contains("\"root\""));
        assert!(Scopes::parse(" , ").is_err());
    }

    #[test]
    fn from_domains_are_checked_on_the_address_not_the_name() {
        let mut p = Principal::anonymous();
        p.from_domains = vec!["finance.example".into()];
        let ok = EmailAddress::parse("Pay@FINANCE.example").unwrap();
        assert!(p.may_send_from(&ok).is_ok());
        let spoof = crate::command::Mailbox::parse("\"pay@finance.example\" <x@evil.example>").unwrap();
        assert!(p.may_send_from(&spoof.address).is_err());
        let sub = EmailAddress::parse("a@sub.finance.example").unwrap();
        assert!(p.may_send_from(&sub).is_err(), "a subdomain is another domain");
    }
}
