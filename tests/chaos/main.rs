//! `make chaos`: the fault matrix of issue #16 against servers this program starts
//! itself — a PostgreSQL cluster, nats-server, redis-server, an SMTP sink and the real
//! `mailledger serve` binary as child processes it can SIGKILL, stop and freeze.
//!
//! Each scenario gets a fresh database, NATS and Redis, publishes `CHAOS_EMAILS` emails
//! (default 10,000 under `make chaos`) over NATS JetStream at `CHAOS_RATE` a second with
//! an API key, injects its fault once a third of them are in the ledger, heals it, waits
//! until every email is `Sent` and every projection has caught up, and then counts, per
//! email, its `Requested`, `Persisted` and `Sent` events, the messages the SMTP sink
//! took (by `Message-ID`), the `emails` row and the Redis view. It prints a table, writes
//! `target/chaos/report.json`, and exits non-zero on any lost or duplicated event (or a
//! lost send, a wrong read model or view, a panic, a dead letter of a valid email).
//!
//! Run by `cargo test --all-targets` (a `harness = false` target) it does a reduced run
//! (`CHAOS_EMAILS` unset: 300 emails a scenario, 3 s outages, short ack wait and lease).
//! `cargo test --test chaos -- kill postgres` (or `CHAOS_ONLY=kill,postgres`) runs the
//! scenarios whose names hold one of the words; `cargo test --test chaos -- soak` is
//! `make soak` (see soak.rs).

#[path = "../suite/support/pg.rs"]
mod pg;
#[path = "../suite/support/smtp.rs"]
mod smtp;

mod rig;
mod soak;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use rig::{Instance, Nats, Postgres, Redis, Wiring};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// How a run is sized, from the environment.
#[derive(Clone, Debug)]
pub struct Run {
    pub emails: usize,
    /// Publishes a second.
    pub rate: f64,
    /// How long a server stays down, stopped or frozen.
    pub outage: Duration,
    /// Longest wait for a scenario to settle after its fault.
    pub settle: Duration,
    /// Scenarios whose name contains one of these (all when empty).
    pub only: Vec<String>,
    pub reduced: bool,
    pub out: PathBuf,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Run {
    fn from_env(args: &[String]) -> Run {
        let reduced = std::env::var("CHAOS_EMAILS").is_err();
        // `cargo test kill` runs the scenarios whose name holds `kill`; a filter no
        // scenario matches (`cargo test delivery::`) runs none.
        let filters: Vec<String> = args.iter().filter(|a| !a.starts_with('-')).cloned().collect();
        let only = std::env::var("CHAOS_ONLY")
            .map(|s| s.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect())
            .unwrap_or(filters);
        Run {
            emails: env_num("CHAOS_EMAILS").unwrap_or(300),
            rate: env_num("CHAOS_RATE").unwrap_or(if reduced { 200.0 } else { 1000.0 }),
            outage: Duration::from_secs_f64(env_num("CHAOS_OUTAGE_SECS").unwrap_or(if reduced { 3.0 } else { 10.0 })),
            settle: Duration::from_secs(env_num("CHAOS_SETTLE_SECS").unwrap_or(900)),
            only,
            reduced,
            out: target_dir().join("chaos"),
        }
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Nothing: the control.
    None,
    /// SIGKILL the service this many times, restarting it each time.
    Kill(usize),
    /// `pg_ctl stop -m fast` / `-m immediate`, then start again.
    Postgres(&'static str),
    /// SIGKILL nats-server, start it again on the same store.
    NatsKill,
    /// Kill redis-server; start an empty one on the same port.
    RedisDown,
    /// SIGSTOP redis-server, then SIGCONT.
    RedisFrozen,
    /// The SMTP server closes its listener and every connection, then comes back.
    SmtpDown,
    /// Two instances share the work; one is SIGKILLed and not restarted.
    Instances,
    /// Poison commands mixed into the valid ones (every tenth is poison).
    Poison,
}

const SCENARIOS: &[(&str, Fault)] = &[
    ("baseline", Fault::None),
    ("kill_once", Fault::Kill(1)),
    ("kill_thrice", Fault::Kill(3)),
    ("postgres_stop_fast", Fault::Postgres("fast")),
    ("postgres_crash", Fault::Postgres("immediate")),
    ("nats_kill", Fault::NatsKill),
    ("redis_down", Fault::RedisDown),
    ("redis_frozen", Fault::RedisFrozen),
    ("smtp_down", Fault::SmtpDown),
    ("instances_one_killed", Fault::Instances),
    ("poison_mixed", Fault::Poison),
];

/// One row of `target/chaos/report.json`.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    scenario: String,
    /// Valid emails whose publish JetStream acknowledged.
    published: usize,
    /// Expected `Requested` / `Persisted` / `Sent` events missing.
    events_lost: usize,
    /// Extra `Requested` / `Persisted` / `Sent` events (more than one of a kind).
    events_duplicated: usize,
    /// Messages the SMTP sink took more than once (same `Message-ID`).
    sends_duplicated: usize,
    /// Valid emails the SMTP sink never took.
    sends_lost: usize,
    /// From the fault healed (the server back, the killed service restarted) until every
    /// email was `Sent` and every projection had caught up.
    recovery_s: f64,
    /// From the fault healed until the ledger committed its next event.
    resumed_s: f64,
    /// From the fault healed until every email was in the ledger (`Persisted`), and
    /// until every one was `Sent` (the rest of `recovery_s` is the projections).
    stored_s: f64,
    sent_s: f64,
    /// The whole scenario, first publish to settled.
    elapsed_s: f64,
    /// `elapsed_s` beyond the baseline's in the same run: what the fault cost, backlog
    /// included (when the publisher outruns delivery, `recovery_s` is mostly backlog).
    cost_s: Option<f64>,
    /// Poison commands published, and dead letters in the DLQ stream.
    poison: usize,
    dead_letters: u64,
    /// Valid emails with a `DeadLettered` event.
    dead_lettered: usize,
    /// Emails in the ledger nobody published (e.g. poison that got in).
    unexpected_emails: usize,
    /// `emails` rows missing, not `sent`, or behind the events.
    read_model_mismatches: usize,
    /// Redis views present but behind the events or not `sent`.
    redis_stale: usize,
    /// Redis views absent (reads fall back to PostgreSQL and refill them).
    redis_missing: usize,
    /// Of those (up to 100), views still absent after a REST read of the email.
    redis_not_refilled: usize,
    /// Emails read back over REST (a sample) that did not answer 200 `sent`.
    rest_read_failures: usize,
    /// `Failed` events (attempts the SMTP outage cost).
    failed_attempts: usize,
    /// Panics in the service logs, and instances that did not exit 0 on SIGTERM.
    panics: usize,
    unclean_exits: usize,
    timed_out: bool,
    notes: String,
}

impl Report {
    fn ok(&self) -> bool {
        self.events_lost == 0
            && self.events_duplicated == 0
            && self.sends_lost == 0
            && self.dead_lettered == 0
            && self.unexpected_emails == 0
            && self.read_model_mismatches == 0
            && self.redis_stale == 0
            && self.redis_not_refilled == 0
            && self.rest_read_failures == 0
            && self.panics == 0
            && self.unclean_exits == 0
            && !self.timed_out
            && self.dead_letters == self.poison as u64
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --all-targets -- --list` and friends: nothing to list.
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if args.iter().any(|a| a == "soak") {
        std::process::exit(soak::run().await);
    }
    let run = Run::from_env(&args);
    std::fs::create_dir_all(&run.out).unwrap();
    let _ = std::fs::remove_dir_all(run.out.join("logs"));
    eprintln!(
        "chaos: {} emails a scenario at {}/s, outages of {:?}{}; binary {}; {}",
        run.emails,
        run.rate,
        run.outage,
        if run.reduced { " (reduced run: set CHAOS_EMAILS for the full one)" } else { "" },
        rig::binary().display(),
        rig::nats_version(),
    );
    let chosen =
        SCENARIOS.iter().filter(|(name, _)| run.only.is_empty() || run.only.iter().any(|o| name.contains(o.as_str())));
    if chosen.count() == 0 {
        eprintln!("chaos: no scenario matches {:?}", run.only);
        return;
    }
    let pg = Postgres::start();
    let mut reports = Vec::new();
    for (name, fault) in SCENARIOS {
        if !run.only.is_empty() && !run.only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        eprintln!("chaos: {name} …");
        let report = scenario(&run, &pg, name, *fault).await;
        eprintln!(
            "chaos: {name}: published {}, lost {}, duplicated {}, sends duplicated {}, recovery {:.1} s{}",
            report.published,
            report.events_lost,
            report.events_duplicated,
            report.sends_duplicated,
            report.recovery_s,
            if report.ok() { "" } else { "  FAILED" }
        );
        reports.push(report);
        std::fs::write(run.out.join("report.json"), serde_json::to_string_pretty(&reports).unwrap()).unwrap();
    }
    if let Some(base) = reports.iter().find(|r| r.scenario == "baseline").map(|r| r.elapsed_s) {
        for r in &mut reports {
            r.cost_s = Some(r.elapsed_s - base);
        }
        std::fs::write(run.out.join("report.json"), serde_json::to_string_pretty(&reports).unwrap()).unwrap();
    }
    print_table(&reports);
    println!("report: {}", run.out.join("report.json").display());
    if reports.iter().any(|r| !r.ok()) {
        eprintln!(
            "chaos: FAILED: {}",
            reports.iter().filter(|r| !r.ok()).map(|r| r.scenario.as_str()).collect::<Vec<_>>().join(", ")
        );
        std::process::exit(1);
    }
}

fn print_table(reports: &[Report]) {
    println!(
        "\n{:<22} {:>9} {:>6} {:>5} {:>9} {:>10} {:>9} {:>8} {:>6} {:>6} {:>4}  notes",
        "scenario",
        "published",
        "lost",
        "dup",
        "sends_dup",
        "recovery_s",
        "resumed_s",
        "stored_s",
        "sent_s",
        "cost_s",
        "ok"
    );
    for r in reports {
        println!(
            "{:<22} {:>9} {:>6} {:>5} {:>9} {:>10.1} {:>9.1} {:>8.1} {:>6.1} {:>6} {:>4}  {}",
            r.scenario,
            r.published,
            r.events_lost,
            r.events_duplicated,
            r.sends_duplicated,
            r.recovery_s,
            r.resumed_s,
            r.stored_s,
            r.sent_s,
            r.cost_s.map_or("-".to_owned(), |c| format!("{c:.1}")),
            if r.ok() { "yes" } else { "NO" },
            r.notes
        );
    }
}

pub fn valid_payload(key: &str, i: usize) -> Vec<u8> {
    serde_json::json!({
        "from": "chaos@example.com",
        "to": format!("rcpt{}@example.org", i % 50),
        "subject": format!("Chaos message {i}"),
        "message": format!("Hello, this is chaos message {i}."),
        "idempotency_key": key,
    })
    .to_string()
    .into_bytes()
}

/// The `Message-ID` the service gives an email from `chaos@example.com`.
pub fn message_id(id: Uuid) -> String {
    format!("<{}@example.com>", id.simple())
}

/// One command to publish: its bytes, its headers, and the email id when it is valid.
pub struct Command {
    pub payload: Vec<u8>,
    pub headers: HeaderMap,
    pub valid: Option<Uuid>,
}

fn commands(scenario: &str, n: usize, key: &str, poison: bool) -> Vec<Command> {
    let bearer = format!("Bearer {key}");
    (0..n)
        .map(|i| {
            let k = format!("{scenario}-{i}");
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", k.as_str());
            headers.insert("Authorization", bearer.as_str());
            if !poison || i % 10 != 5 {
                if poison && i % 10 == 7 {
                    // Hostile but valid: control characters in the correlation header
                    // are stripped, the email is stored.
                    headers.insert("X-Request-Id", "chaos\u{1b}[31m\u{0}id");
                }
                return Command { payload: valid_payload(&k, i), headers, valid: Some(mailledger::command::email_id_for_key(&k)) };
            }
            let payload = match (i / 10) % 4 {
                // NUL in the body: refused by name.
                0 => serde_json::json!({"from":"chaos@example.com","to":"a@example.org","subject":"x","message":"a\u{0}b","idempotency_key":k}).to_string().into_bytes(),
                // Not JSON.
                1 => b"{\"from\": \"chaos@example.com\", \"to\": ".to_vec(),
                // No recipient.
                2 => serde_json::json!({"from":"chaos@example.com","subject":"x","message":"y","idempotency_key":k}).to_string().into_bytes(),
                // A wrong key (nats.require_key is on).
                _ => {
                    headers.insert("Authorization", "Bearer mlk_not-a-key");
                    valid_payload(&k, i)
                }
            };
            Command { payload, headers, valid: None }
        })
        .collect()
}

/// When each valid email was published (for the soak's latency).
pub type PublishedAt = Arc<std::sync::Mutex<HashMap<Uuid, chrono::DateTime<chrono::Utc>>>>;

/// Publishes every command at `rate` a second, up to 256 awaiting their ack, each
/// retried (same `Nats-Msg-Id`) until JetStream acknowledges it; counts the acks.
pub fn publish(
    js: async_nats::jetstream::Context,
    subject: String,
    commands: Vec<Command>,
    rate: f64,
    acked: Arc<AtomicUsize>,
    published_at: Option<PublishedAt>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tasks = tokio::task::JoinSet::new();
        for c in commands {
            tick.tick().await;
            let permit = permits.clone().acquire_owned().await.unwrap();
            let (js, subject, acked, published_at) = (js.clone(), subject.clone(), acked.clone(), published_at.clone());
            tasks.spawn(async move {
                if let (Some(map), Some(id)) = (&published_at, c.valid) {
                    map.lock().unwrap().insert(id, chrono::Utc::now());
                }
                loop {
                    let sent =
                        js.publish_with_headers(subject.clone(), c.headers.clone(), c.payload.clone().into()).await;
                    if let Ok(ack) = sent
                        && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), ack).await
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                if c.valid.is_some() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    })
}

pub async fn watcher_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .expect("the chaos database")
}

async fn count(pool: &PgPool, kind: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Email' AND event_type = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .ok()
}

async fn max_position(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(pool).await.ok()
}

/// Projections behind the newest committed event (0: all caught up).
pub async fn projections_behind(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM projection_checkpoints c, \
           (SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1) AS head \
         WHERE (c.txid, c.position) < (head.txid, head.position)",
    )
    .fetch_one(pool)
    .await
    .ok()
}

/// How far the slowest projection is behind the newest event, in positions.
pub async fn projections_lag(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(h.position - c.position), 0)::bigint FROM projection_checkpoints c, \
           (SELECT coalesce(max(position), 0) AS position FROM events) h",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(-1)
}

/// Waits until `kind` events reach `n` (PostgreSQL is up while it waits).
async fn until_events(pool: &PgPool, kind: &str, n: usize) {
    loop {
        if count(pool, kind).await.unwrap_or(0) >= n as i64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn recreate_database(pg: &Postgres, name: &str) -> String {
    let admin = watcher_pool(&pg.url("postgres")).await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    pg.url(name)
}

/// Settings every chaos instance runs with: the key required on NATS, a short back-off
/// with enough attempts to outlast an outage (an SMTP outage must not dead-letter), and
/// in a reduced run a short ack wait and lease so a SIGKILL costs seconds, not a minute.
pub fn settings(run: &Run) -> Vec<(String, String)> {
    let mut s: Vec<(String, String)> = vec![
        ("MAILLEDGER__NATS__REQUIRE_KEY".into(), "true".into()),
        ("MAILLEDGER_DELIVERY_BACKOFF".into(), "1s,2s,4s".into()),
        ("MAILLEDGER_DELIVERY_MAX_ATTEMPTS".into(), "100".into()),
        ("MAILLEDGER__DELIVERY__POLL_INTERVAL".into(), "200ms".into()),
    ];
    if run.reduced {
        s.push(("MAILLEDGER__NATS__ACK_WAIT".into(), "5s".into()));
        s.push(("MAILLEDGER__DELIVERY__LEASE".into(), "10s".into()));
    }
    // The operator's own overrides win.
    s.retain(|(k, _)| std::env::var_os(k).is_none());
    s
}

async fn scenario(run: &Run, pg: &Postgres, name: &str, fault: Fault) -> Report {
    let database_url = recreate_database(pg, &format!("chaos_{name}")).await;
    let mut nats = Nats::start();
    let mut redis = Redis::start();
    let mut sink = smtp::SmtpSink::start().await;
    let wiring = Wiring {
        database_url: database_url.clone(),
        nats_url: nats.url(),
        redis_url: redis.url(),
        smtp_url: sink.url(),
        logs: run.out.join("logs").join(name),
        extra: settings(run),
    };
    let key = rig::make_key(&wiring, "chaos");
    let mut instances = vec![Instance::start(&wiring, "a").await];
    if fault == Fault::Instances {
        // Three instances share intake, projections (one leader each), delivery and
        // webhooks; the one killed may lead any of them.
        instances.push(Instance::start(&wiring, "b").await);
        instances.push(Instance::start(&wiring, "c").await);
    }
    let pool = watcher_pool(&database_url).await;
    let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(nats.url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let cmds = commands(name, run.emails, &key, fault == Fault::Poison);
    let valid: Vec<Uuid> = cmds.iter().filter_map(|c| c.valid).collect();
    let poison = cmds.len() - valid.len();
    let acked = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let publisher = publish(js.clone(), "mail.commands.create".into(), cmds, run.rate, acked.clone(), None);

    // The fault, once a third of the emails are in the ledger.
    let third = valid.len() / 3;
    let mut notes = Vec::new();
    let mut healed = started;
    match fault {
        Fault::None | Fault::Poison => {}
        Fault::Kill(times) => {
            for k in 0..times {
                until_events(&pool, "Requested", valid.len() * (k + 1) / (times + 1)).await;
                instances.pop().unwrap().kill();
                instances.push(Instance::start(&wiring, &format!("a{}", k + 2)).await);
                healed = Instant::now();
            }
        }
        Fault::Postgres(mode) => {
            until_events(&pool, "Requested", third).await;
            pg.stop(mode);
            tokio::time::sleep(run.outage).await;
            pg.restart();
            healed = Instant::now();
        }
        Fault::NatsKill => {
            until_events(&pool, "Requested", third).await;
            nats.kill();
            tokio::time::sleep(run.outage).await;
            nats.restart();
            healed = Instant::now();
        }
        Fault::RedisDown => {
            until_events(&pool, "Requested", third).await;
            redis.kill();
            tokio::time::sleep(run.outage).await;
            redis.restart();
            healed = Instant::now();
        }
        Fault::RedisFrozen => {
            until_events(&pool, "Requested", third).await;
            redis.freeze();
            tokio::time::sleep(run.outage).await;
            redis.thaw();
            healed = Instant::now();
        }
        Fault::SmtpDown => {
            until_events(&pool, "Sent", third).await;
            sink.stop();
            tokio::time::sleep(run.outage).await;
            sink.restart().await;
            healed = Instant::now();
        }
        Fault::Instances => {
            until_events(&pool, "Requested", third).await;
            instances.remove(0).kill();
            healed = Instant::now();
            notes.push("instance a of three SIGKILLed, b and c carried on".to_owned());
        }
    }
    let healed_at_position = loop {
        if let Some(p) = max_position(&pool).await {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Settled: everything published, every valid email Sent, every projection caught up.
    let (mut resumed, mut stored, mut all_sent) = (None, None, None);
    let mut timed_out = false;
    loop {
        if resumed.is_none() && max_position(&pool).await.is_some_and(|p| p > healed_at_position) {
            resumed = Some(healed.elapsed());
        }
        if stored.is_none() && count(&pool, "Persisted").await.is_some_and(|n| n >= valid.len() as i64) {
            stored = Some(healed.elapsed());
        }
        let sent: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Email' AND event_type = 'Sent'",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        if all_sent.is_none() && sent >= valid.len() as i64 {
            all_sent = Some(healed.elapsed());
        }
        if publisher.is_finished()
            && sent >= valid.len() as i64
            && projections_behind(&pool).await == Some(0)
            && sqlx::query_scalar::<_, i64>("SELECT count(*) FROM emails WHERE status = 'sent'")
                .fetch_one(&pool)
                .await
                .is_ok_and(|n| n >= valid.len() as i64)
        {
            break;
        }
        if healed.elapsed() > run.settle {
            timed_out = true;
            notes.push(format!("not settled after {:?}: {sent} of {} sent", run.settle, valid.len()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovery = healed.elapsed();
    let elapsed = started.elapsed();
    publisher.abort();

    let mut report = verify(&pool, &valid, &sink, &redis, &js, &instances, &key).await;
    report.scenario = name.to_owned();
    report.published = acked.load(Ordering::Relaxed);
    report.poison = poison;
    report.recovery_s = recovery.as_secs_f64();
    report.resumed_s = resumed.unwrap_or(recovery).as_secs_f64();
    report.elapsed_s = elapsed.as_secs_f64();
    report.stored_s = stored.unwrap_or(recovery).as_secs_f64();
    report.sent_s = all_sent.unwrap_or(recovery).as_secs_f64();
    report.timed_out = timed_out;
    for i in instances {
        let name = i.name.clone();
        if i.stop() != Some(0) {
            report.unclean_exits += 1;
            notes.push(format!("instance {name} did not exit 0 on SIGTERM"));
        }
    }
    report.panics = count_in_logs(&wiring.logs, "panicked");
    if report.redis_missing > 0 {
        notes.push(format!(
            "{} views not in Redis after the restart, {} of them still not after a REST read",
            report.redis_missing, report.redis_not_refilled
        ));
    }
    if report.failed_attempts > 0 {
        notes.push(format!("{} failed attempts retried", report.failed_attempts));
    }
    if poison > 0 {
        notes.push(format!("{poison} poison, {} dead letters", report.dead_letters));
    }
    report.notes = notes.join("; ");
    pool.close().await;
    report
}

fn count_in_logs(dir: &std::path::Path, needle: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default().matches(needle).count())
                .sum()
        })
        .unwrap_or(0)
}

async fn verify(
    pool: &PgPool,
    valid: &[Uuid],
    sink: &smtp::SmtpSink,
    redis: &Redis,
    js: &async_nats::jetstream::Context,
    instances: &[Instance],
    key: &str,
) -> Report {
    let mut r = Report::default();
    // Events per email and kind.
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT aggregate_id::uuid, event_type, count(*) FROM events WHERE aggregate_type = 'Email' GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut kinds: HashMap<Uuid, HashMap<String, i64>> = HashMap::new();
    for (id, kind, n) in rows {
        kinds.entry(id).or_default().insert(kind, n);
    }
    let expected: HashSet<Uuid> = valid.iter().copied().collect();
    r.unexpected_emails = kinds.keys().filter(|id| !expected.contains(id)).count();
    for id in valid {
        let k = kinds.get(id);
        for kind in ["Requested", "Persisted", "Sent"] {
            let n = k.and_then(|k| k.get(kind)).copied().unwrap_or(0);
            if n == 0 {
                r.events_lost += 1;
            }
            r.events_duplicated += (n.max(1) - 1) as usize;
        }
        r.dead_lettered += usize::from(k.is_some_and(|k| k.contains_key("DeadLettered")));
        r.failed_attempts += k.and_then(|k| k.get("Failed")).copied().unwrap_or(0) as usize;
    }
    let total = |id: &Uuid| kinds.get(id).map_or(0, |k| k.values().sum::<i64>());

    // What the SMTP server took.
    let mut taken: HashMap<String, usize> = HashMap::new();
    for m in sink.delivered() {
        *taken.entry(m.header("Message-ID").unwrap_or_default()).or_default() += 1;
    }
    for id in valid {
        match taken.get(&message_id(*id)) {
            None => r.sends_lost += 1,
            Some(n) => r.sends_duplicated += n - 1,
        }
    }

    // The read model.
    let rows: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT id, status, last_sequence FROM emails").fetch_all(pool).await.unwrap();
    let rows: HashMap<Uuid, (String, i64)> = rows.into_iter().map(|(id, s, v)| (id, (s, v))).collect();
    for id in valid {
        match rows.get(id) {
            Some((status, version)) if status == "sent" && *version == total(id) => {}
            _ => r.read_model_mismatches += 1,
        }
    }

    // The Redis views, and a sample read back over REST with the key: every view
    // missing from Redis (up to 100) and every twentieth email. A view read from
    // PostgreSQL is put back into Redis: checked afterwards.
    let view_key = |id: &Uuid| format!("mailledger:email:{}:{id}", mailledger::query::cache::VIEW_VERSION);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut missing = Vec::new();
    for chunk in valid.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET").arg(view_key(id)).arg("v").arg("view");
        }
        let answers: Vec<(Option<i64>, Option<String>)> = pipe.query_async(&mut conn).await.unwrap();
        for (id, (v, view)) in chunk.iter().zip(answers) {
            match (v, view) {
                (Some(v), Some(view)) => {
                    let status = serde_json::from_str::<serde_json::Value>(&view)
                        .ok()
                        .and_then(|j| j["status"].as_str().map(str::to_owned));
                    if v != total(id) || status.as_deref() != Some("sent") {
                        r.redis_stale += 1;
                    }
                }
                _ => missing.push(*id),
            }
        }
    }
    r.redis_missing = missing.len();
    if let Some(i) = instances.first() {
        let http = reqwest::Client::new();
        let step = (valid.len() / 20).max(1);
        let sample: Vec<Uuid> = missing.iter().take(100).chain(valid.iter().step_by(step)).copied().collect();
        for id in &sample {
            let ok = match http.get(format!("{}/api/v1/emails/{id}", i.http)).bearer_auth(key).send().await {
                Ok(resp) if resp.status() == 200 => {
                    resp.json::<serde_json::Value>().await.is_ok_and(|j| j["status"] == "sent")
                }
                _ => false,
            };
            r.rest_read_failures += usize::from(!ok);
        }
        for id in missing.iter().take(100) {
            let back: bool = redis::cmd("EXISTS").arg(view_key(id)).query_async(&mut conn).await.unwrap_or(false);
            r.redis_not_refilled += usize::from(!back);
        }
    }

    // Dead letters.
    r.dead_letters = match js.get_stream("MAILLEDGER_DLQ").await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    };
    r
}
