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

use crate::config::NatsSettings;

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
    // async-nats does not send credentials written in the URL: take them out of the
    // first one and give them as options (`nats://user:password@…`, or `nats://TOKEN@…`).
    let first = settings.url.first();
    if !first.username().is_empty() {
        let decode = |s: &str| percent_decode(s);
        options = match first.password() {
            Some(password) => options.user_and_password(decode(first.username()), decode(password)),
            None => options.token(decode(first.username())),
        };
    }
    let servers: Vec<String> = settings
        .url
        .all()
        .iter()
        .map(|url| {
            let mut url = url.clone();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        })
        .collect();
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
    if first.scheme() == "tls" {
        options = options.require_tls(true);
    }
    if let Some(ca) = &settings.tls_ca {
        anyhow::ensure!(ca.is_file(), "MAILLEDGER_NATS_CA {}: no such file", ca.display());
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    options
        .connect(servers.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", settings.url.redacted()))
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Creates the streams if they do not exist (idempotent; safe from many instances).
pub async fn ensure_streams(js: &jetstream::Context, settings: &NatsSettings) -> anyhow::Result<()> {
    let names = settings.names();
    ensure_stream(
        js,
        settings.replicas,
        stream::Config {
            name: names.commands_stream.clone(),
            description: Some("mailledger commands (work queue)".into()),
            subjects: vec![names.commands_filter.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        settings.replicas,
        stream::Config {
            name: names.dlq_stream.clone(),
            description: Some("mailledger dead letters".into()),
            subjects: vec![names.dlq_filter.clone()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(90 * 24 * 3600),
            duplicate_window: settings.duplicate_window,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Creates `config`'s stream with `replicas` copies if it does not exist. An existing
/// stream is left as it is (its replication is changed with the `nats` CLI, `nats stream
/// edit --replicas`); a different replica count is logged, not silently ignored.
pub async fn ensure_stream(js: &jetstream::Context, replicas: usize, config: stream::Config) -> anyhow::Result<()> {
    let name = config.name.clone();
    let mut stream = js
        .get_or_create_stream(stream::Config { num_replicas: replicas, ..config })
        .await
        .with_context(|| format!("cannot create JetStream stream {name}"))?;
    let info = stream.info().await.with_context(|| format!("cannot read JetStream stream {name}"))?;
    if info.config.num_replicas.max(1) != replicas {
        tracing::warn!(
            stream = %name, replicas = info.config.num_replicas, configured = replicas,
            "the stream exists with another replica count; change it with `nats stream edit --replicas`"
        );
    }
    Ok(())
}
