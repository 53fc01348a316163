//! Refreshes the state gauges every few seconds: projection lag (events and seconds),
//! delivery queue depth, pool usage, and the command consumer's pending counts.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::transport::nats::Names;

/// Runs until `shutdown`.
pub async fn run(pool: PgPool, nats: async_nats::Client, names: Names, shutdown: CancellationToken) {
    let js = async_nats::jetstream::new(nats);
    loop {
        if let Err(e) = refresh(&pool, &js, &names).await {
            tracing::debug!(error = %e, "cannot refresh the state gauges");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn refresh(pool: &PgPool, js: &async_nats::jetstream::Context, names: &Names) -> anyhow::Result<()> {
    metrics::POOL_MAX.set(i64::from(pool.options().get_max_connections()));
    let idle = pool.num_idle() as i64;
    metrics::POOL.with_label_values(&["idle"]).set(idle);
    metrics::POOL.with_label_values(&["in_use"]).set(i64::from(pool.size()) - idle);
    // Cheap at any size: the lag in events is the distance in positions (gaps from rolled
    // back inserts make it an upper bound), the lag in time the age of the next event.
    let rows: Vec<(String, i64, Option<f64>)> = sqlx::query_as(
        "SELECT c.name, greatest(h.head - c.position, 0), extract(epoch FROM now() - n.recorded_at)::float8 \
         FROM projection_checkpoints c \
         CROSS JOIN (SELECT coalesce(max(position), 0) AS head FROM events) h \
         LEFT JOIN LATERAL (SELECT e.recorded_at FROM events e WHERE (e.txid, e.position) > (c.txid, c.position) \
                            ORDER BY e.txid, e.position LIMIT 1) n ON true \
         WHERE c.name NOT LIKE '%\\_\\_shadow'",
    )
    .fetch_all(pool)
    .await?;
    for (name, lag, seconds) in rows {
        metrics::PROJECTION_LAG_EVENTS.with_label_values(&[&name]).set(lag);
        metrics::PROJECTION_LAG_SECONDS.with_label_values(&[&name]).set(seconds.unwrap_or(0.0).max(0.0) as i64);
    }
    metrics::QUEUE_DEPTH.set(crate::saga::schedule::depth(pool).await?);
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
