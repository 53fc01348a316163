//! NATS JetStream: the connection, the streams mailledger owns, and the command intake.
//!
//! Subjects (with the default namespace `mail`):
//! - `mail.commands.create`: producers publish create-email commands here;
//! - `mail.dlq.commands`: commands that can never succeed (bad JSON, invalid fields,
//!   a reused idempotency key), with the reason in headers and the original bytes.
//!
//! Streams: `<prefix>_COMMANDS` (work queue over `mail.commands.>`, file storage) and
//! `<prefix>_DLQ` (limits retention over `mail.dlq.>`, file storage).

pub mod dlq;
pub mod intake;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};

use crate::config::{NatsSettings, redact};

/// Connects to NATS. A lost connection is retried forever in the background; it never
/// ends the process. The first connection is retried too, so the service can start
/// before NATS does.
pub async fn connect(settings: &NatsSettings) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("mailledger")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => tracing::warn!("NATS disconnected; reconnecting"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    // async-nats does not send credentials written in the URL: take them out and give
    // them as options (`nats://user:password@…`, or `nats://TOKEN@…`).
    let mut url = settings.url.clone();
    if !url.username().is_empty() {
        let decode = |s: &str| percent_decode(s);
        options = match url.password() {
            Some(password) => options.user_and_password(decode(url.username()), decode(password)),
            None => options.token(decode(url.username())),
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    let url = url.to_string();
    if let Some(path) = &settings.creds {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("MAILLEDGER_NATS_CREDS {}: cannot be read", path.display()))?;
        options = if text.contains("BEGIN NATS USER JWT") {
            options
                .credentials_file(path)
                .await
                .with_context(|| format!("MAILLEDGER_NATS_CREDS {}: not a usable .creds file", path.display()))?
        } else {
            // An nkey seed file: the seed alone (SU…).
            options.nkey(text.trim().to_owned())
        };
    }
    if settings.url.scheme() == "tls" {
        options = options.require_tls(true);
    }
    if let Some(ca) = &settings.tls_ca {
        anyhow::ensure!(ca.is_file(), "MAILLEDGER_NATS_CA {}: no such file", ca.display());
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    options.connect(&url).await.with_context(|| format!("cannot connect to NATS at {}", redact(&settings.url)))
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Creates the streams if they do not exist (idempotent; safe from many instances).
pub async fn ensure_streams(js: &jetstream::Context, settings: &NatsSettings) -> anyhow::Result<()> {
    let names = settings.names();
    js.get_or_create_stream(stream::Config {
        name: names.commands_stream.clone(),
        description: Some("mailledger commands (work queue)".into()),
        subjects: vec![names.commands_filter.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create JetStream stream {}", names.commands_stream))?;
    js.get_or_create_stream(stream::Config {
        name: names.dlq_stream.clone(),
        description: Some("mailledger dead letters".into()),
        subjects: vec![names.dlq_filter.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(90 * 24 * 3600),
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create JetStream stream {}", names.dlq_stream))?;
    Ok(())
}
