//! `mailledger status`: how far behind each projection is, how many commands wait in
//! NATS, how deep the delivery queue is.

use std::io::Write;

use sqlx::PgPool;

/// Prints the status report.
pub async fn print(
    pool: &PgPool,
    nats: Option<(&async_nats::Client, String, String)>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let head: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events").fetch_one(pool).await?;
    writeln!(out, "event store: {} events (head position {})", count(pool).await?, head.unwrap_or(0))?;
    writeln!(out, "projections:")?;
    for lag in crate::projections::feed::lags(pool).await? {
        let behind = lag.seconds.map(|s| format!(", oldest unapplied {s:.1} s old")).unwrap_or_default();
        writeln!(out, "  {:<16} at position {:<10} {} events behind{behind}", lag.name, lag.position, lag.events)?;
    }
    let (due, scheduled, leased): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE due_at <= now()), count(*), count(*) FILTER (WHERE lease_until > now()) FROM deliveries",
    )
    .fetch_one(pool)
    .await?;
    writeln!(out, "deliveries: {due} due now, {scheduled} scheduled, {leased} being sent")?;
    match nats {
        None => writeln!(out, "commands: NATS not reachable")?,
        Some((client, stream, consumer)) => {
            let js = async_nats::jetstream::new(client.clone());
            let info = async {
                let s = js.get_stream(&stream).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut c: async_nats::jetstream::consumer::PullConsumer =
                    s.get_consumer(&consumer).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let i = c.info().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok::<_, anyhow::Error>((i.num_pending, i.num_ack_pending, i.num_redelivered))
            };
            match info.await {
                Ok((pending, in_flight, redelivered)) => writeln!(
                    out,
                    "commands ({stream}/{consumer}): {pending} waiting, {in_flight} in flight, {redelivered} redelivered"
                )?,
                Err(e) => writeln!(out, "commands: {e}")?,
            }
        }
    }
    Ok(())
}

async fn count(pool: &PgPool) -> sqlx::Result<i64> {
    // Exact for small stores, the planner's estimate for large ones.
    let estimate: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'events'").fetch_one(pool).await?;
    if estimate > 1_000_000.0 {
        return Ok(estimate as i64);
    }
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await
}
