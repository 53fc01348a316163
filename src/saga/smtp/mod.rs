//! The SMTP side of the sender: one client connection ([`client`]) and the pools of
//! them ([`pool`]), set up from `MAILLEDGER_SMTP_URL`.
//!
//! | URL | connection |
//! |---|---|
//! | `smtp://host:port` | plain text (port 25 when not given) |
//! | `smtp://host:587?tls=required` | STARTTLS, or no connection |
//! | `smtp://host?tls=opportunistic` | STARTTLS when offered |
//! | `smtps://user:pass@host` | TLS from the first byte (port 465), AUTH PLAIN |
//!
//! Certificates are checked against the system's roots, or `smtp.tls_ca` when given.

pub mod client;
pub mod pool;

use std::sync::Arc;

use anyhow::Context;
use percent_encoding::percent_decode_str;

pub use client::{Endpoint, Reply, Security, SmtpError, Transaction};
pub use pool::Pool;

use crate::config::{SmtpSettings, redact};

/// The endpoint `settings.url` names.
pub fn endpoint(settings: &SmtpSettings) -> anyhow::Result<Endpoint> {
    let url = &settings.url;
    let unusable = |why: &str| anyhow::anyhow!("MAILLEDGER_SMTP_URL {} is not usable: {why}", redact(url));
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| unusable("it names no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tls = url.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    let security = match (url.scheme(), tls.as_deref()) {
        ("smtps", None | Some("wrapper" | "implicit")) => Security::Implicit,
        ("smtp", None | Some("none")) => Security::None,
        ("smtp", Some("required")) => Security::Required,
        ("smtp", Some("opportunistic")) => Security::Opportunistic,
        (_, Some(other)) => return Err(unusable(&format!("tls={other} (say required or opportunistic)"))),
        _ => return Err(unusable("the scheme is not smtp:// or smtps://")),
    };
    let port = url.port().unwrap_or(if security == Security::Implicit { 465 } else { 25 });
    let credentials = (!url.username().is_empty()).then(|| {
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        (decode(url.username()), decode(url.password().unwrap_or_default()))
    });
    let helo = match &settings.helo {
        Some(name) => name.clone(),
        None => hostname::get().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into()),
    };
    Ok(Endpoint { host, port, security, credentials, helo, timeout: settings.timeout, tls: tls_config(settings)? })
}

fn tls_config(settings: &SmtpSettings) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match &settings.tls_ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("smtp.tls_ca {}", path.display()))?;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls::pki_types::CertificateDer<'static> =
                    cert.with_context(|| format!("smtp.tls_ca {} is not PEM certificates", path.display()))?;
                roots.add(cert).with_context(|| format!("smtp.tls_ca {}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> SmtpSettings {
        SmtpSettings {
            url: url.parse().unwrap(),
            pool_size: 1,
            timeout: std::time::Duration::from_secs(1),
            messages_per_connection: 100,
            idle_timeout: std::time::Duration::from_secs(30),
            tls_ca: None,
            helo: Some("me.example".into()),
        }
    }

    #[test]
    fn urls_name_the_connection() {
        let e = endpoint(&settings("smtp://relay.example")).unwrap();
        assert_eq!((e.host.as_str(), e.port, e.security), ("relay.example", 25, Security::None));
        let e = endpoint(&settings("smtp://relay.example:587?tls=required")).unwrap();
        assert_eq!((e.port, e.security), (587, Security::Required));
        let e = endpoint(&settings("smtps://ann:p%40ss@relay.example")).unwrap();
        assert_eq!((e.port, e.security), (465, Security::Implicit));
        assert_eq!(e.credentials, Some(("ann".into(), "p@ss".into())));
        assert_eq!(e.helo, "me.example");
        let err = endpoint(&settings("smtp://ann:secret@relay.example?tls=maybe")).err().unwrap().to_string();
        assert!(err.contains("tls=maybe") && !err.contains("secret"), "{err}");
    }
}
