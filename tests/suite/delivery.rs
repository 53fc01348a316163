//! The sender saga against a real SMTP server (started by each test, replies scripted):
//! delivery with the right envelope and message, retries with back-off, dead letters,
//! an SMTP outage, exactly-once under volume and with two instances, and redrive.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::smtp::SmtpSink;
use crate::support::{TestApp, db, eventually, original_payload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn app_with(sink: &SmtpSink, extra: &[(&str, &str)]) -> TestApp {
    TestApp::sending_to(sink, extra).await
}

async fn types(app: &TestApp, id: &str) -> Vec<String> {
    app.types(id).await
}

async fn history(app: &TestApp, id: &str) -> Vec<Value> {
    app.history(id).await
}

async fn wait_types(app: &TestApp, id: &str, want: &[&str]) {
    app.wait_types(id, want).await
}

#[tokio::test]
async fn delivered_once_with_the_right_envelope_headers_and_body() {
    let sink = SmtpSink::start().await;
    let app = app_with(&sink, &[]).await;
    let id = app
        .create(&json!({
            "from": "Ann Lee <ann@example.com>",
            "to": ["bob@example.org"],
            "cc": "carol@example.org",
            "bcc": "audit@example.net",
            "reply_to": "replies@example.com",
            "subject": "Quarterly report",
            "message": "Plain text body",
            "html": "<p>HTML body</p>",
            "headers": {"X-Campaign": "q3"}
        }))
        .await;
    wait_types(&app, &id, &["Requested", "Persisted", "Sent"]).await;
    let got = sink.delivered();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.mail_from, "ann@example.com");
    let mut rcpt = m.rcpt_to.clone();
    rcpt.sort();
    assert_eq!(rcpt, ["audit@example.net", "bob@example.org", "carol@example.org"]);
    let (_, view) = app.get_json(&format!("/api/v1/emails/{id}")).await;
    assert_eq!(m.header("Message-ID").as_deref(), view["message_id"].as_str());
    assert_eq!(m.header("Subject").as_deref(), Some("Quarterly report"));
    assert!(m.header("From").unwrap().contains("ann@example.com"));
    assert!(m.header("Date").is_some());
    assert_eq!(m.header("X-Campaign").as_deref(), Some("q3"));
    assert!(m.header("Reply-To").unwrap().contains("replies@example.com"));
    assert!(m.header("Bcc").is_none(), "bcc only in the envelope");
    assert!(m.header("Content-Type").unwrap().starts_with("multipart/alternative"));
    assert!(m.data.contains("Plain text body") && m.data.contains("<p>HTML body</p>"));
    eventually(WAIT, || async { app.get_json(&format!("/api/v1/emails/{id}")).await.1["status"] == "sent" }).await;
    let sent = history(&app, &id).await[2].clone();
    assert_eq!(sent["payload"]["attempt"], 1);
    assert_eq!(sent["payload"]["reply_code"], 250);
    assert_eq!(sent["metadata"]["transport"], "saga");
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_same_message_id() {
    let sink = SmtpSink::start().await;
    sink.script(&[(451, "4.3.0 try again later"), (451, "4.3.0 try again later")]);
    let app = app_with(&sink, &[]).await;
    let id = app.create(&original_payload("retried")).await;
    wait_types(&app, &id, &["Requested", "Persisted", "Failed", "Failed", "Sent"]).await;
    let h = history(&app, &id).await;
    for (i, attempt) in [(2, 1), (3, 2)] {
        assert_eq!(h[i]["payload"]["attempt"], attempt);
        assert_eq!(h[i]["payload"]["reply_code"], 451);
        assert_eq!(h[i]["payload"]["permanent"], false);
        assert!(h[i]["payload"]["next_attempt_at"].is_string());
    }
    assert_eq!(h[4]["payload"]["attempt"], 3);
    let received = sink.received();
    assert_eq!(received.iter().map(|r| r.code).collect::<Vec<_>>(), [451, 451, 250]);
    let ids: Vec<_> = received.iter().map(|r| r.header("Message-ID").unwrap()).collect();
    assert!(ids.iter().all(|m| *m == ids[0]), "one Message-ID on every attempt: {ids:?}");
    // The view follows the events a moment later (projections, then the cache).
    let view_of = || async { app.get_json(&format!("/api/v1/emails/{id}")).await.1 };
    eventually(WAIT, || async { view_of().await["version"] == 5 }).await;
    assert_eq!(view_of().await["attempts"], 3);
}

#[tokio::test]
async fn a_permanent_failure_dead_letters_at_once_and_publishes_a_dead_letter() {
    let sink = SmtpSink::start().await;
    sink.script(&[(550, "5.1.1 no such user")]);
    let app = app_with(&sink, &[]).await;
    let id = app.create(&original_payload("bounced")).await;
    wait_types(&app, &id, &["Requested", "Persisted", "Failed", "DeadLettered"]).await;
    let h = history(&app, &id).await;
    assert_eq!(h[2]["payload"]["permanent"], true);
    assert!(h[3]["payload"]["reason"].as_str().unwrap().contains("550"));
    assert_eq!(sink.received().len(), 1);
    // The dead letter on NATS.
    let stream = format!("{}_DLQ", app.iso.stream_prefix);
    let subject = format!("{}.dlq.emails", app.iso.namespace);
    eventually(WAIT, || async {
        let Ok(mut s) = app.js.get_stream(&stream).await else { return false };
        let last = s.info().await.unwrap().state.last_sequence;
        for seq in 1..=last {
            if let Ok(m) = s.get_raw_message(seq).await
                && m.subject.as_str() == subject
            {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                return v["email_id"] == id.as_str() && v["reason"].as_str().unwrap().contains("550");
            }
        }
        false
    })
    .await;
    // The read model is a projection of its own: it may come a moment after NATS.
    eventually(WAIT, || async { app.get_json(&format!("/api/v1/emails/{id}")).await.1["status"] == "dead_lettered" })
        .await;
}

#[tokio::test]
async fn transient_failures_forever_dead_letter_after_the_maximum() {
    let sink = SmtpSink::start().await;
    sink.always(451, "4.7.1 greylisted");
    let app = app_with(&sink, &[]).await;
    let id = app.create(&original_payload("greylisted")).await;
    wait_types(&app, &id, &["Requested", "Persisted", "Failed", "Failed", "Failed", "DeadLettered"]).await;
    assert_eq!(sink.received().len(), 3, "max_attempts = 3");
    let h = history(&app, &id).await;
    assert!(h[4]["payload"]["next_attempt_at"].is_null(), "no next attempt after the last");
    assert!(h[5]["payload"]["reason"].as_str().unwrap().contains("gave up after 3 attempts"));
}

#[tokio::test]
async fn an_smtp_outage_delays_delivery_it_does_not_lose_it() {
    let mut sink = SmtpSink::start().await;
    sink.stop();
    let app = app_with(&sink, &[("MAILLEDGER_DELIVERY_MAX_ATTEMPTS", "50")]).await;
    let id = app.create(&original_payload("during the outage")).await;
    eventually(WAIT, || async { types(&app, &id).await.iter().filter(|t| *t == "Failed").count() >= 2 }).await;
    let h = history(&app, &id).await;
    assert_eq!(h[2]["payload"]["permanent"], false, "a refused connection is transient");
    assert!(h[2]["payload"]["reply_code"].is_null());
    sink.restart().await;
    eventually(WAIT, || async { types(&app, &id).await.last().map(String::as_str) == Some("Sent") }).await;
    assert_eq!(sink.delivered().len(), 1);
}

async fn exactly_once(sink: &SmtpSink, expected: usize) {
    eventually(WAIT, || async { sink.delivered().len() >= expected }).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a duplicate to show up
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for m in sink.delivered() {
        *by_id.entry(m.header("Message-ID").unwrap()).or_default() += 1;
    }
    assert_eq!(by_id.len(), expected);
    assert!(
        by_id.values().all(|&n| n == 1),
        "duplicates: {:?}",
        by_id.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_hundred_emails_are_each_delivered_exactly_once() {
    let sink = SmtpSink::start().await;
    let app = app_with(&sink, &[]).await;
    let bodies: Vec<Value> = (0..100).map(|i| original_payload(&format!("bulk {i}"))).collect();
    let posts = bodies.iter().map(|b| app.post_json("/api/v1/emails", b));
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.status(), 202);
    }
    exactly_once(&sink, 100).await;
    assert_eq!(db::count_of_type(&app.pool, "Sent").await, 100);
}

#[tokio::test]
async fn two_instances_share_the_work_and_still_deliver_exactly_once() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let extra = [
        ("MAILLEDGER_SMTP_URL", url.as_str()),
        ("MAILLEDGER__DELIVERY__ENABLED", "true"),
        ("MAILLEDGER__DELIVERY__POLL_INTERVAL", "100ms"),
        ("MAILLEDGER__DELIVERY__CONCURRENCY", "4"),
    ];
    let a = TestApp::delivering_to(&url, &extra[3..]).await;
    let b = a.sibling(&extra).await;
    let bodies: Vec<Value> = (0..100).map(|i| original_payload(&format!("shared {i}"))).collect();
    let posts = bodies.iter().enumerate().map(|(i, body)| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.post_json("/api/v1/emails", body)
    });
    for r in futures::future::join_all(posts).await {
        assert_eq!(r.status(), 202);
    }
    exactly_once(&sink, 100).await;
    let workers: std::collections::HashSet<String> = db::events(&a.pool)
        .await
        .into_iter()
        .filter(|e| e.event_type == "Sent")
        .filter_map(|e| e.metadata["worker"].as_str().map(str::to_owned))
        .collect();
    assert!(!workers.is_empty());
    drop(b);
}

#[tokio::test]
async fn a_dead_letter_can_be_redriven_over_rest_and_grpc() {
    use mailledger::transport::grpc::proto::RedriveReq;
    let sink = SmtpSink::start().await;
    sink.script(&[(554, "5.6.0 content refused"), (554, "5.6.0 content refused")]);
    let app = app_with(&sink, &[]).await;
    let id = app.create(&original_payload("redriven")).await;
    wait_types(&app, &id, &["Requested", "Persisted", "Failed", "DeadLettered"]).await;

    let r = app
        .client
        .post(app.url(&format!("/api/v1/emails/{id}/redrive")))
        .json(&json!({"by": "ops@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_types(&app, &id, &["Requested", "Persisted", "Failed", "DeadLettered", "Redriven", "Failed", "DeadLettered"])
        .await;
    let mut grpc = app.grpc_client().await;
    grpc.redrive(RedriveReq { email_id: id.clone(), by: "grpc-ops".into() }).await.unwrap();
    eventually(WAIT, || async { types(&app, &id).await.last().map(String::as_str) == Some("Sent") }).await;
    let h = history(&app, &id).await;
    assert_eq!(h[4]["payload"]["by"], "ops@example.com");
    assert_eq!(h[7]["payload"]["by"], "grpc-ops");
    assert_eq!(h[8]["payload"]["attempt"], 3, "attempt numbers go on across rounds");

    let again = app.client.post(app.url(&format!("/api/v1/emails/{id}/redrive"))).send().await.unwrap();
    assert_eq!(again.status(), 409, "only a dead letter can be redriven");
    let missing =
        app.client.post(app.url("/api/v1/emails/00000000-0000-0000-0000-000000000000/redrive")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let malformed = app.client.post(app.url(&format!("/api/v1/emails/{id}/redrive"))).body("{").send().await.unwrap();
    assert_eq!(malformed.status(), 400);
}

#[tokio::test]
async fn the_file_transport_writes_one_eml_per_email() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let app = TestApp::delivering_to(&url, &[]).await;
    let id = app.create(&original_payload("to a file")).await;
    wait_types(&app, &id, &["Requested", "Persisted", "Sent"]).await;
    let text = std::fs::read_to_string(dir.path().join(format!("{id}.eml"))).unwrap();
    assert!(text.contains("Subject: to a file"));
    assert!(text.contains("body of to a file"));
}

/// The sender's nap ends at the next delivery no live lease holds: deliveries in flight
/// (leased, their lease running) are walked past, an expired lease counts as due, and
/// an empty schedule has no next. (A schedule of many deliveries deferred to later is
/// read along its index, not scanned whole: the EXPLAIN below says so.)
#[tokio::test]
async fn the_next_due_delivery_is_the_earliest_no_live_lease_holds() {
    let iso = crate::support::Isolation::new();
    let _cleanup = crate::support::Cleanup(iso.clone());
    let pool = crate::support::fresh_database(&iso).await;
    assert_eq!(mailledger::saga::schedule::next_due(&pool).await.unwrap(), None);
    let row = |due: &'static str, lease: Option<&'static str>| {
        let pool = pool.clone();
        async move {
            sqlx::query(&format!(
                "INSERT INTO deliveries (email_id, due_at, lease_owner, lease_until, last_sequence, domain) \
                 VALUES (gen_random_uuid(), now() + interval '{due}', {}, {}, 2, 'example.org')",
                if lease.is_some() { "'sender-x'" } else { "NULL" },
                lease.map_or("NULL".to_owned(), |l| format!("now() + interval '{l}'")),
            ))
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // In flight: due a while ago, leased for another minute.
    row("-10 minutes", Some("1 minute")).await;
    row("-5 minutes", Some("1 minute")).await;
    // Deferred: a retry in an hour, another in ten minutes whose old lease ran out.
    row("1 hour", None).await;
    row("10 minutes", Some("-1 minute")).await;
    let next = mailledger::saga::schedule::next_due(&pool).await.unwrap().expect("a next");
    let minutes = (next - chrono::Utc::now()).num_seconds() as f64 / 60.0;
    assert!((9.0..=10.0).contains(&minutes), "the deferred one in ten minutes, not those in flight: {minutes}");
    // A lease that ran out on a delivery already due: due now (the sender claims it).
    row("-1 hour", Some("-1 second")).await;
    let next = mailledger::saga::schedule::next_due(&pool).await.unwrap().expect("a next");
    assert!(next < chrono::Utc::now() - chrono::Duration::minutes(59), "{next}");

    // Read along deliveries_due, not a scan of the schedule (planner statistics say
    // the table is large, as a backlog makes it).
    sqlx::query(
        "INSERT INTO deliveries (email_id, due_at, last_sequence, domain) \
                 SELECT gen_random_uuid(), now() + make_interval(secs => g), 2, 'example.org' \
                 FROM generate_series(1, 20000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE deliveries").execute(&pool).await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", mailledger::saga::schedule::NEXT_DUE))
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(plan.iter().any(|l| l.contains("deliveries_due")), "{plan:#?}");
}

/// A paused domain's backlog is set aside until the pause ends (so the claim's walk in
/// due order does not pass through it every time, slowing every other domain), what is
/// in flight is left alone, and a pause lifted early brings the backlog back at once.
#[tokio::test]
async fn a_paused_domain_s_backlog_is_set_aside_and_comes_back_when_the_pause_lifts() {
    use mailledger::saga::shaping;
    let iso = crate::support::Isolation::new();
    let _cleanup = crate::support::Cleanup(iso.clone());
    let pool = crate::support::fresh_database(&iso).await;
    let settings = iso.settings(&[]).delivery;
    sqlx::query(
        "INSERT INTO domain_pacing (domain, held_until, backoff_s) VALUES ('slow.example', now() + interval '10 minutes', 600)",
    )
    .execute(&pool)
    .await
    .unwrap();
    // 2,000 due for the paused domain ahead of 10 for another, and one of the paused
    // domain's in flight.
    sqlx::query(
        "INSERT INTO deliveries (email_id, due_at, last_sequence, domain) \
         SELECT gen_random_uuid(), now() - interval '1 hour' + make_interval(secs => g), 2, 'slow.example' \
         FROM generate_series(1, 2000) AS g \
         UNION ALL SELECT gen_random_uuid(), now() - interval '1 minute', 2, 'fast.example' FROM generate_series(1, 10)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO deliveries (email_id, due_at, lease_owner, lease_until, last_sequence, domain) \
         VALUES (gen_random_uuid(), now() - interval '2 hours', 'sender-x', now() + interval '1 minute', 2, 'slow.example')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let due = |domain: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM deliveries WHERE domain = $1 AND due_at <= now()")
                .bind(domain)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    assert_eq!(shaping::set_aside_paused(&pool).await.unwrap(), 2000);
    assert_eq!(due("slow.example").await, 1, "only the one in flight, untouched");
    assert_eq!(shaping::set_aside_paused(&pool).await.unwrap(), 0, "set aside once");
    let (claimed, _) =
        shaping::claim(&pool, "sender-y", 5, std::time::Duration::from_secs(60), &settings).await.unwrap();
    assert_eq!(claimed.len(), 5);
    assert!(claimed.iter().all(|c| c.domain == "fast.example"), "{claimed:?}");

    // The domain takes mail again before the pause was to end: its backlog is due now.
    shaping::recovered(&pool, "slow.example").await.unwrap();
    assert_eq!(due("slow.example").await, 2001);
    assert_eq!(shaping::set_aside_paused(&pool).await.unwrap(), 0, "no pause left");
}
