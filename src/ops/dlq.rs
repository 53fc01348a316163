//! `mailledger dlq list` and `mailledger dlq redrive ID|--all`.

use std::collections::HashMap;
use std::io::Write;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::Ledger;

#[derive(sqlx::FromRow)]
struct DeadLetter {
    id: Uuid,
    from_address: String,
    to_addresses: Vec<String>,
    subject: String,
    attempts: i32,
    last_error: Option<String>,
    updated_at: DateTime<Utc>,
}

/// Prints every dead-lettered email (from the read model), oldest first.
pub async fn list(pool: &PgPool, out: &mut impl Write) -> anyhow::Result<usize> {
    let rows: Vec<DeadLetter> = sqlx::query_as(
        "SELECT id, from_address, to_addresses, subject, attempts, last_error, updated_at FROM emails \
         WHERE status = 'dead_lettered' ORDER BY updated_at",
    )
    .fetch_all(pool)
    .await?;
    for d in &rows {
        writeln!(
            out,
            "{}  {}  {} → {}  {:?}  {} attempt(s): {}",
            d.id,
            d.updated_at.format("%Y-%m-%d %H:%M:%S"),
            d.from_address,
            d.to_addresses.join(", "),
            d.subject,
            d.attempts,
            d.last_error.as_deref().unwrap_or("")
        )?;
    }
    Ok(rows.len())
}

/// Redrives `ids` (or every dead letter when `ids` is empty); returns the ids redriven.
pub async fn redrive(pool: &PgPool, ledger: &Ledger, ids: &[Uuid], by: &str) -> anyhow::Result<Vec<Uuid>> {
    let ids = if ids.is_empty() {
        sqlx::query_scalar("SELECT id FROM emails WHERE status = 'dead_lettered' ORDER BY updated_at")
            .fetch_all(pool)
            .await?
    } else {
        ids.to_vec()
    };
    let mut done = Vec::new();
    for id in ids {
        let metadata = HashMap::from([("transport".to_owned(), "cli".to_owned())]);
        ledger.redrive(id, by, metadata).await.map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
        done.push(id);
    }
    Ok(done)
}
