//! `mailledger history ID`: one email's timeline, for a person to read.

use std::io::Write;

use sqlx::PgPool;
use uuid::Uuid;

use crate::command::EmailEvent;
use crate::store::feed;

/// Writes the timeline of `id`; `Ok(false)` when the email is unknown.
pub async fn print(pool: &PgPool, id: Uuid, out: &mut impl Write) -> anyhow::Result<bool> {
    let mut conn = pool.acquire().await?;
    let events = feed::read_email(&mut conn, id, None).await?;
    if events.is_empty() {
        return Ok(false);
    }
    writeln!(out, "email {id}")?;
    for e in &events {
        let at = e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3fZ");
        let what = match &e.event {
            EmailEvent::Requested(r) => {
                let via = e.metadata.get("transport").and_then(|v| v.as_str()).unwrap_or(r.source.as_str());
                let key = r.idempotency_key.as_deref().map(|k| format!(", key {k}")).unwrap_or_default();
                format!(
                    "requested via {via}{key}: from {} to {} — {:?}",
                    r.request.from.as_deref().unwrap_or("?"),
                    r.request.to.join(", "),
                    r.request.subject.as_deref().unwrap_or("")
                )
            }
            EmailEvent::Persisted(p) => {
                format!("accepted and queued: Message-ID {}, {} bytes", p.message_id, p.size_bytes)
            }
            EmailEvent::Sent(s) if s.recipients.is_empty() => {
                format!("sent on attempt {}: {} {}", s.attempt, s.reply_code, s.reply_text)
            }
            EmailEvent::Sent(s) => format!(
                "sent to {} on attempt {}: {} {}",
                s.recipients.join(", "),
                s.attempt,
                s.reply_code,
                s.reply_text
            ),
            EmailEvent::Failed(f) => {
                let next = match f.next_attempt_at {
                    Some(t) => format!("; next attempt {}", t.format("%H:%M:%S")),
                    None => String::new(),
                };
                let kind = if f.permanent { "permanent" } else { "transient" };
                let whom =
                    if f.recipients.is_empty() { String::new() } else { format!(" for {}", f.recipients.join(", ")) };
                format!("attempt {} failed{whom} ({kind}): {}{next}", f.attempt, f.error)
            }
            EmailEvent::DeadLettered(d) => format!("dead-lettered after {} attempts: {}", d.attempts, d.reason),
            EmailEvent::Redriven(r) => format!("redriven by {}", r.by),
            EmailEvent::Suppressed(x) => format!("not attempted for {}: {}", x.recipients.join(", "), x.reason),
        };
        writeln!(out, "  {at}  #{:<3} {:<13} {what}", e.sequence, e.event_type)?;
    }
    Ok(true)
}
