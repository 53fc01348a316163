//! Where messages go: an SMTP relay through pooled connections of our own client
//! ([`super::smtp`]: `smtp://`, `smtps://`, STARTTLS with `?tls=required`, AUTH from the
//! URL's credentials), or a directory (`file:///dir`) where each email is written once
//! as `<id>.eml`.
//!
//! A send reports each recipient's fate ([`Outcome`]): taken, refused for now, or
//! refused for good.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::smtp::{self, Pool, Reply, SmtpError};
use crate::config::{DomainPolicy, SmtpSettings};

/// A refusal, for some recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Who.
    pub recipients: Vec<String>,
    /// The server's code, when it answered.
    pub code: Option<u16>,
    /// What happened.
    pub message: String,
    /// A 5xx (or a message the server can never take): do not retry.
    pub permanent: bool,
    /// The refusal is about the recipient's address (a 5xx at `RCPT TO`, or after the
    /// message when it was the only recipient): it goes on the suppression list.
    pub address: bool,
}

/// What one send came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Recipients the server took.
    pub accepted: Vec<String>,
    /// Its reply to the message (code, text), when anyone was taken.
    pub reply: Option<(u16, String)>,
    /// Refusals, grouped by reply.
    pub refused: Vec<Refusal>,
}

impl Outcome {
    /// Every recipient refused with one error.
    fn all_refused(recipients: &[String], code: Option<u16>, message: String, permanent: bool) -> Self {
        let refusal = Refusal { recipients: recipients.to_vec(), code, message, permanent, address: false };
        Self { refused: vec![refusal], ..Self::default() }
    }
}

/// The outgoing transport. Cheap to clone.
#[derive(Clone)]
pub enum Mailer {
    /// SMTP through pools of connections.
    Smtp(Arc<Relay>),
    /// A directory of `.eml` files.
    File(PathBuf),
}

/// The relay and its pools: one shared by every domain without limits of its own, and
/// one per domain whose policy caps its connections or the messages on each.
pub struct Relay {
    endpoint: smtp::Endpoint,
    settings: SmtpSettings,
    shared: Pool,
    domains: Mutex<HashMap<String, (DomainPolicy, Arc<Pool>)>>,
}

impl Relay {
    fn pool_for(&self, domain: &str, policy: DomainPolicy) -> Option<Arc<Pool>> {
        if policy.connections == 0 && policy.messages_per_connection == 0 {
            return None;
        }
        let mut pools = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, pool)) = pools.get(domain)
            && *p == policy
        {
            return Some(pool.clone());
        }
        // New, or its policy was reloaded: a fresh pool (the old one's connections close
        // as their deliveries end).
        let size = if policy.connections == 0 { self.settings.pool_size as usize } else { policy.connections as usize };
        let per_connection = match policy.messages_per_connection {
            0 => self.settings.messages_per_connection,
            n => n as usize,
        };
        let pool = Arc::new(Pool::new(self.endpoint.clone(), size, per_connection, self.settings.idle_timeout));
        pools.insert(domain.to_owned(), (policy, pool.clone()));
        Some(pool)
    }
}

impl Mailer {
    /// Builds the transport for `settings.url`.
    pub fn new(settings: &SmtpSettings) -> anyhow::Result<Self> {
        if settings.url.scheme() == "file" {
            let dir = settings
                .url
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("MAILLEDGER_SMTP_URL {} is not a directory path", settings.url))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create the outbox {}: {e}", dir.display()))?;
            return Ok(Self::File(dir));
        }
        let endpoint = smtp::endpoint(settings)?;
        let shared = Pool::new(
            endpoint.clone(),
            settings.pool_size as usize,
            settings.messages_per_connection,
            settings.idle_timeout,
        );
        Ok(Self::Smtp(Arc::new(Relay { endpoint, settings: settings.clone(), shared, domains: Mutex::default() })))
    }

    /// Sends one rendered message from `from` to `recipients`; `domain` and `policy` pick
    /// the pool.
    pub async fn send(
        &self,
        email_id: Uuid,
        from: &str,
        recipients: &[String],
        message: &[u8],
        (domain, policy): (&str, DomainPolicy),
    ) -> Outcome {
        match self {
            Mailer::File(dir) => {
                let path = dir.join(format!("{email_id}.eml"));
                match tokio::fs::write(&path, message).await {
                    Ok(()) => Outcome {
                        accepted: recipients.to_vec(),
                        reply: Some((250, format!("written to {}", path.display()))),
                        refused: vec![],
                    },
                    Err(e) => {
                        Outcome::all_refused(recipients, None, format!("cannot write {}: {e}", path.display()), false)
                    }
                }
            }
            Mailer::Smtp(relay) => {
                let pool = relay.pool_for(domain, policy);
                let pool = pool.as_deref().unwrap_or(&relay.shared);
                match pool.send(from, recipients, message).await {
                    Ok(t) => outcome(recipients, t),
                    Err(e) => {
                        let message = match &e {
                            SmtpError::Refused { .. } => e.to_string(),
                            e => format!("{}:{}: {e}", relay.endpoint.host, relay.endpoint.port),
                        };
                        Outcome::all_refused(recipients, e.code(), message, e.is_permanent())
                    }
                }
            }
        }
    }
}

/// Whether a permanent refusal is about the recipient's address or mailbox — an
/// enhanced status code (RFC 3463) of class 5.1 (addressing) or 5.2 (mailbox), or
/// without one, 550, 551 or 553 — rather than the message's content (5.6), policy
/// (5.7), or the relay's own trouble.
fn about_the_address(reply: &Reply) -> bool {
    if !reply.is_permanent() {
        return false;
    }
    let first = reply.lines.first().map(String::as_str).unwrap_or_default();
    match first.split_whitespace().next().map(|w| w.split('.').collect::<Vec<_>>()) {
        Some(parts)
            if parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
        {
            parts[0] == "5" && matches!(parts[1], "1" | "2")
        }
        _ => matches!(reply.code, 550 | 551 | 553),
    }
}

/// Each recipient's fate from a transaction's replies.
fn outcome(recipients: &[String], t: smtp::Transaction) -> Outcome {
    let mut out = Outcome::default();
    let mut refusals: Vec<(Reply, Vec<String>)> = Vec::new();
    let mut taken = Vec::new();
    for (who, reply) in recipients.iter().zip(&t.recipients) {
        if reply.is_positive() {
            taken.push(who.clone());
        } else {
            match refusals.iter_mut().find(|(r, _)| r == reply) {
                Some((_, group)) => group.push(who.clone()),
                None => refusals.push((reply.clone(), vec![who.clone()])),
            }
        }
    }
    for (reply, group) in refusals {
        out.refused.push(Refusal {
            recipients: group,
            code: Some(reply.code),
            message: format!("RCPT TO: {reply}"),
            permanent: reply.is_permanent(),
            address: about_the_address(&reply),
        });
    }
    match t.data {
        Some(reply) if reply.is_positive() => {
            out.accepted = taken;
            out.reply = Some((reply.code, reply.text()));
        }
        Some(reply) if !taken.is_empty() => out.refused.push(Refusal {
            address: about_the_address(&reply) && taken.len() == 1,
            recipients: taken,
            code: Some(reply.code),
            message: format!("DATA: {reply}"),
            permanent: reply.is_permanent(),
        }),
        _ if !taken.is_empty() => out.refused.push(Refusal {
            recipients: taken,
            code: None,
            message: "the server did not answer the message".into(),
            permanent: false,
            address: false,
        }),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16) -> Reply {
        Reply { code, lines: vec![format!("{code} text")] }
    }

    #[test]
    fn each_recipient_has_its_fate() {
        let to: Vec<String> = ["a@x.org", "b@x.org", "c@y.org", "d@y.org"].map(String::from).to_vec();
        let t = smtp::Transaction {
            recipients: vec![reply(250), reply(550), reply(451), reply(550)],
            data: Some(reply(250)),
        };
        let o = outcome(&to, t);
        assert_eq!(o.accepted, ["a@x.org"]);
        assert_eq!(o.refused.len(), 2);
        assert_eq!(o.refused[0].recipients, ["b@x.org", "d@y.org"]);
        assert!(o.refused[0].permanent && o.refused[0].address);
        assert_eq!(o.refused[1].recipients, ["c@y.org"]);
        assert!(!o.refused[1].permanent);
    }

    #[test]
    fn only_refusals_of_the_address_suppress_it() {
        let r = |code: u16, text: &str| Reply { code, lines: vec![text.to_owned()] };
        assert!(about_the_address(&r(550, "5.1.1 no such user")));
        assert!(about_the_address(&r(552, "5.2.2 mailbox full")));
        assert!(about_the_address(&r(550, "mailbox unavailable")));
        assert!(!about_the_address(&r(554, "5.7.1 relaying denied")));
        assert!(!about_the_address(&r(550, "5.7.1 message refused as spam")));
        assert!(!about_the_address(&r(554, "transaction failed")));
        assert!(!about_the_address(&r(450, "4.1.1 try later")));
    }

    #[test]
    fn a_refused_message_refuses_those_taken_at_rcpt() {
        let to: Vec<String> = ["a@x.org", "b@x.org"].map(String::from).to_vec();
        let o = outcome(&to, smtp::Transaction { recipients: vec![reply(250), reply(250)], data: Some(reply(554)) });
        assert!(o.accepted.is_empty());
        assert_eq!(o.refused[0].recipients, to);
        assert!(o.refused[0].permanent);
        assert!(!o.refused[0].address, "a message refused for two recipients says nothing about either address");
    }
}
