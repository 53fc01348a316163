//! Copies of the signed checkpoints outside the database: each is published on NATS
//! JetStream (`<namespace>.checkpoints`, stream `<prefix>_CHECKPOINTS`, file storage,
//! kept without limit) with message id = its tree size, so a republish is dropped, and
//! marked published once the server acknowledged it. A checkpoint proves nothing unless
//! a copy lives where the operator of the database cannot rewrite it: this is one such
//! copy; the README names others.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::tree;
use crate::config::NatsNames;

/// Publishes checkpoints to NATS.
pub struct Publisher {
    js: jetstream::Context,
    subject: String,
    stream: String,
    duplicate_window: Duration,
}

impl Publisher {
    /// A publisher on `names`' checkpoint subject and stream.
    pub fn new(js: jetstream::Context, names: &NatsNames, duplicate_window: Duration) -> Self {
        Self {
            js,
            subject: names.checkpoints_subject.clone(),
            stream: names.checkpoints_stream.clone(),
            duplicate_window,
        }
    }

    /// Creates the stream, with `replicas` copies, if it does not exist.
    pub async fn ensure_stream(&self, replicas: usize) -> anyhow::Result<()> {
        crate::transport::nats::ensure_stream(
            &self.js,
            replicas,
            stream::Config {
                name: self.stream.clone(),
                description: Some("mailledger proof log: signed checkpoints".into()),
                subjects: vec![self.subject.clone()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                duplicate_window: self.duplicate_window,
                ..Default::default()
            },
        )
        .await
    }

    /// Publishes every checkpoint not yet published, oldest first; returns how many.
    pub async fn publish_pending(&self, pool: &PgPool) -> anyhow::Result<usize> {
        let pending = tree::unpublished(pool, 100).await?;
        for (size, note) in &pending {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", size.to_string().as_str());
            self.js.publish_with_headers(self.subject.clone(), headers, note.clone().into()).await?.await?;
            tree::mark_published(pool, *size).await?;
        }
        Ok(pending.len())
    }

    /// Publishes pending checkpoints every quarter second until `stop`.
    pub async fn run(&self, pool: PgPool, stop: CancellationToken) {
        loop {
            if let Err(e) = self.publish_pending(&pool).await {
                tracing::warn!(error = format!("{e:#}"), "proof log: cannot publish checkpoints; retrying");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }
}
