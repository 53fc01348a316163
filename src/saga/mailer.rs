//! Where messages go: SMTP through lettre's pooled transport (`smtp://`, `smtps://`,
//! STARTTLS with `?tls=required`, AUTH from the URL's credentials), or a directory
//! (`file:///dir`) where each email is written once as `<id>.eml`.

use std::path::PathBuf;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use uuid::Uuid;

use crate::config::{SmtpSettings, redact};

/// The server's acceptance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Reply code (250).
    pub code: u16,
    /// Reply text.
    pub text: String,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The server's code, when it answered.
    pub code: Option<u16>,
    /// What happened.
    pub message: String,
    /// A 5xx (or a message the server can never take): do not retry.
    pub permanent: bool,
}

/// The outgoing transport.
#[derive(Clone)]
pub enum Mailer {
    /// SMTP.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// A directory of `.eml` files.
    File(PathBuf),
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
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.url.as_str())
            .map_err(|e| anyhow::anyhow!("MAILLEDGER_SMTP_URL {} is not usable: {e}", redact(&settings.url)))?
            .pool_config(PoolConfig::new().max_size(settings.pool_size).idle_timeout(Duration::from_secs(30)))
            .timeout(Some(settings.timeout))
            .build();
        Ok(Self::Smtp(transport))
    }

    /// Sends one rendered message.
    pub async fn send(&self, email_id: Uuid, envelope: &Envelope, message: &[u8]) -> Result<Accepted, Rejected> {
        match self {
            Mailer::File(dir) => {
                let path = dir.join(format!("{email_id}.eml"));
                tokio::fs::write(&path, message)
                    .await
                    .map(|()| Accepted { code: 250, text: format!("written to {}", path.display()) })
                    .map_err(|e| Rejected {
                        code: None,
                        message: format!("cannot write {}: {e}", path.display()),
                        permanent: false,
                    })
            }
            Mailer::Smtp(transport) => match transport.send_raw(envelope, message).await {
                Ok(response) => Ok(Accepted {
                    code: u16::from(response.code()),
                    text: response.message().collect::<Vec<_>>().join(" "),
                }),
                Err(e) => Err(classify(&e)),
            },
        }
    }
}

/// 4xx and connection trouble are transient; 5xx are permanent.
fn classify(e: &lettre::transport::smtp::Error) -> Rejected {
    let code = e.status().map(u16::from);
    let permanent = match code {
        Some(c) => c >= 500,
        None => e.is_client(),
    };
    let message = match &code {
        Some(_) => e.to_string(),
        None => format!("{e}{}", std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default()),
    };
    Rejected { code, message, permanent }
}
