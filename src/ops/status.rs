//! `mailledger status`: how far behind each projection is, how many commands wait in
//! NATS, how deep the delivery queue is, the busiest recipient domains, and how much of
//! the store the proof log has sealed and signed.

use std::io::Write;

use sqlx::PgPool;

use crate::saga::{schedule, shaping};
use crate::store::stats;

/// Prints the status report.
pub async fn print(
    pool: &PgPool,
    nats: Option<(&async_nats::Client, String, String)>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (count, head) = (stats::count(pool).await?, stats::head(pool).await?);
    writeln!(out, "event store: {count} events (head position {head})")?;
    writeln!(out, "projections:")?;
    for lag in stats::lags(pool).await? {
        let behind = lag.seconds.map(|s| format!(", oldest unapplied {s:.1} s old")).unwrap_or_default();
        writeln!(out, "  {:<16} at position {:<10} {} events behind{behind}", lag.name, lag.position, lag.events)?;
    }
    let (sealed, _) = crate::proof::tree::head(pool).await?;
    let newest = crate::proof::tree::latest(&mut *pool.acquire().await?).await?;
    match newest {
        Some(c) => writeln!(
            out,
            "proof log: {sealed} events sealed; newest checkpoint of size {} signed {}",
            c.size,
            c.signed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?,
        None => writeln!(out, "proof log: {sealed} events sealed; no signed checkpoint (MAILLEDGER_SIGNING_KEY)")?,
    }
    let q = schedule::counts(pool).await?;
    writeln!(out, "deliveries: {} due now, {} scheduled, {} being sent", q.due, q.scheduled, q.leased)?;
    let busiest = shaping::busiest(pool, 10).await?;
    if !busiest.is_empty() {
        writeln!(out, "busiest recipient domains:")?;
        for d in busiest {
            let held = d.held_until.map(|t| format!(", paused until {}", t.format("%H:%M:%S"))).unwrap_or_default();
            let name = if d.domain.is_empty() { "(unknown)" } else { d.domain.as_str() };
            writeln!(out, "  {name:<32} {} due, {} scheduled, {} being sent{held}", d.due, d.scheduled, d.in_flight)?;
        }
    }
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
