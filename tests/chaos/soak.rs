//! `make soak`: one instance under a steady rate for `SOAK_MINUTES` (30), against the
//! same servers of its own as the chaos run. Every `SOAK_SAMPLE_SECS` (30; less in a soak
//! under ten minutes) it samples
//! the service's RSS, file descriptors and sockets, PostgreSQL's connections and
//! database size, the JetStream store, Redis's memory, the projections' lag and the
//! publish → `Sent` latency of the emails sent since the last sample; prints them as a
//! table and writes `target/soak/report.json`. Exits non-zero when an email published
//! was not sent exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use uuid::Uuid;

use crate::rig::{self, Instance, Nats, Postgres, Redis, Wiring};
use crate::{Command, env_num, publish, valid_payload, watcher_pool};

#[derive(Debug, Serialize)]
struct Sample {
    t_s: f64,
    published: usize,
    sent: i64,
    rss_mib: f64,
    fds: usize,
    sockets: usize,
    pg_connections: i64,
    db_mib: f64,
    events: i64,
    nats_store_mib: f64,
    commands_pending: u64,
    commands_mib: f64,
    events_stream_msgs: u64,
    events_stream_mib: f64,
    redis_mib: f64,
    lag_events: i64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
}

pub async fn run() -> i32 {
    let minutes: f64 = env_num("SOAK_MINUTES").unwrap_or(30.0);
    let rate: f64 = env_num("SOAK_RATE").unwrap_or(50.0);
    // About twenty samples in a short soak, one every 30 s in a long one.
    let every = Duration::from_secs_f64(env_num("SOAK_SAMPLE_SECS").unwrap_or((minutes * 3.0).clamp(5.0, 30.0)));
    let out = crate::target_dir().join("soak");
    std::fs::create_dir_all(&out).unwrap();
    let _ = std::fs::remove_dir_all(out.join("logs"));
    let n = (minutes * 60.0 * rate) as usize;
    eprintln!(
        "soak: {minutes} min at {rate}/s ({n} emails), a sample every {every:?}; binary {}",
        rig::binary().display()
    );

    let pg = Postgres::start();
    let nats = Nats::start();
    let redis = Redis::start();
    let sink = crate::smtp::SmtpSink::start().await;
    let database_url = pg.url("soak");
    let admin = watcher_pool(&pg.url("postgres")).await;
    sqlx::query("CREATE DATABASE soak").execute(&admin).await.unwrap();
    let run = crate::Run {
        emails: n,
        rate,
        outage: Duration::ZERO,
        settle: Duration::ZERO,
        only: vec![],
        reduced: false,
        out: out.clone(),
    };
    let wiring = Wiring {
        database_url: database_url.clone(),
        nats_url: nats.url(),
        redis_url: redis.url(),
        smtp_url: sink.url(),
        logs: out.join("logs"),
        extra: crate::settings(&run),
    };
    let key = rig::make_key(&wiring, "soak");
    let instance = Instance::start(&wiring, "soak").await;
    let pool = watcher_pool(&database_url).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bearer = format!("Bearer {key}");
    let cmds: Vec<Command> = (0..n)
        .map(|i| {
            let k = format!("soak-{i}");
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", k.as_str());
            headers.insert("Authorization", bearer.as_str());
            Command { payload: valid_payload(&k, i), headers, valid: Some(mailledger::command::email_id_for_key(&k)) }
        })
        .collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let published_at = Arc::new(Mutex::new(HashMap::with_capacity(n)));
    let started = Instant::now();
    let publisher =
        publish(js.clone(), "mail.commands.create".into(), cmds, rate, acked.clone(), Some(published_at.clone()));
    let redis_client = redis::Client::open(redis.url()).unwrap();
    let mut redis_conn = redis_client.get_multiplexed_async_connection().await.unwrap();

    let mut samples: Vec<Sample> = Vec::new();
    let mut last_position = 0i64;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = publisher.is_finished();
        // Latency of the emails sent since the last sample, from their publish.
        let sent_now: Vec<(i64, Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT position, aggregate_id::uuid, recorded_at FROM events \
             WHERE event_type = 'Sent' AND position > $1 ORDER BY position",
        )
        .bind(last_position)
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        last_position = sent_now.last().map_or(last_position, |s| s.0);
        let mut lat: Vec<f64> = {
            let map = published_at.lock().unwrap();
            sent_now
                .iter()
                .filter_map(|(_, id, at)| Some((*at - *map.get(id)?).num_microseconds()? as f64 / 1000.0))
                .collect()
        };
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
        let scalar = |sql: &'static str| {
            let pool = pool.clone();
            async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.unwrap_or(-1) }
        };
        let stream = |name: &'static str| {
            let js = js.clone();
            async move {
                match js.get_stream(name).await {
                    Ok(mut s) => {
                        s.info().await.map_or((0, 0.0), |i| (i.state.messages, i.state.bytes as f64 / 1048576.0))
                    }
                    Err(_) => (0, 0.0),
                }
            }
        };
        let (commands_pending, commands_mib) = stream("MAILLEDGER_COMMANDS").await;
        let (events_stream_msgs, events_stream_mib) = stream("MAILLEDGER_EVENTS").await;
        let info: String = redis::cmd("INFO").arg("memory").query_async(&mut redis_conn).await.unwrap_or_default();
        let redis_bytes: f64 = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        let (fds, sockets) = instance.fds();
        let lag = crate::projections_lag(&pool).await;
        let s = Sample {
            t_s: started.elapsed().as_secs_f64(),
            published: acked.load(Ordering::Relaxed),
            sent: scalar("SELECT count(*) FROM events WHERE event_type = 'Sent'").await,
            rss_mib: instance.rss_mib(),
            fds,
            sockets,
            pg_connections: scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = 'soak'").await,
            db_mib: scalar("SELECT pg_database_size('soak')").await as f64 / 1048576.0,
            events: scalar("SELECT count(*) FROM events").await,
            nats_store_mib: nats.store_bytes() as f64 / 1048576.0,
            commands_pending,
            commands_mib,
            events_stream_msgs,
            events_stream_mib,
            redis_mib: redis_bytes / 1048576.0,
            lag_events: lag,
            latency_p50_ms: pct(0.5),
            latency_p99_ms: pct(0.99),
        };
        eprintln!(
            "soak: {:>6.0} s  published {:>7}  sent {:>7}  rss {:>6.1} MiB  fds {:>4} (sockets {:>3})  pg conns {:>3}  db {:>7.1} MiB  nats {:>7.1} MiB (commands {:>5.1}, events {:>6.1})  redis {:>6.1} MiB  lag {:>5}  p50 {:>6.0} ms  p99 {:>6.0} ms",
            s.t_s,
            s.published,
            s.sent,
            s.rss_mib,
            s.fds,
            s.sockets,
            s.pg_connections,
            s.db_mib,
            s.nats_store_mib,
            s.commands_mib,
            s.events_stream_mib,
            s.redis_mib,
            s.lag_events,
            s.latency_p50_ms,
            s.latency_p99_ms
        );
        let settled = done && s.sent >= n as i64;
        samples.push(s);
        std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&samples).unwrap()).unwrap();
        if settled || started.elapsed() > Duration::from_secs_f64(minutes * 60.0 + 600.0) {
            break;
        }
    }

    // Exactly once: every email one Requested, one Persisted, one Sent.
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events WHERE aggregate_type = 'Email' \
         GROUP BY aggregate_id HAVING count(*) FILTER (WHERE event_type = 'Requested') <> 1 \
           OR count(*) FILTER (WHERE event_type = 'Persisted') <> 1 \
           OR count(*) FILTER (WHERE event_type = 'Sent') <> 1) w",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let emails: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Email'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let exit = instance.stop();
    let summary = summarise(&samples);
    let report = serde_json::json!({
        "minutes": minutes, "rate": rate, "emails": n, "published": acked.load(Ordering::Relaxed),
        "emails_in_ledger": emails, "emails_not_exactly_once": wrong, "exit_code": exit,
        "summary": summary, "samples": samples,
    });
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nsoak: {minutes} min at {rate}/s: {emails} emails, {wrong} not exactly once; exit code {exit:?}");
    for line in &summary {
        println!("  {line}");
    }
    println!("report: {}", out.join("report.json").display());
    if wrong != 0 || emails != n as i64 || exit != Some(0) { 1 } else { 0 }
}

/// Each series: its first sample after the first quarter (warm-up), its last, and its
/// highest, so "flat" can be read at a glance.
fn summarise(samples: &[Sample]) -> Vec<String> {
    if samples.is_empty() {
        return vec![];
    }
    let from = samples.len() / 4;
    type Series = (&'static str, fn(&Sample) -> f64);
    let series: [Series; 11] = [
        ("rss_mib", |s| s.rss_mib),
        ("fds", |s| s.fds as f64),
        ("sockets", |s| s.sockets as f64),
        ("pg_connections", |s| s.pg_connections as f64),
        ("redis_mib", |s| s.redis_mib),
        ("nats_store_mib", |s| s.nats_store_mib),
        ("commands_mib", |s| s.commands_mib),
        ("events_stream_mib", |s| s.events_stream_mib),
        ("db_mib", |s| s.db_mib),
        ("lag_events", |s| s.lag_events as f64),
        ("latency_p99_ms", |s| s.latency_p99_ms),
    ];
    series
        .iter()
        .map(|(name, f)| {
            let after_warmup = f(&samples[from]);
            let last = f(samples.last().unwrap());
            let max = samples[from..].iter().map(f).fold(f64::NAN, f64::max);
            format!("{name:<18} after warm-up {after_warmup:>9.1}   last {last:>9.1}   max {max:>9.1}")
        })
        .collect()
}
