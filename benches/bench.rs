//! `make bench`: every figure beside the limit its dependencies allow on this machine,
//! both measured in the same run (limit first, then the figure, round after round).
//! Prints a table and writes `target/bench/report.json`.
//!
//! Scale: `--scale` (or `BENCH_SCALE`) multiplies every count, including the size of
//! the search/re-projection data set (1,000,000 emails at scale 1). `--rounds` sets the
//! rounds per figure (3). `--only a,b` runs some figures (intake, e2e, reads, million, search, proof).
//! The end-to-end figure runs against Postfix's `smtp-sink` (`scripts/postfix-tools.sh`
//! unpacks it the first time, without installing Postfix).

#[path = "support/cpu.rs"]
mod cpu;
#[path = "support/postfix.rs"]
mod postfix;
#[path = "support/service.rs"]
mod service;
#[path = "support/stats.rs"]
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use serde_json::json;
use service::Service;
use sqlx::PgPool;
use stats::{Figure, figure, percentile};

#[derive(Parser, Debug)]
struct Args {
    /// Multiplies every count (1 = 1,000,000 emails for search and re-projection).
    #[arg(long, env = "BENCH_SCALE", default_value_t = 1.0)]
    scale: f64,
    /// Rounds per figure.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Only these groups: intake, reads, e2e, million, search, proof.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn server_url() -> String {
    let url = std::env::var("MAILLEDGER_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/mailledger".into());
    let mut url = url::Url::parse(&url).unwrap();
    url.set_path("");
    url.to_string().trim_end_matches('/').to_owned()
}

fn nats_url() -> String {
    std::env::var("MAILLEDGER_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn recreate_database(name: &str) -> String {
    let admin = PgPool::connect(&format!("{}/postgres", server_url())).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
    admin.close().await;
    format!("{}/{name}", server_url())
}

async fn reset_streams() {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    for s in ["BENCH_COMMANDS", "BENCH_DLQ", "BENCH_EVENTS"] {
        let _ = js.delete_stream(s).await;
    }
}

fn payload(key: &str, i: usize) -> Vec<u8> {
    json!({
        "from": "bench@example.com",
        "to": "rcpt@example.org",
        "subject": format!("Benchmark message {i}"),
        "message": format!("Hello, this is benchmark message {i}. Lorem ipsum dolor sit amet."),
        "idempotency_key": key,
    })
    .to_string()
    .into_bytes()
}

async fn count_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.unwrap()
}

/// Waits until every projection has applied every event: each measurement starts quiet.
async fn wait_quiet(pool: &PgPool) {
    let started = Instant::now();
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_checkpoints c, \
               (SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1) AS head \
             WHERE (c.txid, c.position) < (head.txid, head.position)",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if behind == 0 || started.elapsed() > Duration::from_secs(300) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newest event's position (0 when there is none).
async fn head_position(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events").fetch_one(pool).await.unwrap()
}

/// Waits until each of `names` has a checkpoint and none is behind the newest event.
async fn wait_projected(pool: &PgPool, names: &[&str]) {
    let started = Instant::now();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    loop {
        let caught_up: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM projection_checkpoints c, \
               (SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1) AS head \
             WHERE c.name = ANY($1) AND (c.txid, c.position) >= (head.txid, head.position)",
        )
        .bind(&names)
        .fetch_one(pool)
        .await
        .unwrap();
        if caught_up == names.len() as i64 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "projections {names:?} never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `n` events past position `after` are stored. Counts only that range (an
/// index range scan) so that polling costs the database next to nothing: a `count(*)` of
/// the whole table every 20 ms took a tenth of its time from the figure it measures.
async fn wait_events(pool: &PgPool, after: i64, n: i64) {
    let started = Instant::now();
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE position > $1")
            .bind(after)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    while count().await < n {
        assert!(started.elapsed() < Duration::from_secs(600), "{n} events past position {after} never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes every payload as a create command, up to 256 awaiting JetStream's ack;
/// returns once all are acked. Each payload is made just before it is published.
async fn publish_all(js: &async_nats::jetstream::Context, payloads: impl Iterator<Item = Vec<u8>>) {
    let mut acks = futures::stream::FuturesUnordered::new();
    for body in payloads {
        acks.push(js.publish("bench.mail.commands.create", body.into()).await.unwrap().into_future());
        while acks.len() >= 256 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
}

/// The best PostgreSQL does for the same rows with the ledger's batching: up to 256 emails
/// (two event rows each) per `INSERT … SELECT FROM UNNEST`, each statement its own durable
/// commit, over `conns` connections.
async fn unnest_limit(pool: &PgPool, conns: usize, n: usize, round: usize) -> f64 {
    sqlx::query("CREATE TABLE IF NOT EXISTS bench_events (LIKE events INCLUDING ALL)").execute(pool).await.unwrap();
    sqlx::query("TRUNCATE bench_events").execute(pool).await.unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = vec![];
    for _ in 0..conns {
        let (pool, next) = (pool.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            loop {
                let first = next.fetch_add(256, Ordering::Relaxed);
                if first >= n {
                    break;
                }
                let (mut ids, mut seqs, mut kinds, mut bodies) = (vec![], vec![], vec![], vec![]);
                for i in first..(first + 256).min(n) {
                    let id = uuid::Uuid::now_v7().to_string();
                    let body = String::from_utf8(payload(&format!("unnest-{round}-{i}"), i)).unwrap();
                    for (seq, kind) in [(1i64, "Requested"), (2, "Persisted")] {
                        ids.push(id.clone());
                        seqs.push(seq);
                        kinds.push(kind.to_owned());
                        bodies.push(body.clone());
                    }
                }
                sqlx::query(
                    "INSERT INTO bench_events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
                     SELECT 'Email', a, s, k, '1.0', jsonb_build_object(k, p::jsonb), '{}' \
                     FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[]) AS u(a, s, k, p)",
                )
                .bind(&ids)
                .bind(&seqs)
                .bind(&kinds)
                .bind(&bodies)
                .execute(&mut *conn)
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The best JetStream does for the same messages with no work at all: published with the
/// same pipelining to a file-backed work-queue stream, pulled by a durable consumer with
/// the service's `max_ack_pending` (256) and acknowledged one by one.
async fn jetstream_limit(js: &async_nats::jetstream::Context, n: usize, round: usize) -> f64 {
    use async_nats::jetstream::{consumer, stream};
    let name = "BENCH_JSLIMIT";
    let _ = js.delete_stream(name).await;
    let stream = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec!["benchlimit.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("limit".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 256,
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let pulling = tokio::spawn(async move {
        let mut messages = consumer.messages().await.unwrap();
        for _ in 0..n {
            messages.next().await.unwrap().unwrap().ack().await.unwrap();
        }
    });
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let body = payload(&format!("jslimit-{round}-{i}"), i);
        acks.push(js.publish("benchlimit.create", body.into()).await.unwrap().into_future());
        while acks.len() >= 256 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(a) = acks.next().await {
        a.unwrap();
    }
    pulling.await.unwrap();
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(name).await;
    rate
}

async fn intake_nats(pool: &PgPool, js: &async_nats::jetstream::Context, n: usize, round: usize) -> f64 {
    let base = head_position(pool).await;
    let started = Instant::now();
    publish_all(js, (0..n).map(|i| payload(&format!("nats-{round}-{i}"), i))).await;
    wait_events(pool, base, 2 * n as i64).await;
    n as f64 / started.elapsed().as_secs_f64()
}

async fn intake_rest(pool: &PgPool, svc: &Service, n: usize, round: usize, concurrency: usize) -> f64 {
    let (client, base_url) = (svc.client(), &svc.http);
    let url = format!("{base_url}/api/v1/emails");
    let before = count_events(pool).await;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(concurrency, |i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(payload(&format!("rest-{round}-{i}"), i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
            }
        })
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(count_events(pool).await, before + 2 * n as i64);
    n as f64 / elapsed
}

/// Runs `call` from `concurrency` tasks for `seconds`; returns (req/s, p99 ms).
async fn load<F, Fut>(concurrency: usize, seconds: f64, call: F) -> (f64, f64)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = vec![];
    for t in 0..concurrency {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut i = t;
            while Instant::now() < deadline {
                let s = Instant::now();
                call(i).await;
                lat.push(s.elapsed().as_secs_f64() * 1000.0);
                i += concurrency;
            }
            lat
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    (rate, percentile(&mut all, 99.0))
}

/// A trivial handler on the same axum stack, in this process.
async fn trivial_http() -> String {
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async {
            axum::Json(json!({"id": "00000000-0000-0000-0000-000000000000", "status": "ok"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/hello")
}

/// A trivial unary RPC (the standard health check) on the same tonic stack, in this process.
async fn trivial_grpc() -> String {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap()
    });
    format!("http://{addr}")
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

/// What a run should take, from this repository's 2-core machine at scale 1 and 3 rounds
/// (minutes per group of figures, scaled by the counts and rounds), and what generating
/// the search data set adds the first time.
fn expected_minutes(wants: &dyn Fn(&str) -> bool, scale: f64, rounds: usize) -> (f64, f64) {
    let per_run = [("intake", 1.0), ("reads", 0.6), ("e2e", 0.8), ("million", 4.0), ("search", 0.6), ("proof", 1.5)];
    let first = if wants("million") || wants("search") { 3.0 * scale } else { 0.0 };
    let runs = per_run.iter().filter(|(g, _)| wants(g)).map(|(_, m)| m * scale.max(0.1) * rounds as f64 / 3.0).sum();
    (runs, first)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !args.bench {
        // `cargo test --all-targets` runs bench targets without `--bench`: building is
        // the test; the measurements are for `cargo bench` / `make bench`.
        println!("benchmark built; run it with `make bench`");
        return;
    }
    let wants = |g: &str| args.only.is_empty() || args.only.iter().any(|o| o == g);
    let scale = args.scale;
    let n = |base: f64| ((base * scale).round() as usize).max(10);
    let rounds = args.rounds.max(1);
    let mut figures: Vec<Figure> = vec![];
    println!("mailledger benchmark: scale {scale}, {rounds} rounds per figure, {} cores", num_cpus());
    let (minutes, first) = expected_minutes(&wants, scale, rounds);
    println!(
        "expect about {minutes:.0} minutes on 2 cores from a warm build (about {first:.0} more if the search data set \
         has to be generated); a line per round as it goes"
    );

    if wants("intake") || wants("reads") {
        reset_streams().await;
        let db = recreate_database("mailledger_bench_live").await;
        let svc = Service::start(&db, &[("MAILLEDGER__DELIVERY__ENABLED", "false".into())]).await;
        let pool = PgPool::connect(&db).await.unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        let pool_size = 16;
        if wants("intake") {
            // Two limits, each measured in the same rounds: PostgreSQL writing the same rows
            // with the same batching, and JetStream carrying the same messages with no work.
            // The figure is held against the lower one.
            let (mut fig, mut lim, mut pg, mut jsl, mut costs) = (vec![], vec![], vec![], vec![], vec![]);
            for r in 0..rounds {
                wait_quiet(&pool).await;
                pg.push(unnest_limit(&pool, pool_size, n(5000.0), r).await);
                jsl.push(jetstream_limit(&js, n(5000.0), r).await);
                lim.push(pg[r].min(jsl[r]));
                wait_quiet(&pool).await;
                let before = cpu::sample(svc.pid());
                fig.push(intake_nats(&pool, &js, n(5000.0), r).await);
                costs.push(cpu::Cost::between(&before, &cpu::sample(svc.pid()), n(5000.0)));
                eprintln!(
                    "  intake_nats round {r}: {:.0}/s (limits: PostgreSQL {:.0}/s, JetStream {:.0}/s); CPU per email {}",
                    fig[r],
                    pg[r],
                    jsl[r],
                    cpu::Cost::describe(&costs[r..=r])
                );
            }
            let notes = format!(
                "{} emails a round, max_ack_pending 256, pool 16; limits: PostgreSQL INSERT … UNNEST of up to 256 emails \
                 per commit over {pool_size} connections {:.0}/s, JetStream publish → pull → ack with no work {:.0}/s \
                 (the lower is the limit); CPU per email while the round ran (the machine's, by process, median of the \
                 rounds; the projections are still at work when it ends): {}",
                n(5000.0),
                stats::median(&pg),
                stats::median(&jsl),
                cpu::Cost::describe(&costs),
            );
            figures.push(figure(
                "intake_nats",
                "emails/s",
                fig,
                "the lower of UNNEST batches / bare JetStream",
                lim,
                true,
                notes,
            ));
            let (mut fig, mut lim, mut costs) = (vec![], vec![], vec![]);
            for r in 0..rounds {
                wait_quiet(&pool).await;
                lim.push(unnest_limit(&pool, pool_size, n(3000.0), r + 100).await);
                wait_quiet(&pool).await;
                let before = cpu::sample(svc.pid());
                fig.push(intake_rest(&pool, &svc, n(3000.0), r, 32).await);
                costs.push(cpu::Cost::between(&before, &cpu::sample(svc.pid()), n(3000.0)));
                eprintln!(
                    "  intake_rest round {r}: {:.0}/s (limit {:.0}/s); CPU per email {}",
                    fig[r],
                    lim[r],
                    cpu::Cost::describe(&costs[r..=r])
                );
            }
            let notes = format!(
                "{} emails a round from 32 concurrent HTTP/1.1 clients; limit: PostgreSQL INSERT … UNNEST of up to 256 \
                 emails per commit over {pool_size} connections; CPU per email while the round ran (the machine's, by \
                 process, median of the rounds; the HTTP clients are the bench's): {}",
                n(3000.0),
                cpu::Cost::describe(&costs),
            );
            figures.push(figure(
                "intake_rest",
                "emails/s",
                fig,
                "INSERT … UNNEST, same rows and batching",
                lim,
                true,
                notes,
            ));
            let rss = svc.rss_peak_mib();
            figures.push(figure(
                "rss_peak",
                "MiB",
                vec![rss],
                "—",
                vec![],
                true,
                "VmHWM of the service after the intake load".into(),
            ));
        }
        if wants("reads") {
            // Make sure there is something to read, all projected.
            if count_events(&pool).await < 2000 {
                intake_nats(&pool, &js, 1000, 999).await;
            }
            let ids: Vec<uuid::Uuid> = loop {
                let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM emails ORDER BY random() LIMIT 1000")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                if ids.len() >= 500 {
                    break ids;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            wait_quiet(&pool).await;
            let ids = Arc::new(ids);
            let client = svc.client();
            let hello = trivial_http().await;
            let (memory0, hits0, misses0) = (
                svc.counter("mailledger_cache_requests_total", "\"memory\"").await,
                svc.counter("mailledger_cache_requests_total", "\"hit\"").await,
                svc.counter("mailledger_cache_requests_total", "\"miss\"").await,
            );
            let (mut fig, mut lim, mut p99, mut lim_p99) = (vec![], vec![], vec![], vec![]);
            for _ in 0..rounds {
                let (c, url) = (client.clone(), hello.clone());
                let (rate, p) = load(32, 5.0 * scale.min(1.0), move |_| {
                    let (c, url) = (c.clone(), url.clone());
                    async move {
                        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
                    }
                })
                .await;
                lim.push(rate);
                lim_p99.push(p);
                let (c, base, ids) = (client.clone(), svc.http.clone(), ids.clone());
                let (rate, p) = load(32, 5.0 * scale.min(1.0), move |i| {
                    let (c, url) = (c.clone(), format!("{base}/api/v1/emails/{}", ids[i % ids.len()]));
                    async move {
                        assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
                    }
                })
                .await;
                fig.push(rate);
                p99.push(p);
            }
            let (memory, hits, misses) = (
                svc.counter("mailledger_cache_requests_total", "\"memory\"").await - memory0,
                svc.counter("mailledger_cache_requests_total", "\"hit\"").await - hits0,
                svc.counter("mailledger_cache_requests_total", "\"miss\"").await - misses0,
            );
            let all = (memory + hits + misses).max(1.0);
            let notes = format!(
                "32 clients; p99 {:.2} ms (trivial handler p99 {:.2} ms); served from the instance's memory {}, \
                 Redis {}, PostgreSQL {}",
                stats::median(&p99),
                stats::median(&lim_p99),
                pct(memory / all),
                pct(hits / all),
                pct(misses / all)
            );
            figures.push(figure("get_by_id_rest", "req/s", fig, "trivial axum handler, same client", lim, true, notes));

            let grpc_hello = trivial_grpc().await;
            let channel = tonic::transport::Channel::from_shared(svc.grpc.clone()).unwrap().connect().await.unwrap();
            let hello_channel = tonic::transport::Channel::from_shared(grpc_hello).unwrap().connect().await.unwrap();
            let (mut fig, mut lim, mut p99, mut lim_p99) = (vec![], vec![], vec![], vec![]);
            for _ in 0..rounds {
                let ch = hello_channel.clone();
                let (rate, p) = load(32, 5.0 * scale.min(1.0), move |_| {
                    let mut c = tonic_health::pb::health_client::HealthClient::new(ch.clone());
                    async move {
                        c.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
                    }
                })
                .await;
                lim.push(rate);
                lim_p99.push(p);
                let (ch, ids, bearer) = (channel.clone(), ids.clone(), svc.bearer());
                let (rate, p) = load(32, 5.0 * scale.min(1.0), move |i| {
                    use mailledger::transport::grpc::proto::{GetByIdReq, email_service_client::EmailServiceClient};
                    let mut c = EmailServiceClient::new(ch.clone());
                    let mut request =
                        tonic::Request::new(GetByIdReq { email_id: ids[i % ids.len()].to_string(), as_of: None });
                    request.metadata_mut().insert("authorization", bearer.clone());
                    async move {
                        c.get_by_id(request).await.unwrap();
                    }
                })
                .await;
                fig.push(rate);
                p99.push(p);
            }
            let notes = format!(
                "32 concurrent calls on one HTTP/2 channel; p99 {:.2} ms (trivial RPC p99 {:.2} ms)",
                stats::median(&p99),
                stats::median(&lim_p99)
            );
            figures.push(figure(
                "get_by_id_grpc",
                "req/s",
                fig,
                "trivial unary RPC (health), same stack",
                lim,
                true,
                notes,
            ));
        }
        svc.stop();
        pool.close().await;
    }

    if wants("e2e") {
        end_to_end(&mut figures, n(2000.0), rounds, scale).await;
    }

    if wants("million") || wants("search") {
        million(&mut figures, scale, rounds, wants("million")).await;
    }

    if wants("proof") {
        proof(&mut figures, scale, rounds).await;
    }

    stats::print_table(&figures);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&figures).unwrap()).unwrap();
    println!("\nreport: {}", path.display());
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// NATS publish → `Sent` recorded, against Postfix's `smtp-sink`, beside what
/// `smtp-source` gets from the same sink with the same connections and message size;
/// then the latency at a steady offered load of half the rate achieved.
async fn end_to_end(figures: &mut Vec<Figure>, count: usize, rounds: usize, scale: f64) {
    let postfix = postfix::Postfix::locate();
    let sink = postfix.sink();
    reset_streams().await;
    let db = recreate_database("mailledger_bench_e2e").await;
    let connections = 8;
    let svc = Service::start(
        &db,
        &[
            ("MAILLEDGER_SMTP_URL", format!("smtp://127.0.0.1:{}", sink.port)),
            ("MAILLEDGER__DELIVERY__ENABLED", "true".into()),
            ("MAILLEDGER__SMTP__POOL_SIZE", connections.to_string()),
        ],
    )
    .await;
    let pool = PgPool::connect(&db).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    // The message the service sends, for smtp-source to send one of the same size.
    let size = {
        let email = mailledger::command::EmailDraft {
            from: Some("bench@example.com".into()),
            to: vec!["rcpt@example.org".into()],
            subject: Some("Benchmark message 1000".into()),
            text: Some("Hello, this is benchmark message 1000. Lorem ipsum dolor sit amet.".into()),
            ..Default::default()
        }
        .validate(&mailledger::command::Limits::default())
        .unwrap();
        mailledger::render::Renderer::render(&email, "<size@example.com>", chrono::Utc::now()).unwrap().bytes.len()
    };
    let (mut fig, mut lim, mut p50s, mut p99s) = (vec![], vec![], vec![], vec![]);
    let (mut costs, mut limit_costs) = (vec![], vec![]);
    for r in 0..rounds {
        let before = cpu::sample(svc.pid());
        lim.push(postfix.source(sink.port, connections, count, size));
        limit_costs.push(cpu::Cost::between(&before, &cpu::sample(svc.pid()), count));
        let keys: Vec<String> = (0..count).map(|i| format!("e2e-{r}-{i}")).collect();
        let before = cpu::sample(svc.pid());
        let (rate, mut lat) = publish_and_wait(&pool, &js, &keys, None).await;
        costs.push(cpu::Cost::between(&before, &cpu::sample(svc.pid()), count));
        fig.push(rate);
        p50s.push(percentile(&mut lat, 50.0));
        p99s.push(percentile(&mut lat, 99.0));
        eprintln!(
            "  end_to_end round {r}: {:.0}/s (limit {:.0}/s); CPU per email {}",
            fig[r],
            lim[r],
            cpu::Cost::describe(&costs[r..=r])
        );
    }
    // A steady load at half the rate achieved: the latency a producer sees.
    let steady_rate = stats::median(&fig) / 2.0;
    let steady_n = ((steady_rate * 10.0 * scale.max(0.5)) as usize).max(100);
    let keys: Vec<String> = (0..steady_n).map(|i| format!("steady-{i}")).collect();
    let (_, mut steady) = publish_and_wait(&pool, &js, &keys, Some(steady_rate)).await;
    let notes = format!(
        "{count} emails a round, NATS publish → Sent recorded, into Postfix smtp-sink over {connections} pooled \
         connections; burst latency p50 {:.0} ms, p99 {:.0} ms; at a steady {:.0}/s (half the rate) for {steady_n} \
         emails: p50 {:.0} ms, p99 {:.0} ms; limit: smtp-source -s {connections} -l {size} into the same sink; \
         CPU per email (the machine's, by process, median of the rounds): {}; the limit's CPU per message: {}",
        stats::median(&p50s),
        stats::median(&p99s),
        steady_rate,
        percentile(&mut steady, 50.0),
        percentile(&mut steady, 99.0),
        cpu::Cost::describe(&costs),
        cpu::Cost::describe(&limit_costs),
    );
    figures.push(figure(
        "end_to_end",
        "emails/s",
        fig,
        "smtp-source → smtp-sink, same connections and size",
        lim,
        true,
        notes,
    ));
    svc.stop();
    pool.close().await;
}

/// Publishes one email per key (all at once, or at `pace` a second) and waits until
/// each has its `Sent`: the rate from the first publish to the last `Sent`, and each
/// email's latency from its publish to its `Sent` (ms).
async fn publish_and_wait(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    keys: &[String],
    pace: Option<f64>,
) -> (f64, Vec<f64>) {
    // Only `Sent` events after this position are counted (an index range, not the table).
    let base = head_position(pool).await;
    let mut published = std::collections::HashMap::with_capacity(keys.len());
    let started = chrono::Utc::now();
    match pace {
        None => {
            let payloads = keys.iter().enumerate().map(|(i, key)| {
                published.insert(mailledger::command::email_id_for_key(key).to_string(), chrono::Utc::now());
                payload(key, i)
            });
            publish_all(js, payloads).await;
        }
        Some(rate) => {
            let every = Duration::from_secs_f64(1.0 / rate);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for (i, key) in keys.iter().enumerate() {
                tick.tick().await;
                published.insert(mailledger::command::email_id_for_key(key).to_string(), chrono::Utc::now());
                js.publish("bench.mail.commands.create", payload(key, i).into()).await.unwrap().await.unwrap();
            }
        }
    }
    let target = keys.len() as i64;
    let waiting = Instant::now();
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE position > $1 AND event_type = 'Sent'")
            .bind(base)
            .fetch_one(pool)
            .await
            .unwrap();
        if sent >= target {
            break;
        }
        assert!(waiting.elapsed() < Duration::from_secs(600), "end-to-end never finished ({sent} of {target})");
        // The rate and the latencies come from the events' `recorded_at`, not from when
        // this loop sees them, so it can look seldom: every 20 ms its count (of a range
        // growing to 6,000 events) took PostgreSQL 0.44 s in a 3-round run
        // (`pg_stat_statements`), about 30 µs per email, beside the figure it measures.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT aggregate_id, recorded_at FROM events WHERE event_type = 'Sent' AND aggregate_id = ANY($1)",
    )
    .bind(published.keys().cloned().collect::<Vec<_>>())
    .fetch_all(pool)
    .await
    .unwrap();
    let last = sent.iter().map(|(_, at)| *at).max().unwrap();
    let rate = keys.len() as f64 / (last - started).to_std().unwrap_or_default().as_secs_f64().max(1e-6);
    let lat = sent
        .iter()
        .filter_map(|(id, at)| Some((*at - *published.get(id)?).num_microseconds()? as f64 / 1000.0))
        .collect();
    (rate, lat)
}

/// The 1,000,000-email figures: re-projection, replay and search.
async fn million(figures: &mut Vec<Figure>, scale: f64, rounds: usize, rebuild_and_replay: bool) {
    let emails = ((1_000_000.0 * scale) as i64).max(1000);
    let db = ensure_million(emails).await;
    // Sessions as the service opens them (`store::connect`): JIT off.
    let options =
        <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&db).unwrap().options([("jit", "off")]);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
    let events = count_events(&pool).await;

    // reproject vs COPY of the same rows (with the same indexes built after).
    let (mut fig, mut lim, mut phases) = (vec![], vec![], vec![]);
    let reproject_rounds = if rebuild_and_replay { rounds.min(2) } else { 0 };
    for r in 0..reproject_rounds {
        lim.push(copy_limit(&pool, events).await);
        let report = mailledger::ops::reproject::reproject(
            &pool,
            mailledger::ops::reproject::Target::Emails,
            None,
            5000,
            mailledger::store::upcast::UPCASTERS,
            &mailledger::ops::progress::Silent,
        )
        .await
        .unwrap();
        fig.push(report.events as f64 / report.seconds);
        phases.push((report.load_seconds, report.index_seconds, report.seconds));
        eprintln!(
            "  reproject round {r}: {:.0} events/s (limit {:.0} events/s; rows {:.1} s, indexes {:.1} s of {:.1} s)",
            fig[r], lim[r], report.load_seconds, report.index_seconds, report.seconds
        );
    }
    let phase = |f: fn(&(f64, f64, f64)) -> f64| stats::median(&phases.iter().map(f).collect::<Vec<_>>());
    let notes = format!(
        "{events} events → {emails} rows with {} writers (rows {:.1} s, indexes and vacuum {:.1} s, of {:.1} s); \
         limit: COPY of the resulting rows into an empty table + the same indexes, as events/s",
        mailledger::ops::reproject::writers(),
        phase(|p| p.0),
        phase(|p| p.1),
        phase(|p| p.2),
    );
    if rebuild_and_replay {
        figures.push(figure("reproject", "events/s", fig, "COPY of the same rows (events/s)", lim, true, notes));
    }

    // replay vs COPY TO STDOUT.
    let (mut fig, mut lim) = (vec![], vec![]);
    for r in 0..if rebuild_and_replay { rounds.min(2) } else { 0 } {
        let started = Instant::now();
        let status = std::process::Command::new("psql")
            .arg(&db)
            .args(["-q", "-c", "COPY (SELECT aggregate_id, sequence, position, event_type, event_version, recorded_at, payload, metadata FROM events ORDER BY txid, position) TO STDOUT"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("psql runs");
        assert!(status.success());
        lim.push(events as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
            .arg("replay")
            .env("MAILLEDGER_DATABASE_URL", &db)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        fig.push(events as f64 / started.elapsed().as_secs_f64());
        eprintln!("  replay round {r}: {:.0} events/s (limit {:.0} events/s)", fig[r], lim[r]);
    }
    if !fig.is_empty() {
        figures.push(figure(
            "replay",
            "events/s",
            fig,
            "COPY ... TO STDOUT of the same rows",
            lim,
            true,
            format!("{events} events to /dev/null"),
        ));
    }

    // search p95 at the API vs the same SQL's execution time, once the service has
    // nothing left to project (the first start on a new data set seals its 2,000,000
    // events into the proof log: measured beside that, search would measure the sealer).
    let svc = Service::start(&db, &[("MAILLEDGER__DELIVERY__ENABLED", "false".into())]).await;
    wait_projected(&pool, &["emails", "webhooks", "proof"]).await;
    let client = svc.client();
    // A key confined to one tenant (not an admin): its searches carry the tenant filter.
    let tenant_client = svc.client_with(&svc.make_key("bench-reader", "read"));
    let cases = [
        ("search_common", "hello", None),
        ("search_medium", "invoice", None),
        ("search_rare", "zanzibar", None),
        ("search_from", "from:user7@example.com", None),
        ("search_fields", "invoice status:queued to:example.org", None),
        ("search_tenant", "invoice", Some("default")),
    ];
    // Each search is asked a few times before it is timed: the rounds above rebuilt the
    // table (re-projection) and read two million events, so the pages a search visits
    // start outside PostgreSQL's buffers, and its first answers measure those reads, not
    // the search. What they took is in the notes.
    const WARM_UP: usize = 3;
    let search = |client: &reqwest::Client, q: String| {
        let (client, url) = (client.clone(), format!("{}/api/v1/emails", svc.http));
        async move {
            let started = Instant::now();
            let r = client.get(url).query(&[("q", q.as_str()), ("size", "10")]).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            (started.elapsed().as_secs_f64() * 1000.0, body)
        }
    };
    for (name, q, tenant) in cases {
        let client = if tenant.is_some() { &tenant_client } else { &client };
        let mut first = Vec::with_capacity(WARM_UP);
        for _ in 0..WARM_UP {
            first.push(search(client, q.to_owned()).await.0);
        }
        let remembered = || svc.counter("mailledger_search_counts_total", "\"remembered\"");
        let (mut api, mut sql) = (vec![], vec![]);
        let (mut matches, mut exact) = (0, true);
        let before = remembered().await;
        for _ in 0..(20 * rounds) {
            let (ms, body) = search(client, q.to_owned()).await;
            api.push(ms);
            matches = body["total_count"].as_i64().unwrap_or(0);
            exact = body["total_count_exact"].as_bool().unwrap_or(true);
            sql.push(explain_ms(&pool, q, tenant).await);
        }
        let took_remembered = remembered().await - before;
        // The first search of a key: the same search with a time bound no email reaches,
        // a new one each time, so nothing is remembered of it (its count, its density).
        let mut fresh = vec![];
        for i in 0..(20 * rounds) {
            let bound = format!("{q} before:2100-01-01T{:02}:{:02}:00Z", i / 60, i % 60);
            fresh.push(search(client, bound).await.0);
        }
        let (p_api, p_sql) = (percentile(&mut api, 95.0), percentile(&mut sql, 95.0));
        let p_fresh = percentile(&mut fresh, 95.0);
        let first = first.iter().map(|ms| format!("{ms:.1}")).collect::<Vec<_>>().join(" / ");
        let notes = format!(
            "q={q}{}: {matches}{} matches of {emails}; page 1, size 10, newest first, count capped at 10,000; \
             {} timed after {WARM_UP} not timed (cold pages after the rounds above: {first} ms); \
             {took_remembered:.0} of them took the count remembered from an earlier search of the same key \
             (the limit counts every time); the first search of a key (a new time bound each time, \
             {} of them): p95 {p_fresh:.1} ms",
            tenant.map(|t| format!(" (a key of tenant {t})")).unwrap_or_default(),
            if exact { "" } else { "+" },
            20 * rounds,
            20 * rounds,
        );
        eprintln!(
            "  {name}: p95 {p_api:.1} ms (the SQL alone {p_sql:.1} ms; {took_remembered:.0} remembered counts; \
             first search of a key: p95 {p_fresh:.1} ms; first {WARM_UP}, not timed: {first} ms)"
        );
        figures.push(figure(
            name,
            "ms p95",
            vec![p_api],
            "the same SQL statements, EXPLAIN ANALYZE",
            vec![p_sql],
            false,
            notes,
        ));
    }
    get_by_id_at_scale(figures, &svc, &pool, emails).await;
    svc.stop();
    pool.close().await;
    if rebuild_and_replay {
        intake_on_a_full_store(figures, &db, scale, rounds).await;
    }
}

/// GET by id over the whole data set: 100,000 emails picked at random, each asked for
/// about once (so mostly from PostgreSQL's primary key, then Redis), beside the same GET
/// of one email over and over (from the instance's memory), in the same service.
async fn get_by_id_at_scale(figures: &mut Vec<Figure>, svc: &Service, pool: &PgPool, emails: i64) {
    let percent = (100_000.0 / emails as f64 * 150.0).clamp(1.0, 100.0);
    let ids: Vec<String> =
        sqlx::query_scalar(&format!("SELECT id::text FROM emails TABLESAMPLE SYSTEM ({percent}) LIMIT 100000"))
            .fetch_all(pool)
            .await
            .unwrap();
    let ids = Arc::new(ids);
    let client = svc.client();
    let counts = || async {
        (
            svc.counter("mailledger_cache_requests_total", "\"memory\"").await,
            svc.counter("mailledger_cache_requests_total", "\"hit\"").await,
            svc.counter("mailledger_cache_requests_total", "\"miss\"").await,
        )
    };
    let (c, url) = (client.clone(), format!("{}/api/v1/emails/{}", svc.http, ids[0]));
    let (same, same_p99) = load(32, 5.0, move |_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        }
    })
    .await;
    let before = counts().await;
    let (c, base, spread) = (client.clone(), svc.http.clone(), ids.clone());
    let (rate, p99) = load(32, 5.0, move |i| {
        let (c, url) = (c.clone(), format!("{base}/api/v1/emails/{}", spread[i % spread.len()]));
        async move {
            assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        }
    })
    .await;
    let after = counts().await;
    let (memory, hits, misses) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let served = (memory + hits + misses).max(1.0);
    eprintln!("  get_by_id_store: {rate:.0}/s (one email again and again: {same:.0}/s)");
    figures.push(figure(
        "get_by_id_store",
        "req/s",
        vec![rate],
        "the same GET of one email again and again (from memory)",
        vec![same],
        true,
        format!(
            "32 clients, {} different emails of {emails}; p99 {p99:.2} ms (one email: {same_p99:.2} ms); served from \
             memory {:.0} %, Redis {:.0} %, PostgreSQL {:.0} %",
            ids.len(),
            100.0 * memory / served,
            100.0 * hits / served,
            100.0 * misses / served,
        ),
    ));
}

/// `intake_nats` into a copy of the million-email store (2,000,000 events) beside the
/// same intake into an empty one, in the same run: does the store's size slow intake?
async fn intake_on_a_full_store(figures: &mut Vec<Figure>, million: &str, scale: f64, rounds: usize) {
    let n = ((5000.0 * scale).round() as usize).max(10);
    let full = "mailledger_bench_full_intake";
    let admin = PgPool::connect(&format!("{}/postgres", server_url())).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {full} WITH (FORCE)")).execute(&admin).await.unwrap();
    let template = million.rsplit('/').next().unwrap();
    sqlx::query(&format!("CREATE DATABASE {full} TEMPLATE {template}")).execute(&admin).await.unwrap();
    let (mut fig, mut lim) = (vec![], vec![]);
    for (store, into) in [("empty", &mut lim), ("full", &mut fig)] {
        reset_streams().await;
        let url = if store == "full" {
            format!("{}/{full}", server_url())
        } else {
            recreate_database("mailledger_bench_empty_intake").await
        };
        let svc = Service::start(&url, &[("MAILLEDGER__DELIVERY__ENABLED", "false".into())]).await;
        let pool = PgPool::connect(&url).await.unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
        for r in 0..rounds {
            wait_quiet(&pool).await;
            into.push(intake_nats(&pool, &js, n, 500 + r).await);
            eprintln!("  intake_nats into the {store} store round {r}: {:.0}/s", into[r]);
        }
        svc.stop();
        pool.close().await;
    }
    for db in [full, "mailledger_bench_empty_intake"] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(&admin).await.unwrap();
    }
    admin.close().await;
    let events = (2_000_000.0 * scale).round() as i64;
    let notes = format!(
        "{n} emails a round into a copy of the search data set ({events} events), beside the same intake into an \
         empty store in the same run"
    );
    figures.push(figure("intake_nats_2m", "emails/s", fig, "the same intake into an empty store", lim, true, notes));
}

/// The bare cost of the SQL the service runs for a search, statement by statement as
/// `Repository::search` runs it (the probe; then the capped count, dense or not; or the
/// count and the page): the sum of their planning and execution times. `tenant`: the
/// search of a key confined to that tenant.
async fn explain_ms(pool: &PgPool, q: &str, tenant: Option<&str>) -> f64 {
    use mailledger::query::repository::{WALKING_THE_ORDER_INDEX, probe_is_dense, push_count, push_page, push_probe};
    use mailledger::query::search::{COUNT_CAP, SNIPPET_CHARS, SearchParams, translate};
    use sqlx::{Postgres, QueryBuilder, Row};
    let (tsquery, filters) = translate(&mailledger::query::grammar::parse(q).unwrap());
    let p = SearchParams {
        tsquery,
        filters,
        tenant: tenant.map(str::to_owned),
        page: 1,
        size: 10,
        body_chars: SNIPPET_CHARS,
        ..Default::default()
    };
    async fn explained(pool: &PgPool, dense: bool, push: impl FnOnce(&mut QueryBuilder<'_, Postgres>)) -> f64 {
        let mut q = QueryBuilder::<Postgres>::new("EXPLAIN (ANALYZE, FORMAT JSON) ");
        push(&mut q);
        let mut tx = pool.begin().await.unwrap();
        if dense {
            for setting in WALKING_THE_ORDER_INDEX {
                sqlx::query(setting).execute(&mut *tx).await.unwrap();
            }
        }
        let plan: serde_json::Value = q.build_query_scalar().fetch_one(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        plan[0]["Planning Time"].as_f64().unwrap_or(0.0) + plan[0]["Execution Time"].as_f64().unwrap_or(0.0)
    }
    // Which way the service goes: the probe's rows (untimed here).
    let mut probe = QueryBuilder::<Postgres>::new("");
    push_probe(&mut probe, &p);
    let rows = probe.build().fetch_all(pool).await.unwrap();
    let matched: i64 = rows.first().map_or(0, |r| r.get("matched"));
    let mut total = explained(pool, false, |q| push_probe(q, &p)).await;
    if rows.len() > p.size as usize {
        let dense = probe_is_dense(matched);
        total += explained(pool, dense, |q| push_count(q, &p, dense)).await;
    } else {
        let mut count = QueryBuilder::<Postgres>::new("");
        push_count(&mut count, &p, false);
        let counted: i64 = count.build_query_scalar().fetch_one(pool).await.unwrap();
        let dense = counted > COUNT_CAP;
        total += explained(pool, false, |q| push_count(q, &p, false)).await;
        total += explained(pool, dense, |q| push_page(q, &p, dense)).await;
    }
    total
}

/// COPY the current read model out to a file (untimed), then time COPY of it into an
/// empty table with the same primary key, and building the same indexes; returns the
/// equivalent events/s.
async fn copy_limit(pool: &PgPool, events: i64) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = pool.acquire().await.unwrap();
    let file = std::env::temp_dir().join(format!("mailledger-bench-{}.copy", std::process::id()));
    let cols = mailledger::query::row::COLUMNS;
    {
        let mut out = tokio::fs::File::create(&file).await.unwrap();
        let mut stream = conn.copy_out_raw(&format!("COPY (SELECT {cols} FROM emails) TO STDOUT")).await.unwrap();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.unwrap()).await.unwrap();
        }
        out.flush().await.unwrap();
    }
    sqlx::query("DROP TABLE IF EXISTS bench_copy").execute(&mut *conn).await.unwrap();
    sqlx::query("CREATE TABLE bench_copy (LIKE emails INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING CONSTRAINTS)")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE bench_copy ADD PRIMARY KEY (id)").execute(&mut *conn).await.unwrap();
    let started = Instant::now();
    let mut copy = conn.copy_in_raw(&format!("COPY bench_copy ({cols}) FROM STDIN")).await.unwrap();
    let mut input = tokio::fs::File::open(&file).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        copy.send(&buf[..n]).await.unwrap();
    }
    copy.finish().await.unwrap();
    let copied = started.elapsed().as_secs_f64();
    // The same indexes as the live table (and so as a rebuild builds), one after another.
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() \
         AND tablename = 'emails' AND indexname <> 'emails_pkey'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    for (name, def) in &indexes {
        let def = def.replacen(&format!("INDEX {name} ON"), &format!("INDEX {name}__copy ON"), 1).replacen(
            ".emails USING",
            ".bench_copy USING",
            1,
        );
        sqlx::query(&def).execute(&mut *conn).await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("  COPY limit: rows {copied:.1} s, indexes {:.1} s", seconds - copied);
    sqlx::query("DROP TABLE bench_copy").execute(&mut *conn).await.unwrap();
    let _ = std::fs::remove_file(&file);
    events as f64 / seconds
}

/// A database with `emails` emails (two events each) and a caught-up read model; kept
/// between runs when it already has that many.
async fn ensure_million(emails: i64) -> String {
    // One database per size, so a run at another scale keeps the million-email one.
    let name =
        if emails == 1_000_000 { "mailledger_bench_million".to_owned() } else { format!("mailledger_bench_{emails}") };
    let url = format!("{}/{name}", server_url());
    if let Ok(pool) = PgPool::connect(&url).await {
        let have: Option<i64> = sqlx::query_scalar("SELECT emails FROM bench_meta WHERE version = 1")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten();
        pool.close().await;
        if have == Some(emails) {
            eprintln!("  reusing {name} ({emails} emails)");
            return url;
        }
    }
    eprintln!("  generating {emails} emails ({} events) in {name} ...", emails * 2);
    let url = recreate_database(&name).await;
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
        .arg("migrate")
        .env("MAILLEDGER_DATABASE_URL", &url)
        .status()
        .unwrap();
    assert!(status.success());
    let pool = PgPool::connect(&url).await.unwrap();
    let chunk = 100_000i64;
    let mut start = 1i64;
    let started = Instant::now();
    while start <= emails {
        let end = (start + chunk - 1).min(emails);
        // Words: "hello" in every email, "invoice" in 1 %, "zanzibar" in 1 of 100,000.
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
             SELECT 'Email', e.id::text, s.seq, s.kind, '1.0', s.payload, '{\"transport\":\"bench\"}' FROM ( \
               SELECT g, gen_random_uuid() AS id, 'user' || (g % 1000) || '@example.com' AS f, \
                 'rcpt' || (g % 5000) || '@example.org' AS t, \
                 CASE WHEN g % 100 = 0 THEN 'Invoice ' || g ELSE 'Hello number ' || g END AS subj, \
                 'Hello there, this is message ' || g || CASE WHEN g % 100000 = 0 THEN ' zanzibar' ELSE '' END || \
                 ' with a few more words, lorem ipsum dolor sit amet.' AS body, \
                 to_char((now() - make_interval(secs => $3 - g)) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS ts \
               FROM generate_series($1::bigint, $2::bigint) g) e \
             CROSS JOIN LATERAL (VALUES \
               (1, 'Requested', jsonb_build_object('Requested', jsonb_build_object('email_id', e.id, 'source', 'rest', \
                  'request', jsonb_build_object('from', e.f, 'to', jsonb_build_array(e.t), 'subject', e.subj, 'text', e.body), \
                  'requested_at', e.ts))), \
               (2, 'Persisted', jsonb_build_object('Persisted', jsonb_build_object('message_id', \
                  '<' || replace(e.id::text, '-', '') || '@example.com>', 'date', e.ts, \
                  'from', jsonb_build_object('address', e.f), 'to', jsonb_build_array(jsonb_build_object('address', e.t)), \
                  'subject', e.subj, 'size_bytes', 400, 'sha256', '', 'request_digest', ''))) \
             ) AS s(seq, kind, payload) ORDER BY e.g, s.seq",
        )
        .bind(start)
        .bind(end)
        .bind(emails as f64)
        .execute(&pool)
        .await
        .unwrap();
        start = end + 1;
    }
    sqlx::query("ANALYZE events").execute(&pool).await.unwrap();
    eprintln!("  events written in {:.0} s; projecting ...", started.elapsed().as_secs_f64());
    mailledger::ops::reproject::reproject(
        &pool,
        mailledger::ops::reproject::Target::Emails,
        None,
        5000,
        mailledger::store::upcast::UPCASTERS,
        &mailledger::ops::progress::Silent,
    )
    .await
    .unwrap();
    // The other projections start at the head: the service started on this database
    // for the search figures must not re-deliver, re-cache or re-publish a million emails.
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, txid, position) \
         SELECT n, e.txid, e.position FROM unnest(ARRAY['schedule', 'cache', 'nats_events', 'webhooks']) AS n, \
           (SELECT txid, position FROM events ORDER BY txid DESC, position DESC LIMIT 1) AS e \
         ON CONFLICT (name) DO UPDATE SET txid = EXCLUDED.txid, position = EXCLUDED.position",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE emails").execute(&pool).await.unwrap();
    sqlx::query("CREATE TABLE bench_meta (version int, emails bigint)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO bench_meta VALUES (1, $1)").bind(emails).execute(&pool).await.unwrap();
    eprintln!("  ready in {:.0} s", started.elapsed().as_secs_f64());
    pool.close().await;
    url
}

/// The bench's checkpoint-signing key (kept, so a store sealed by one run verifies in the next).
fn bench_signing_key() -> (std::path::PathBuf, mailledger::proof::note::SignerKey) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("signing.key");
    if !path.exists() {
        mailledger::ops::ledger::keygen("mailledger/bench", &path).unwrap();
    }
    let key = mailledger::proof::note::SignerKey::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, key)
}

/// The proof log: intake with sealing on beside off (same run), the sealing rate beside
/// bare SHA-256 over the same canonical bytes, commit → signed checkpoint latency, and
/// `ledger verify` over the million-email store beside reading the same rows.
async fn proof(figures: &mut Vec<Figure>, scale: f64, rounds: usize) {
    use mailledger::proof::canonical;
    let n = ((5000.0 * scale).round() as usize).max(10);
    let (key_path, key) = bench_signing_key();
    let (mut on, mut off, mut latencies) = (vec![], vec![], vec![]);
    let mut sealed_db = String::new();
    let mut unsealed_db = String::new();
    for r in 0..rounds {
        for sealing in [false, true] {
            reset_streams().await;
            let db =
                recreate_database(if sealing { "mailledger_bench_sealed" } else { "mailledger_bench_unsealed" }).await;
            let env = [
                ("MAILLEDGER__DELIVERY__ENABLED", "false".to_owned()),
                ("MAILLEDGER__PROOF__ENABLED", sealing.to_string()),
                ("MAILLEDGER_SIGNING_KEY", key_path.display().to_string()),
            ];
            let svc = Service::start(&db, &env).await;
            let pool = PgPool::connect(&db).await.unwrap();
            let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
            wait_quiet(&pool).await;
            let rate = intake_nats(&pool, &js, n, r).await;
            if sealing {
                on.push(rate);
                // Covered: the first checkpoint whose tree holds the event's leaf.
                let total = count_events(&pool).await;
                let deadline = Instant::now() + Duration::from_secs(60);
                while sqlx::query_scalar::<_, Option<i64>>("SELECT max(size) FROM proof_checkpoints")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .unwrap_or(0)
                    < total
                {
                    assert!(Instant::now() < deadline, "sealing never caught up");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let lags: Vec<f64> = sqlx::query_scalar(
                    "SELECT extract(epoch FROM (SELECT min(c.signed_at) FROM proof_checkpoints c WHERE c.size > l.idx) \
                       - e.recorded_at)::float8 \
                     FROM (SELECT t.tile * 256 + u.i - 1 AS idx, u.p AS position \
                       FROM proof_tiles t, unnest(t.positions) WITH ORDINALITY AS u(p, i)) l \
                     JOIN events e ON e.position = l.position \
                     WHERE e.aggregate_type = 'Email'",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                latencies.extend(lags);
                sealed_db = db.clone();
            } else {
                off.push(rate);
                unsealed_db = db.clone();
            }
            eprintln!("  intake_nats sealing {sealing} round {r}: {rate:.0}/s");
            svc.stop();
        }
    }
    let notes = format!("{n} emails a round over NATS, the same service with proof.enabled true / false");
    figures.push(figure("intake_sealed", "emails/s", on, "the same intake, sealing off", off, true, notes));
    let (p50, p99) = (percentile(&mut latencies.clone(), 50.0), percentile(&mut latencies, 99.0));
    figures.push(figure(
        "covered_p50",
        "s",
        vec![p50],
        "checkpoint_interval (1 s)",
        vec![1.0],
        false,
        format!("commit (recorded_at) → first signed checkpoint holding the event, during intake; p99 {p99:.3} s"),
    ));
    let _ = sealed_db;

    // Sealing rate: the sealer catching up on a store it has not sealed, beside bare
    // SHA-256 over the same canonical bytes.
    let pool = PgPool::connect(&unsealed_db).await.unwrap();
    let (mut fig, mut lim) = (vec![], vec![]);
    for r in 0..rounds {
        let mut conn = pool.acquire().await.unwrap();
        let bytes: Vec<Vec<u8>> = {
            use futures::TryStreamExt;
            mailledger::store::raw::stream(&mut conn).map_ok(|e| canonical::bytes(&e)).try_collect().await.unwrap()
        };
        drop(conn);
        let started = Instant::now();
        for b in &bytes {
            std::hint::black_box(mailledger::proof::merkle::leaf_hash(b));
        }
        lim.push(bytes.len() as f64 / started.elapsed().as_secs_f64());
        for sql in [
            "TRUNCATE proof_tiles, proof_nodes, proof_checkpoints",
            "UPDATE proof_tree SET size = 0, root = sha256('')",
            "DELETE FROM projection_checkpoints WHERE name = 'proof'",
        ] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        let sealer = mailledger::proof::sealer::Sealer::new(None);
        let options = mailledger::projections::runner::RunnerOptions { batch_size: 2000, ..Default::default() };
        let runner = mailledger::projections::runner::Runner::new(pool.clone(), Arc::new(sealer), options);
        let started = Instant::now();
        let sealed = runner.catch_up().await.unwrap();
        fig.push(sealed as f64 / started.elapsed().as_secs_f64());
        eprintln!("  sealing round {r}: {:.0} events/s (bare SHA-256 {:.0}/s)", fig[r], lim[r]);
    }
    let notes =
        format!("{} events: canonical bytes, leaf and tree rows in the feed transaction", count_events(&pool).await);
    figures.push(figure("sealing", "events/s", fig, "bare SHA-256 of the same canonical bytes", lim, true, notes));

    // Verify over the million-email store (sealed here once, and kept).
    let emails = ((1_000_000.0 * scale) as i64).max(1000);
    let db = ensure_million(emails).await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&db).await.unwrap();
    // A store generated before the proof log: its tables come with the migration.
    mailledger::store::migrate(&pool).await.unwrap();
    let signing = mailledger::proof::sealer::Signing {
        keys: Arc::from([key.clone()]),
        origin: "mailledger/bench".into(),
        every: 100_000,
        interval: Duration::from_secs(3600),
    };
    let runner = mailledger::projections::runner::Runner::new(
        pool.clone(),
        Arc::new(mailledger::proof::sealer::Sealer::new(Some(signing))),
        mailledger::projections::runner::RunnerOptions { batch_size: 5000, ..Default::default() },
    );
    let started = Instant::now();
    let backfilled = runner.catch_up().await.unwrap();
    if backfilled > 0 {
        eprintln!("  sealed the million store: {backfilled} events in {:.0} s", started.elapsed().as_secs_f64());
    }
    let events = count_events(&pool).await;
    let (mut fig, mut lim) = (vec![], vec![]);
    for r in 0..rounds.min(2) {
        let started = Instant::now();
        let mut conn = pool.acquire().await.unwrap();
        let read = {
            use futures::TryStreamExt;
            mailledger::store::raw::stream(&mut conn).try_fold(0u64, |n, _| async move { Ok(n + 1) }).await.unwrap()
        };
        drop(conn);
        lim.push(read as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        let verdict =
            mailledger::ops::ledger::verify_store(&pool, vec![key.verifier()], &[], &mailledger::ops::progress::Silent)
                .await
                .unwrap();
        assert!(verdict.is_ok(), "{verdict:?}");
        fig.push(events as f64 / started.elapsed().as_secs_f64());
        eprintln!("  verify round {r}: {:.0} events/s (reading the rows {:.0}/s)", fig[r], lim[r]);
    }
    let notes = format!("ledger verify over {events} events (every leaf and checkpoint), flat memory");
    figures.push(figure("verify", "events/s", fig, "reading the same rows (raw stream)", lim, true, notes));
}
