//! Traffic shaping per recipient domain, held across every instance.
//!
//! A delivery belongs to the domain of its email's first recipient (`deliveries.domain`).
//! When the sender claims due deliveries it also takes, in the same transaction, each
//! domain's allowance from `domain_pacing` (a row per domain, locked while it is read
//! and moved on):
//!
//! - **connections**: deliveries to the domain in flight at once, counted as leased
//!   schedule rows, so the cap holds whichever instance holds them;
//! - **per second / per minute**: deliveries started in the current window;
//! - **held**: a domain that answered 421, or a 4xx saying it is busy, is paused (5 s,
//!   doubling to 10 min, reset by its next success), while other domains flow on.
//!
//! Deliveries a domain may not start now are moved to when it may (the end of its
//! window or its pause), so that claims pass them by instead of meeting them again.
//! `delivery.max_per_second` caps every domain together the same way (row `*`).
//!
//! With one smart host in front of the Internet (a relay-first set-up), the relay
//! forwards to the recipients' servers; the limits still apply by recipient domain,
//! because the domain is what a receiver throttles — and a relay that throttles the
//! whole stream answers 421 for each domain in turn.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::types::PgInterval;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::config::DeliverySettings;

/// The row of the limit on every domain together.
const ALL: &str = "*";

/// A claimed delivery.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Claimed {
    /// The email.
    pub email_id: Uuid,
    /// Its recipient domain (`''` for rows scheduled before domains were recorded).
    pub domain: String,
    /// Its tenant.
    pub tenant: String,
}

#[derive(sqlx::FromRow)]
struct Pacing {
    domain: String,
    window_start: DateTime<Utc>,
    started: i32,
    minute_start: DateTime<Utc>,
    minute_count: i32,
    held_until: Option<DateTime<Utc>>,
    backoff_s: f64,
}

/// Claims up to `limit` due deliveries for `owner` for `lease`, within each domain's
/// allowance. Rows other workers hold are skipped, not waited for. Also returns the
/// domains that are (or were lately) throttled, so that a success there resets them.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
    settings: &DeliverySettings,
) -> sqlx::Result<(Vec<Claimed>, Vec<String>)> {
    if !settings.limits_any() {
        return claim_unlimited(pool, owner, limit, lease).await;
    }
    let mut tx = pool.begin().await?;
    let due: Vec<Claimed> = sqlx::query_as(
        "SELECT email_id, domain, tenant FROM deliveries \
         WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
         ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if due.is_empty() {
        tx.rollback().await?;
        return Ok((vec![], vec![]));
    }
    let mut domains: Vec<String> = due.iter().map(|c| c.domain.clone()).collect::<HashSet<_>>().into_iter().collect();
    domains.sort();
    let limited: Vec<String> = domains
        .iter()
        .filter(|d| {
            let p = settings.policy(d);
            p.per_second > 0 || p.per_minute > 0
        })
        .cloned()
        .chain((settings.max_per_second > 0).then(|| ALL.to_owned()))
        .collect();
    if !limited.is_empty() {
        sqlx::query("INSERT INTO domain_pacing (domain) SELECT * FROM UNNEST($1::text[]) ON CONFLICT DO NOTHING")
            .bind(&limited)
            .execute(&mut *tx)
            .await?;
    }
    let mut locked = domains.clone();
    locked.extend(limited.iter().filter(|d| *d == ALL).cloned());
    // Sorted, so that two instances lock domains in the same order.
    let pacing: Vec<Pacing> = sqlx::query_as(
        "SELECT domain, window_start, started, minute_start, minute_count, held_until, backoff_s \
         FROM domain_pacing WHERE domain = ANY($1) ORDER BY domain FOR UPDATE",
    )
    .bind(&locked)
    .fetch_all(&mut *tx)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *tx).await?;
    let capped: Vec<String> = domains.iter().filter(|d| settings.policy(d).connections > 0).cloned().collect();
    let in_flight: HashMap<String, i64> = if capped.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as(
            "SELECT domain, count(*) FROM deliveries WHERE domain = ANY($1) AND lease_until > now() GROUP BY domain",
        )
        .bind(&capped)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let mut pacing: HashMap<String, Pacing> = pacing.into_iter().map(|p| (p.domain.clone(), p)).collect();
    let throttled: Vec<String> =
        pacing.values().filter(|p| p.backoff_s > 0.0 && p.domain != ALL).map(|p| p.domain.clone()).collect();

    // How many each domain may start now, and until when the rest wait.
    let second = chrono::Duration::seconds(1);
    let minute = chrono::Duration::seconds(60);
    let mut total_left = match pacing.get_mut(ALL) {
        Some(all) => {
            if now >= all.window_start + second {
                (all.window_start, all.started) = (now, 0);
            }
            Some((i64::from(settings.max_per_second) - i64::from(all.started)).max(0))
        }
        None => None,
    };
    let mut taken = Vec::new();
    let mut deferred: Vec<(Uuid, DateTime<Utc>)> = Vec::new();
    for domain in &domains {
        let policy = settings.policy(domain);
        let rows = due.iter().filter(|c| &c.domain == domain);
        let mut left = i64::MAX;
        let mut wait_until = now + chrono::Duration::milliseconds(200);
        if let Some(p) = pacing.get_mut(domain) {
            if let Some(held) = p.held_until.filter(|h| *h > now) {
                left = 0;
                wait_until = held;
            } else {
                if now >= p.window_start + second {
                    (p.window_start, p.started) = (now, 0);
                }
                if now >= p.minute_start + minute {
                    (p.minute_start, p.minute_count) = (now, 0);
                }
                if policy.per_second > 0 {
                    let l = i64::from(policy.per_second) - i64::from(p.started);
                    if l < left {
                        left = l;
                        wait_until = p.window_start + second;
                    }
                }
                if policy.per_minute > 0 {
                    let l = i64::from(policy.per_minute) - i64::from(p.minute_count);
                    if l < left {
                        left = l;
                        wait_until = p.minute_start + minute;
                    }
                }
            }
        }
        if policy.connections > 0 {
            let l = i64::from(policy.connections) - in_flight.get(domain).copied().unwrap_or(0);
            if l < left {
                // A slot frees when a delivery ends; look again shortly.
                left = l;
                wait_until = now + chrono::Duration::milliseconds(200);
            }
        }
        if let Some(total) = total_left
            && total < left
        {
            left = total;
            wait_until = pacing.get(ALL).map_or(now, |a| a.window_start + second);
        }
        let mut n = 0i64;
        for row in rows {
            if n < left.max(0) {
                taken.push(row.clone());
                n += 1;
            } else {
                deferred.push((row.email_id, wait_until));
            }
        }
        if let Some(p) = pacing.get_mut(domain) {
            p.started += n as i32;
            p.minute_count += n as i32;
        }
        if let Some(total) = total_left.as_mut() {
            *total -= n;
        }
        if let Some(all) = pacing.get_mut(ALL) {
            all.started += n as i32;
        }
    }
    let moved: Vec<&Pacing> = pacing.values().filter(|p| limited.contains(&p.domain)).collect();
    if !moved.is_empty() {
        sqlx::query(
            "UPDATE domain_pacing p SET window_start = m.ws, started = m.s, minute_start = m.ms, minute_count = m.mc \
             FROM UNNEST($1::text[], $2::timestamptz[], $3::int[], $4::timestamptz[], $5::int[]) AS m(d, ws, s, ms, mc) \
             WHERE p.domain = m.d",
        )
        .bind(moved.iter().map(|p| p.domain.as_str()).collect::<Vec<_>>())
        .bind(moved.iter().map(|p| p.window_start).collect::<Vec<_>>())
        .bind(moved.iter().map(|p| p.started).collect::<Vec<_>>())
        .bind(moved.iter().map(|p| p.minute_start).collect::<Vec<_>>())
        .bind(moved.iter().map(|p| p.minute_count).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    if !taken.is_empty() {
        sqlx::query("UPDATE deliveries SET lease_owner = $2, lease_until = now() + $3 WHERE email_id = ANY($1)")
            .bind(taken.iter().map(|c| c.email_id).collect::<Vec<_>>())
            .bind(owner)
            .bind(PgInterval::try_from(lease).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
    }
    if !deferred.is_empty() {
        defer(&mut tx, &deferred).await?;
    }
    tx.commit().await?;
    Ok((taken, throttled))
}

/// The claim when no domain has limits: one statement, passing by the domains that are
/// paused after throttling.
async fn claim_unlimited(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> sqlx::Result<(Vec<Claimed>, Vec<String>)> {
    let claimed: Vec<Claimed> = sqlx::query_as(
        "WITH due AS ( \
           SELECT email_id FROM deliveries d \
           WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now()) \
             AND NOT EXISTS (SELECT 1 FROM domain_pacing p WHERE p.domain = d.domain AND p.held_until > now()) \
           ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE deliveries d SET lease_owner = $2, lease_until = now() + $3 \
         FROM due WHERE d.email_id = due.email_id RETURNING d.email_id, d.domain, d.tenant",
    )
    .bind(limit)
    .bind(owner)
    .bind(PgInterval::try_from(lease).unwrap_or_default())
    .fetch_all(pool)
    .await?;
    Ok((claimed, vec![]))
}

/// Moves the due deliveries of every paused domain (not leased) to the end of its
/// pause; returns how many. The claim walks the schedule in due order past the rows of
/// paused domains, so a paused domain's backlog left at the front would cost every
/// claim a walk through all of it (19-27 ms a claim with 100,000 of them, against 0.4
/// without; growing with the backlog) and slow every other domain down with it. Run
/// about once a second while a domain is paused: what a paused domain receives
/// meanwhile is set aside by the next.
pub async fn set_aside_paused(pool: &PgPool) -> sqlx::Result<u64> {
    // Only while a pause lasts: any UPDATE of `due_at`, even of no row, wakes every
    // sender (the schedule's statement trigger).
    let held: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM domain_pacing WHERE held_until > now())")
        .fetch_one(pool)
        .await?;
    if !held {
        return Ok(0);
    }
    let moved = sqlx::query(
        "UPDATE deliveries d SET due_at = p.held_until FROM domain_pacing p \
         WHERE p.held_until > now() AND d.domain = p.domain AND d.due_at < p.held_until \
           AND (d.lease_until IS NULL OR d.lease_until < now())",
    )
    .execute(pool)
    .await?;
    Ok(moved.rows_affected())
}

/// Domains paused now or lately (their next success lifts the pause).
pub async fn throttled(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT domain FROM domain_pacing WHERE backoff_s > 0").fetch_all(pool).await
}

async fn defer(tx: &mut PgConnection, rows: &[(Uuid, DateTime<Utc>)]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE deliveries d SET due_at = m.due FROM UNNEST($1::uuid[], $2::timestamptz[]) AS m(id, due) \
         WHERE d.email_id = m.id",
    )
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// Whether a transient refusal says the receiver is busy with us (rather than, say, a
/// full mailbox): 421, or a 4xx whose text says so.
pub fn is_throttle(code: Option<u16>, text: &str) -> bool {
    const WORDS: &[&str] =
        &["too many", "rate limit", "ratelimit", "rate-limit", "throttl", "exceeded", "slow down", "busy"];
    match code {
        Some(421) => true,
        Some(c) if (400..500).contains(&c) => {
            let text = text.to_ascii_lowercase();
            WORDS.iter().any(|w| text.contains(w))
        }
        _ => false,
    }
}

/// Pauses `domain` after it throttled: `first` the first time, doubled at each throttle
/// that comes after the pause ended, at most `max`. Returns the pause.
pub async fn throttle(pool: &PgPool, domain: &str, first: Duration, max: Duration) -> sqlx::Result<f64> {
    sqlx::query_scalar(
        "INSERT INTO domain_pacing (domain, held_until, backoff_s) VALUES ($1, now() + make_interval(secs => $2), $2) \
         ON CONFLICT (domain) DO UPDATE SET \
           backoff_s = least(greatest(domain_pacing.backoff_s * 2, $2), $3), \
           held_until = now() + make_interval(secs => least(greatest(domain_pacing.backoff_s * 2, $2), $3)) \
         WHERE domain_pacing.held_until IS NULL OR domain_pacing.held_until < now() \
         RETURNING backoff_s",
    )
    .bind(domain)
    .bind(first.as_secs_f64())
    .bind(max.as_secs_f64())
    .fetch_optional(pool)
    .await
    .map(|b| b.unwrap_or(0.0))
}

/// A domain that took a message is no longer throttled: its pause is lifted, and what
/// [`set_aside_paused`] moved to the pause's end (due exactly then) is due now again.
pub async fn recovered(pool: &PgPool, domain: &str) -> sqlx::Result<()> {
    sqlx::query(
        "WITH lifted AS ( \
           UPDATE domain_pacing p SET backoff_s = 0, held_until = NULL \
           FROM (SELECT held_until AS was FROM domain_pacing WHERE domain = $1) o \
           WHERE p.domain = $1 AND p.backoff_s > 0 RETURNING o.was) \
         UPDATE deliveries d SET due_at = now() FROM lifted \
         WHERE d.domain = $1 AND lifted.was > now() AND d.due_at = lifted.was",
    )
    .bind(domain)
    .execute(pool)
    .await?;
    Ok(())
}

/// One line of `mailledger status`'s busiest domains.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct DomainLoad {
    /// The recipient domain.
    pub domain: String,
    /// On the schedule.
    pub scheduled: i64,
    /// Due now.
    pub due: i64,
    /// Being sent.
    pub in_flight: i64,
    /// Paused after throttling us, until then.
    pub held_until: Option<DateTime<Utc>>,
}

/// The `limit` domains with the most deliveries scheduled, and every paused one.
pub async fn busiest(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<DomainLoad>> {
    sqlx::query_as(
        "WITH load AS ( \
           SELECT domain, count(*) AS scheduled, count(*) FILTER (WHERE due_at <= now()) AS due, \
             count(*) FILTER (WHERE lease_until > now()) AS in_flight \
           FROM deliveries GROUP BY domain ORDER BY count(*) DESC LIMIT $1) \
         SELECT coalesce(l.domain, p.domain) AS domain, coalesce(l.scheduled, 0) AS scheduled, \
           coalesce(l.due, 0) AS due, coalesce(l.in_flight, 0) AS in_flight, p.held_until \
         FROM load l FULL JOIN (SELECT domain, held_until FROM domain_pacing WHERE held_until > now()) p \
           ON p.domain = l.domain \
         ORDER BY 2 DESC, 1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deliveries due now per domain (for the queued gauge).
pub async fn queued(pool: &PgPool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT domain, count(*) FROM deliveries WHERE due_at <= now() GROUP BY domain")
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_are_told_from_other_refusals() {
        assert!(is_throttle(Some(421), "4.7.0 closing"));
        assert!(is_throttle(Some(451), "4.7.28 too many messages from your IP"));
        assert!(is_throttle(Some(450), "4.7.0 Rate limit exceeded"));
        assert!(!is_throttle(Some(451), "4.3.0 try again later"));
        assert!(!is_throttle(Some(452), "4.2.2 mailbox full"));
        assert!(!is_throttle(Some(550), "too many recipients"));
        assert!(!is_throttle(None, "connection refused"));
    }
}
