//! Reads from a real PostgreSQL streaming replica (`pg_basebackup -R` of a primary the
//! test starts): served there while it keeps up, from the primary for a read that names a
//! position the replica has not replayed (`X-Min-Position`) or while the replica is too
//! far behind, from the replica while the primary restarts.

use std::time::Duration;

use mailledger::startup::Application;
use serde_json::Value;

use crate::support::servers::PgCluster;
use crate::support::{Cleanup, Isolation, client_with_key, eventually, grpc_with_key, make_key, original_payload};

async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

async fn replica_sql(replica: &PgCluster, sql: &str) {
    let pool = sqlx::PgPool::connect(&replica.url("postgres")).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
}

struct Running {
    base: String,
    grpc: String,
    metrics: String,
    stop: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

async fn start(iso: &Isolation, primary: &PgCluster, replica: &PgCluster, max_lag: &str) -> Running {
    let settings = iso.settings(&[
        ("MAILLEDGER_DATABASE_URL", &primary.url(&iso.database)),
        ("MAILLEDGER_DATABASE_READ_URL", &replica.url(&iso.database)),
        ("MAILLEDGER__DATABASE__READ_MAX_LAG", max_lag),
    ]);
    let app = Application::build(settings).await.expect("the service starts with a replica");
    let base = format!("http://{}", app.http_addr());
    let grpc = format!("http://{}", app.grpc_addr());
    let metrics = format!("http://{}/metrics", app.metrics_addr());
    let stop = app.stopper();
    let handle = tokio::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    Running { base, grpc, metrics, stop, handle }
}

#[tokio::test]
async fn reads_go_to_the_replica_while_it_keeps_up_and_to_the_primary_for_what_it_lacks() {
    let primary = PgCluster::primary();
    let replica = PgCluster::replica_of(&primary);
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let settings = iso.settings(&[("MAILLEDGER_DATABASE_URL", &primary.url(&iso.database))]);
    let pool = mailledger::store::connect(&settings.database).await.unwrap();
    mailledger::store::migrate(&pool).await.unwrap();
    let key = make_key(&pool, "replica", "all", None).await;
    let client = client_with_key(&key);
    let create = |base: String, subject: &'static str| {
        let client = client.clone();
        async move {
            let r = client.post(format!("{base}/api/v1/emails")).json(&original_payload(subject)).send().await.unwrap();
            assert_eq!(r.status(), 202, "{subject}");
            let position = r.headers().get("x-min-position").expect("a write names its position").to_str().unwrap();
            assert!(position.contains('/'), "{position}");
            position.to_owned()
        }
    };
    let found = |base: String, subject: &'static str, position: Option<String>| {
        let client = client.clone();
        async move {
            let mut request = client.get(format!("{base}/api/v1/emails")).query(&[("q", subject)]);
            if let Some(p) = position {
                request = request.header("x-min-position", p);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["total_count"].as_i64().unwrap() > 0
        }
    };

    // 1. A replica allowed to be an hour behind.
    let app = start(&iso, &primary, &replica, "1h").await;
    let (base, metrics) = (app.base.clone(), app.metrics.clone());
    let replica_reads = || metric(&metrics, "mailledger_reads_total{from=\"replica\"}");
    eventually(Duration::from_secs(20), || async { metric(&metrics, "mailledger_replica_usable").await == 1.0 }).await;
    // Keeping up: reads are served by the replica and see what was written.
    create(base.clone(), "alpha").await;
    let before = replica_reads().await;
    eventually(Duration::from_secs(20), || found(base.clone(), "alpha", None)).await;
    assert!(replica_reads().await > before, "the search was served by the replica");
    // The replica stops replaying: a read without a position is served by the (stale)
    // replica, one that names the write's position by the primary, which has it.
    replica_sql(&replica, "SELECT pg_wal_replay_pause()").await;
    let position = create(base.clone(), "bravo").await;
    eventually(Duration::from_secs(20), || found(base.clone(), "bravo", Some(position.clone()))).await;
    assert!(!found(base.clone(), "bravo", None).await, "the paused replica does not have it yet");
    eventually(Duration::from_secs(20), || async { metric(&metrics, "mailledger_replica_lag_bytes").await > 0.0 })
        .await;
    // gRPC writes name their position too, in the answer's metadata.
    let channel = tonic::transport::Channel::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let created = grpc_with_key(channel, &key)
        .create(mailledger::transport::grpc::proto::CreateReq {
            from: "sender@example.com".into(),
            to: "rcpt@example.org".into(),
            subject: "echo".into(),
            message: "over gRPC".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let position = created.metadata().get("x-min-position").expect("a gRPC write names its position");
    assert!(position.to_str().unwrap().contains('/'), "{position:?}");
    app.stop.cancel();
    let _ = app.handle.await;

    // 2. At most 3 s behind: the paused replica is soon too far behind and not read from.
    let app = start(&iso, &primary, &replica, "3s").await;
    let (base, metrics) = (app.base.clone(), app.metrics.clone());
    let replica_reads = || metric(&metrics, "mailledger_reads_total{from=\"replica\"}");
    create(base.clone(), "delta").await;
    eventually(Duration::from_secs(30), || async { metric(&metrics, "mailledger_replica_usable").await == 0.0 }).await;
    assert!(found(base.clone(), "bravo", None).await, "too far behind: the primary answers");
    // Replaying again: the replica catches up and is read from.
    replica_sql(&replica, "SELECT pg_wal_replay_resume()").await;
    eventually(Duration::from_secs(30), || async { metric(&metrics, "mailledger_replica_usable").await == 1.0 }).await;
    let before = replica_reads().await;
    assert!(found(base.clone(), "delta", None).await);
    assert!(replica_reads().await > before, "caught up: the replica answers again");
    // The operator's view.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
        .arg("status")
        .envs(iso.env())
        .env("MAILLEDGER_DATABASE_URL", primary.url(&iso.database))
        .env("MAILLEDGER_DATABASE_READ_URL", replica.url(&iso.database))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("read replica: replayed to ") && stdout.contains("; read from (limit 10s)"), "{stdout}");

    // 3. The primary restarts: reads go on from the replica meanwhile; writes resume after.
    primary.stop();
    let before = replica_reads().await;
    assert!(found(base.clone(), "alpha", None).await, "the replica answers while the primary is down");
    assert!(replica_reads().await > before);
    let r = client.post(format!("{base}/api/v1/emails")).json(&original_payload("lost?")).send().await.unwrap();
    assert_eq!(r.status(), 503, "a write while the primary is away is refused, not half-done");
    primary.start();
    eventually(Duration::from_secs(60), || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client.post(format!("{base}/api/v1/emails")).json(&original_payload("charlie")).send().await;
            r.is_ok_and(|r| r.status() == 202)
        }
    })
    .await;
    eventually(Duration::from_secs(30), || found(base.clone(), "charlie", None)).await;
    app.stop.cancel();
    let _ = app.handle.await;
}
