//! `mailledger replay`: events in commit order as NDJSON, one object per line:
//! `{"email_id","sequence","position","type","version","recorded_at","payload","metadata"}`.
//!
//! Rows stream from the store's cursor ([`crate::store::replay`]) and each line is
//! written straight from the stored JSON text, so memory stays flat whatever the size of
//! the store.

use std::io::Write;

use chrono::SecondsFormat;

use super::progress::Progress;
use crate::store::replay::{self, Window};

/// `dead_lettered` → `DeadLettered`; `Sent` stays `Sent`.
pub fn event_type_name(kind: &str) -> String {
    kind.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Writes every event of `window` to `out`; returns how many.
pub async fn replay(
    pool: &sqlx::PgPool,
    window: &Window,
    out: &mut impl Write,
    progress: &dyn Progress,
) -> anyhow::Result<u64> {
    let total = replay::count(pool, window).await?;
    progress.start(total.max(0) as u64);
    let mut unreported = 0u64;
    let written = replay::for_each(pool, window, |row| {
        writeln!(
            out,
            r#"{{"email_id":{},"sequence":{},"position":{},"type":{},"version":{},"recorded_at":"{}","payload":{},"metadata":{}}}"#,
            serde_json::to_string(row.email_id)?,
            row.sequence,
            row.position,
            serde_json::to_string(row.event_type)?,
            serde_json::to_string(row.version)?,
            row.recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            row.payload,
            row.metadata,
        )?;
        unreported += 1;
        if unreported == 1024 {
            progress.advance(unreported);
            unreported = 0;
        }
        Ok(())
    })
    .await?;
    progress.advance(unreported);
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kinds_are_normalised() {
        assert_eq!(super::event_type_name("dead_lettered"), "DeadLettered");
        assert_eq!(super::event_type_name("Sent"), "Sent");
        assert_eq!(super::event_type_name("sent"), "Sent");
    }
}
