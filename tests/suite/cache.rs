//! The Redis cache: filled by its projection, written by version, read first, refilled
//! on a miss — and never the reason a read fails when Redis is down. And the views each
//! instance keeps in memory in front of it: dropped at the email's next event.

use std::time::{Duration, Instant};

use crate::support::{RedisServer, TestApp, eventually, free_port, original_payload};
use mailledger::query::cache::Cache;
use redis::AsyncCommands;

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// Waits until Redis holds version `version` of the view under `key`.
async fn wait_version(redis: &redis::aio::MultiplexedConnection, key: &str, version: i64) {
    eventually(Duration::from_secs(10), || {
        let (mut redis, key) = (redis.clone(), key.to_owned());
        async move { redis.hget::<_, _, Option<i64>>(&key, "v").await.unwrap() == Some(version) }
    })
    .await;
}

#[tokio::test]
async fn views_are_cached_by_version_read_first_and_refilled() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = format!("file://{}", dir.path().display());
    // Redis itself is under test: no views in memory in front of it.
    let app = TestApp::spawn_with(&[
        ("MAILLEDGER__DELIVERY__ENABLED", "true"),
        ("MAILLEDGER_SMTP_URL", &outbox),
        ("MAILLEDGER__REDIS__LOCAL_VIEWS", "0"),
    ])
    .await;
    let id = app.create(&original_payload("cached")).await;
    // Requested, Persisted, then Sent (to the outbox directory).
    eventually(Duration::from_secs(10), || async { app.event_count(Some(&id)).await == 3 }).await;
    app.wait_projected(1).await;
    let key = format!("t{}:email:v3:{id}", app.iso.suffix);
    let mut redis = redis_conn("redis://127.0.0.1:6379").await;
    wait_version(&redis, &key, 3).await;
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "TTL set: {ttl}");
    // What the projection wrote: the Sent, in a batch of its own, folded onto the
    // Requested and Persisted it found in the feed's tail in memory (checked below
    // against the same view made from PostgreSQL).
    let (_, projected) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!(projected["status"], "sent");

    // Reads come from Redis: a (forged) newer view there is what a reader gets.
    let settings = app.iso.settings(&[]);
    let cache = Cache::new(&settings.redis);
    let mut view = cache.get(id.parse().unwrap()).await.unwrap();
    assert_eq!(view.subject, "cached");
    view.subject = "from the cache".into();
    view.version = 4;
    cache.put_many(std::slice::from_ref(&view)).await.unwrap();
    let (_, body) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!(body["subject"], "from the cache");

    // An older version never overwrites a newer one.
    view.subject = "stale".into();
    view.version = 3;
    cache.put_many(std::slice::from_ref(&view)).await.unwrap();
    assert_eq!(cache.get(view.id).await.unwrap().subject, "from the cache");

    // A miss reads PostgreSQL and refills the cache.
    let _: () = redis.del(&key).await.unwrap();
    let (status, body) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!((status, body["subject"].as_str()), (200, Some("cached")));
    // The refill happens beside the answer, not before it.
    wait_version(&redis, &key, 3).await;

    // A hit is served as stored, and is the same document a miss makes from PostgreSQL.
    let (_, from_cache) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    let _: () = redis.del(&key).await.unwrap();
    let (_, from_postgres) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!(from_cache, from_postgres);
    assert_eq!(projected, from_postgres);
    for path in [format!("/api/v1/emails/{id}"), format!("/api/v1/email/{id}")] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "application/json", "{path}");
    }

    // Something that is not JSON under the key is ignored: the read goes to PostgreSQL.
    let _: () = redis.hset(&key, "view", "{not json").await.unwrap();
    let (status, body) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!((status, body), (200, from_postgres));
    let _: () = redis.del(&key).await.unwrap();
}

#[tokio::test]
async fn reads_survive_redis_going_away_and_the_cache_catches_up_when_it_returns() {
    let mut server = RedisServer::start(free_port());
    let url = server.url();
    let app = TestApp::spawn_with(&[("MAILLEDGER_REDIS_URL", &url)]).await;
    let first = app.create(&original_payload("before the outage")).await;
    app.wait_projected(1).await;
    let mut redis = redis_conn(&url).await;
    let key = |id: &str| format!("t{}:email:v3:{id}", app.iso.suffix);
    eventually(Duration::from_secs(10), || {
        let mut redis = redis.clone();
        let k = key(&first);
        async move { redis.exists::<_, bool>(&k).await.unwrap() }
    })
    .await;

    server.stop();
    let second = app.create(&original_payload("during the outage")).await;
    app.wait_projected(2).await;
    for id in [&first, &second] {
        let started = Instant::now();
        let (status, body) = app.get_json(&format!("/api/v1/emails/{id}")).await;
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < Duration::from_secs(2), "a dead Redis costs at most a short timeout");
    }
    let (status, body) = app.get_json("/api/v1/emails?q=outage").await;
    assert_eq!((status, body["total_count"].as_i64()), (200, Some(2)));

    let server = RedisServer::start(server.port);
    drop(redis);
    redis = redis_conn(&server.url()).await;
    // Redis came back empty; the cache projection resumes from its checkpoint and
    // writes the email it could not write during the outage.
    eventually(Duration::from_secs(15), || {
        let mut redis = redis.clone();
        let k = key(&second);
        async move { redis.exists::<_, bool>(&k).await.unwrap() }
    })
    .await;
}

#[tokio::test]
async fn the_service_starts_and_reads_with_no_redis_at_all() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let app = TestApp::spawn_with(&[("MAILLEDGER_REDIS_URL", &url)]).await;
    let id = app.create(&original_payload("no redis")).await;
    app.wait_projected(1).await;
    let (status, body) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!((status, body["subject"].as_str()), (200, Some("no redis")));
}

#[tokio::test]
async fn views_kept_in_memory_are_dropped_at_the_emails_next_event() {
    use mailledger::command::{EmailCommand, Limits, RecipientFailure, RecordAttemptCommand};
    let app = TestApp::spawn().await;
    let id = app.create(&original_payload("kept in memory")).await;
    app.wait_projected(1).await;
    let key = format!("t{}:email:v3:{id}", app.iso.suffix);
    let mut redis = redis_conn("redis://127.0.0.1:6379").await;
    wait_version(&redis, &key, 2).await;
    let path = format!("/api/v1/emails/{id}");
    // Read once more than it takes for the invalidator to follow the store: now in memory.
    eventually(Duration::from_secs(10), || async {
        let (_, body) = app.get_json(&path).await;
        let served = reqwest::get(&app.metrics).await.unwrap().text().await.unwrap();
        body["subject"] == "kept in memory" && served.contains("mailledger_cache_requests_total{result=\"memory\"}")
    })
    .await;
    // Served from memory: a view changed under Redis's key (no event) is not seen.
    let forged = {
        let json: String = redis.hget(&key, "view").await.unwrap();
        json.replace("kept in memory", "changed in Redis only")
    };
    let _: () = redis.hset(&key, "view", &forged).await.unwrap();
    let (_, body) = app.get_json(&path).await;
    assert_eq!(body["subject"], "kept in memory");
    // A request that asks to read its own writes goes past memory.
    let fresh = app.client.get(app.url(&path)).header("X-Min-Position", "0/0").send().await.unwrap();
    assert_eq!(fresh.json::<serde_json::Value>().await.unwrap()["subject"], "changed in Redis only");

    // The email's next event (a refused attempt) drops it: reads show the attempt as
    // soon as the projections have it, and never the view from memory again.
    let ledger = mailledger::ledger::Ledger::new(app.pool.clone(), Limits::default());
    let now = chrono::Utc::now();
    let attempt = RecordAttemptCommand {
        attempt: 1,
        accepted: vec![],
        reply_code: 0,
        reply_text: String::new(),
        failures: vec![RecipientFailure {
            recipients: vec!["rcpt@example.org".into()],
            error: "451 try again later".into(),
            reply_code: Some(451),
            permanent: false,
        }],
        suppressed: vec![],
        suppression_reason: String::new(),
        at: now,
        retry_at: now + chrono::Duration::hours(1),
        max_attempts: 5,
    };
    let metadata = std::collections::HashMap::from([("tenant".to_owned(), "default".to_owned())]);
    ledger.execute(id.parse().unwrap(), EmailCommand::RecordAttempt(attempt), metadata).await.unwrap();
    eventually(Duration::from_secs(10), || async {
        let (_, body) = app.get_json(&path).await;
        body["attempts"] == 1 && body["subject"] == "kept in memory" && body["version"] == 3
    })
    .await;
}
