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

/// Every event type the store holds: an email's, an API key's, a suppression list's.
pub const KINDS: &[&str] = &[
    "Requested",
    "Persisted",
    "Sent",
    "Failed",
    "DeadLettered",
    "Redriven",
    "Suppressed",
    "KeyCreated",
    "KeyRevoked",
    "SuppressionAdded",
    "SuppressionRemoved",
];

/// A `--type` value: `dead_lettered`, `DeadLettered` or `deadlettered`… as stored, or
/// an error listing the kinds there are.
pub fn parse_kind(text: &str) -> Result<String, String> {
    let name = event_type_name(text);
    KINDS.iter().find(|k| k.eq_ignore_ascii_case(&name)).map(|k| (*k).to_owned()).ok_or_else(|| {
        let snake: Vec<String> = KINDS.iter().map(|k| crate::projections::events::subject_kind(k)).collect();
        format!("no event type {}; choose one of {}", crate::text::echo(text), snake.join(", "))
    })
}

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
        // An email's events name it `email_id`; another aggregate's (an API key's) say
        // which it is.
        let id = if row.aggregate_type == "Email" {
            format!(r#""email_id":{}"#, serde_json::to_string(row.email_id)?)
        } else {
            format!(r#""aggregate":{},"id":{}"#, serde_json::to_string(row.aggregate_type)?, serde_json::to_string(row.email_id)?)
        };
        writeln!(
            out,
            r#"{{{id},"sequence":{},"position":{},"type":{},"version":{},"recorded_at":"{}","payload":{},"metadata":{}}}"#,
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
        assert_eq!(super::parse_kind("key_created").unwrap(), "KeyCreated");
        assert_eq!(super::parse_kind("deadlettered").unwrap(), "DeadLettered");
        assert!(super::parse_kind("bogus").unwrap_err().contains("dead_lettered"));
        assert_eq!(super::parse_kind("suppressed").unwrap(), "Suppressed");
        assert_eq!(super::parse_kind("suppression_added").unwrap(), "SuppressionAdded");
        assert_eq!(super::parse_kind("SuppressionRemoved").unwrap(), "SuppressionRemoved");
    }
}
