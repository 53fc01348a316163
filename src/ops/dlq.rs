//! `mailledger dlq list` and `mailledger dlq redrive ID|--all`.

use std::collections::HashMap;
use std::io::Write;

use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::ledger::Ledger;
use crate::query::row;

/// Prints every dead-lettered email (from the read model), oldest first.
pub async fn list(pool: &PgPool, out: &mut impl Write) -> anyhow::Result<usize> {
    let rows = row::dead_letters(pool).await?;
    for d in &rows {
        writeln!(
            out,
            "{}  {}  {} → {}  {:?}  {} attempt(s): {}",
            d.id,
            d.updated_at.format("%Y-%m-%d %H:%M:%S"),
            d.from,
            d.to.join(", "),
            d.subject,
            d.attempts,
            d.last_error.as_deref().unwrap_or_default()
        )?;
    }
    Ok(rows.len())
}

/// Redrives `ids` (or every dead letter when `ids` is empty); returns the ids redriven.
pub async fn redrive(
    pool: &PgPool,
    ledger: &Ledger,
    ids: &[Uuid],
    operator: &Principal,
    by: Option<&str>,
) -> anyhow::Result<Vec<Uuid>> {
    let ids =
        if ids.is_empty() { row::dead_letters(pool).await?.into_iter().map(|v| v.id).collect() } else { ids.to_vec() };
    let mut done = Vec::new();
    for id in ids {
        let metadata = HashMap::from([("transport".to_owned(), "cli".to_owned())]);
        ledger.redrive(id, operator, by, None, metadata).await.map_err(|e| anyhow::anyhow!("{id}: {e}"))?;
        done.push(id);
    }
    Ok(done)
}
