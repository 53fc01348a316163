//! Refreshes the state gauges every few seconds: projection lag (events and seconds),
//! delivery queue depth (and per recipient domain), pool usage, and the command
//! consumer's pending counts.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::NatsNames;
use crate::metrics;

/// Runs until `shutdown`.
/// `domains`: the recipient domains with limits of their own (the others are `other`).
pub async fn run(
    pool: PgPool,
    nats: async_nats::Client,
    names: NatsNames,
    domains: Vec<String>,
    shutdown: CancellationToken,
) {
    let js = async_nats::jetstream::new(nats);
    loop {
        if let Err(e) = refresh(&pool, &js, &names, &domains).await {
            tracing::debug!(error = %e, "cannot refresh the state gauges");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn refresh(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    names: &NatsNames,
    domains: &[String],
) -> anyhow::Result<()> {
    metrics::POOL_MAX.set(i64::from(pool.options().get_max_connections()));
    let idle = pool.num_idle() as i64;
    metrics::POOL.with_label_values(&["idle"]).set(idle);
    metrics::POOL.with_label_values(&["in_use"]).set(i64::from(pool.size()) - idle);
    for lag in crate::store::stats::lags(pool).await? {
        if lag.name.ends_with("__shadow") {
            continue;
        }
        metrics::PROJECTION_LAG_EVENTS.with_label_values(&[&lag.name]).set(lag.events);
        metrics::PROJECTION_LAG_SECONDS.with_label_values(&[&lag.name]).set(lag.seconds.unwrap_or(0.0).max(0.0));
    }
    metrics::QUEUE_DEPTH.set(crate::saga::schedule::depth(pool).await?);
    let mut queued: std::collections::HashMap<&str, i64> =
        domains.iter().map(|d| (d.as_str(), 0)).chain([("other", 0)]).collect();
    for (domain, n) in crate::saga::shaping::queued(pool).await? {
        let label = domains.iter().find(|d| **d == domain).map_or("other", String::as_str);
        *queued.entry(label).or_default() += n;
    }
    for (label, n) in queued {
        metrics::DOMAIN_QUEUED.with_label_values(&[label]).set(n);
    }
    if let Ok(stream) = js.get_stream(&names.commands_stream).await {
        let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
            stream.get_consumer(&names.consumer).await;
        if let Ok(mut consumer) = consumer
            && let Ok(info) = consumer.info().await
        {
            metrics::NATS_PENDING.set(info.num_pending as i64);
            metrics::NATS_ACK_PENDING.set(info.num_ack_pending as i64);
        }
    }
    Ok(())
}
