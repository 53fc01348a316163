//! Signed status webhooks against real receivers (an HTTP server per test, answering as
//! scripted) and the real sender (the in-process SMTP sink): outcomes delivered signed
//! and in order, retries, 410, a slow endpoint beside a fast one, replays, rotation,
//! the SSRF guard, bad input and tenants.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::receiver::{Hit, Receiver};
use crate::support::smtp::SmtpSink;
use crate::support::{TestApp, client_with_key, db, eventually};

const WAIT: Duration = Duration::from_secs(30);

/// Quick retries, and receivers on 127.0.0.1 allowed.
const QUICK: &[(&str, &str)] = &[
    ("MAILLEDGER__WEBHOOKS__ALLOW_PRIVATE", "true"),
    ("MAILLEDGER__WEBHOOKS__POLL_INTERVAL", "50ms"),
    ("MAILLEDGER__WEBHOOKS__BACKOFF", "100ms"),
];

async fn app_with(sink: &SmtpSink, extra: &[(&str, &str)]) -> TestApp {
    let mut env = QUICK.to_vec();
    env.extend_from_slice(extra);
    TestApp::sending_to(sink, &env).await
}

fn email(subject: &str, to: &[&str]) -> Value {
    json!({"from": "sender@example.com", "to": to, "subject": subject, "message": format!("body of {subject}")})
}

/// Registers an endpoint with `client`; returns (id, secret).
async fn register(app: &TestApp, client: &reqwest::Client, url: &str, kinds: &[&str]) -> (String, String) {
    let r = client.post(app.url("/api/v1/webhooks")).json(&json!({"url": url, "kinds": kinds})).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let body: Value = r.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

/// Waits until `receiver` has answered 2xx to events of these ids (at least).
async fn wait_ids(receiver: &Receiver, want: usize) {
    eventually(WAIT, || async { delivered(receiver).len() >= want }).await;
}

/// The hits that carry an event, by event id, in arrival order.
fn delivered(receiver: &Receiver) -> Vec<Hit> {
    receiver.hits().into_iter().filter(|h| !h.id().is_empty()).collect()
}

async fn deliveries(app: &TestApp, client: &reqwest::Client, endpoint: &str, query: &str) -> Value {
    let r = client.get(app.url(&format!("/api/v1/webhooks/{endpoint}/deliveries{query}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn sent_failed_dead_lettered_and_suppressed_are_delivered_signed_and_in_order() {
    let sink = SmtpSink::start().await;
    sink.refuse("gone@example.org", 550, "5.1.1 no such user", Some(1));
    let receiver = Receiver::start().await;
    let app = app_with(&sink, &[]).await;
    let kinds = ["sent", "failed", "dead_lettered", "suppressed"];
    let (endpoint, secret) = register(&app, &app.client, &receiver.url(), &kinds).await;
    assert!(secret.starts_with("whsec_"));

    // A transient failure, then sent.
    sink.script(&[(451, "4.3.0 try again later")]);
    let a = app.create(&email("a", &["ok@example.org"])).await;
    app.wait_types(&a, &["Requested", "Persisted", "Failed", "Sent"]).await;
    // Refused for good: failed and dead-lettered; then suppressed (and sent to the other).
    let b = app.create(&email("b", &["gone@example.org"])).await;
    app.wait_types(&b, &["Requested", "Persisted", "Failed", "DeadLettered"]).await;
    let c = app.create(&email("c", &["gone@example.org", "ok2@example.org"])).await;
    app.wait_types(&c, &["Requested", "Persisted", "Suppressed", "Sent"]).await;

    wait_ids(&receiver, 6).await;
    let hits = delivered(&receiver);
    assert_eq!(hits.len(), 6, "each event once: {:?}", hits.iter().map(Hit::id).collect::<Vec<_>>());
    let mut by_email: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for h in &hits {
        assert!(h.signed_with(&secret), "signature of {}", h.id());
        assert!(!h.signed_with("whsec_other"), "not any secret");
        assert_eq!(h.signatures(), 1, "one secret, one signature");
        assert_eq!(h.header("content-type").as_deref(), Some("application/json"));
        assert_eq!(h.header("mailledger-event-id"), Some(h.id()));
        assert_eq!(h.path, "/hooks");
        let email_id = h.json["email_id"].as_str().unwrap().to_owned();
        let (id_email, sequence) =
            h.id().split_once(':').map(|(e, s)| (e.to_owned(), s.parse::<i64>().unwrap())).unwrap();
        assert_eq!(id_email, email_id, "the id is <email>:<sequence>");
        assert!(h.json["occurred_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().is_ok());
        assert_eq!(h.json["data"]["tenant"], "default");
        by_email.entry(email_id).or_default().push((sequence, h.json["type"].as_str().unwrap().to_owned()));
    }
    let kinds_of = |id: &str| by_email[id].iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>();
    assert_eq!(kinds_of(&a), ["failed", "sent"], "in order per email");
    assert_eq!(kinds_of(&b), ["failed", "dead_lettered"]);
    assert_eq!(kinds_of(&c), ["suppressed", "sent"]);
    for (_, events) in by_email {
        assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "sequence order: {events:?}");
    }
    let sent = hits.iter().find(|h| h.json["email_id"] == a.as_str() && h.json["type"] == "sent").unwrap();
    assert_eq!(sent.json["data"]["reply_code"], 250);
    assert_eq!(sent.json["data"]["attempt"], 2, "after the 451");
    assert!(sent.json["data"].get("recipients").is_none(), "absent: every recipient (as in the event)");
    let dead = hits.iter().find(|h| h.json["type"] == "dead_lettered").unwrap();
    assert!(dead.json["data"]["reason"].as_str().is_some());
    let suppressed = hits.iter().find(|h| h.json["type"] == "suppressed").unwrap();
    assert_eq!(suppressed.json["data"]["recipients"], json!(["gone@example.org"]));

    // The secret was shown once: neither the list nor the endpoint shows it.
    for path in ["/api/v1/webhooks".to_owned(), format!("/api/v1/webhooks/{endpoint}")] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, 200);
        let text = body.to_string();
        assert!(!text.contains(&secret) && !text.contains("whsec_") && !text.contains("\"secret\""), "{text}");
    }
    // The delivery log: every delivery delivered in one attempt.
    let log = deliveries(&app, &app.client, &endpoint, "").await;
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    for d in items {
        assert_eq!(d["status"], "delivered", "{d}");
        assert_eq!(d["log"][0]["status_code"], 200);
        assert_eq!(d["log"][0]["excerpt"], "receiver says 200");
    }
}

#[tokio::test]
async fn a_500_is_retried_until_a_2xx_and_every_attempt_is_logged() {
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.script(&[500, 503]);
    let app = app_with(&sink, &[]).await;
    let (endpoint, secret) = register(&app, &app.client, &receiver.url(), &["sent"]).await;
    let id = app.create(&email("retried", &["a@example.org"])).await;
    eventually(WAIT, || async { receiver.answered() >= 3 }).await;
    let hits = delivered(&receiver);
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.id() == format!("{id}:3") && h.signed_with(&secret)));
    assert!(hits.windows(2).all(|w| w[0].body == w[1].body), "the same body every time");
    let attempts: Vec<_> = hits.iter().map(|h| h.header("mailledger-delivery-attempt").unwrap()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &endpoint, "").await["items"][0]["status"] == "delivered"
    })
    .await;
    let log = deliveries(&app, &app.client, &endpoint, "").await;
    let d = &log["items"][0];
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["event_id"], format!("{id}:3"));
    let codes: Vec<_> = d["log"].as_array().unwrap().iter().map(|a| a["status_code"].clone()).collect();
    assert_eq!(codes, [json!(500), json!(503), json!(200)]);
    let outcomes: Vec<_> = d["log"].as_array().unwrap().iter().map(|a| a["outcome"].clone()).collect();
    assert_eq!(outcomes, [json!("retry"), json!("retry"), json!("delivered")]);
    assert_eq!(d["log"][0]["excerpt"], "receiver says 500");
    assert!(d["log"][0]["latency_ms"].is_i64());
    // A success ends the run of failures.
    let (_, e) = app.get_json(&format!("/api/v1/webhooks/{endpoint}")).await;
    assert_eq!(e["consecutive_failures"], 0);

    // A long answer: 1 KiB of it is kept.
    receiver.answer_with(100_000);
    let second = app.create(&email("long answer", &["a@example.org"])).await;
    eventually(WAIT, || async { delivered(&receiver).iter().any(|h| h.id() == format!("{second}:3")) }).await;
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &endpoint, "?status=delivered").await["items"].as_array().unwrap().len() == 2
    })
    .await;
    let log = deliveries(&app, &app.client, &endpoint, "?limit=1").await;
    assert_eq!(log["items"][0]["log"][0]["excerpt"].as_str().unwrap().len(), 1024);
    assert!(log["next_before"].is_i64(), "a second page");
}

#[tokio::test]
async fn a_410_disables_the_endpoint_until_it_is_enabled_again() {
    let sink = SmtpSink::start().await;
    let gone = Receiver::start().await;
    gone.always(410);
    let healthy = Receiver::start().await;
    let app = app_with(&sink, &[]).await;
    let (endpoint, _) = register(&app, &app.client, &gone.url(), &["sent"]).await;
    register(&app, &app.client, &healthy.url(), &["sent"]).await;
    let first = app.create(&email("first", &["a@example.org"])).await;
    wait_ids(&healthy, 1).await;
    eventually(WAIT, || async { app.get_json(&format!("/api/v1/webhooks/{endpoint}")).await.1["enabled"] == false })
        .await;
    let (_, e) = app.get_json(&format!("/api/v1/webhooks/{endpoint}")).await;
    assert!(e["disabled_reason"].as_str().unwrap().contains("410"), "{e}");
    assert_eq!(gone.hits().len(), 1, "a 410 is not retried");
    let log = deliveries(&app, &app.client, &endpoint, "").await;
    assert_eq!(log["items"][0]["status"], "pending", "kept for when the endpoint is back");
    assert_eq!(log["items"][0]["log"][0]["outcome"], "gone");

    // Nothing more is queued for it while disabled.
    let second = app.create(&email("second", &["a@example.org"])).await;
    eventually(WAIT, || async { delivered(&healthy).iter().any(|h| h.id() == format!("{second}:3")) }).await;
    assert_eq!(db::webhook_deliveries_of(&app.pool, &endpoint).await, 1);

    // Enabled again: what waited is sent.
    gone.always(200);
    let r = app.client.patch(app.url(&format!("/api/v1/webhooks/{endpoint}"))).json(&json!({"enabled": true})).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 200);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["enabled"], true);
    assert!(e["disabled_reason"].is_null());
    eventually(WAIT, || async { gone.answered() == 2 }).await;
    assert_eq!(gone.hits()[1].id(), format!("{first}:3"));
    let events: Vec<_> =
        db::webhook_events(&app.pool).await.into_iter().filter(|e| e.aggregate_id == endpoint).collect();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["WebhookEndpointRegistered", "WebhookEndpointDisabled", "WebhookEndpointChanged"]);
    assert_eq!(events[1].fields()["by"], "webhooks");
    assert_eq!(events[2].fields()["enabled"], true);
}

#[tokio::test]
async fn a_slow_endpoint_does_not_delay_another() {
    let sink = SmtpSink::start().await;
    let slow = Receiver::start_with(true).await;
    let fast = Receiver::start().await;
    // Four slots in all, two per endpoint: without the per-endpoint bound the slow
    // endpoint's deliveries would take every slot.
    let app = app_with(
        &sink,
        &[
            ("MAILLEDGER__WEBHOOKS__CONCURRENCY", "4"),
            ("MAILLEDGER__WEBHOOKS__PER_ENDPOINT", "2"),
            ("MAILLEDGER__WEBHOOKS__TIMEOUT", "120s"),
        ],
    )
    .await;
    let (slow_id, _) = register(&app, &app.client, &slow.url(), &["sent"]).await;
    register(&app, &app.client, &fast.url(), &["sent"]).await;
    let mut ids = vec![];
    for i in 0..6 {
        ids.push(app.create(&email(&format!("m{i}"), &["a@example.org"])).await);
    }
    wait_ids(&fast, 6).await;
    assert_eq!(slow.answered(), 0, "the slow endpoint has answered nothing yet");
    assert!(slow.hits().len() <= 2, "at most per_endpoint requests held: {}", slow.hits().len());
    slow.release();
    eventually(WAIT, || async { slow.answered() == 6 }).await;
    let mut got: Vec<String> = delivered(&slow).iter().map(Hit::id).collect();
    got.sort();
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id}:3")).collect();
    want.sort();
    assert_eq!(got, want);
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &slow_id, "?status=delivered").await["items"].as_array().unwrap().len() == 6
    })
    .await;
}

/// `webhooks.per_endpoint` holds across instances: two dispatchers on one store, two
/// slots per endpoint, a receiver that holds every request. Each instance alone would
/// allow two; together they never hold more than two, and every delivery still arrives
/// once when the receiver lets go.
#[tokio::test]
async fn per_endpoint_holds_across_two_instances() {
    let sink = SmtpSink::start().await;
    let slow = Receiver::start_with(true).await;
    let limits = [("MAILLEDGER__WEBHOOKS__PER_ENDPOINT", "2"), ("MAILLEDGER__WEBHOOKS__TIMEOUT", "120s")];
    let app = app_with(&sink, &limits).await;
    let mut env = QUICK.to_vec();
    env.extend_from_slice(&limits);
    let _second = app.sibling(&env).await;
    let (endpoint, _) = register(&app, &app.client, &slow.url(), &["sent"]).await;
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(app.create(&email(&format!("m{i}"), &["a@example.org"])).await);
    }
    eventually(WAIT, || async { slow.hits().len() >= 2 }).await;
    // Both dispatchers look every 50 ms and all eight are due: 40 looks each to overreach.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(slow.hits().len(), 2, "two held in all, not two per instance");
    slow.release();
    eventually(WAIT, || async { slow.answered() == 8 }).await;
    let mut got: Vec<String> = delivered(&slow).iter().map(Hit::id).collect();
    got.sort();
    got.dedup();
    let mut want: Vec<String> = ids.iter().map(|id| format!("{id}:3")).collect();
    want.sort();
    assert_eq!(got, want, "each once");
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &endpoint, "?status=delivered").await["items"].as_array().unwrap().len() == 8
    })
    .await;
}

#[tokio::test]
async fn a_range_or_one_delivery_is_replayed_with_the_same_id_and_body() {
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    let app = app_with(&sink, &[]).await;
    let (endpoint, secret) = register(&app, &app.client, &receiver.url(), &["sent"]).await;
    let since = chrono::Utc::now().to_rfc3339();
    for i in 0..3 {
        app.create(&email(&format!("m{i}"), &["a@example.org"])).await;
    }
    wait_ids(&receiver, 3).await;
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &endpoint, "?status=delivered").await["items"].as_array().unwrap().len() == 3
    })
    .await;
    let first = delivered(&receiver);

    let replay =
        |body: Value| app.client.post(app.url(&format!("/api/v1/webhooks/{endpoint}/replay"))).json(&body).send();
    let r = replay(json!({"since": since, "until": chrono::Utc::now().to_rfc3339()})).await.unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["queued"], 3);
    wait_ids(&receiver, 6).await;
    let again = &delivered(&receiver)[3..];
    for h in again {
        let before = first.iter().find(|f| f.id() == h.id()).expect("the same event id");
        assert_eq!(before.body, h.body, "the same body");
        assert!(h.signed_with(&secret));
    }

    // One delivery by id.
    let log = deliveries(&app, &app.client, &endpoint, "?limit=1").await;
    let one = log["items"][0]["id"].as_i64().unwrap();
    let event = log["items"][0]["event_id"].as_str().unwrap().to_owned();
    let r = replay(json!({"delivery_id": one})).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["queued"], 1);
    wait_ids(&receiver, 7).await;
    assert_eq!(delivered(&receiver)[6].id(), event);

    // Bad replays.
    for (body, status) in [
        (json!({}), 422),
        (json!({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"}), 422),
        (json!({"delivery_id": 999_999}), 422),
        (json!({"since": "yesterday"}), 400),
        (json!({"everything": true}), 400),
    ] {
        let r = replay(body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].is_string(), "{e}");
    }
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one_for_the_grace_period() {
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    // Secrets sealed at rest with a key of the test's own.
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "7f".repeat(32)).unwrap();
    let key_path = key.path().to_str().unwrap().to_owned();
    let app = app_with(&sink, &[("MAILLEDGER__WEBHOOKS__ENCRYPTION_KEY", &key_path)]).await;
    let (endpoint, old) = register(&app, &app.client, &receiver.url(), &["sent"]).await;
    let (stored, _) = db::webhook_stored_secrets(&app.pool, &endpoint).await;
    assert!(stored.starts_with("enc:v1:") && !stored.contains(&old[6..]), "sealed: {stored}");
    let rotate =
        |body: Value| app.client.post(app.url(&format!("/api/v1/webhooks/{endpoint}/rotate"))).json(&body).send();
    let r = rotate(json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let new = body["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(body["previous_secret_until"].is_string());
    app.create(&email("rotated", &["a@example.org"])).await;
    wait_ids(&receiver, 1).await;
    let h = &delivered(&receiver)[0];
    assert_eq!(h.signatures(), 2);
    assert!(h.signed_with(&new) && h.signed_with(&old), "both valid during the grace period");
    let (stored, previous) = db::webhook_stored_secrets(&app.pool, &endpoint).await;
    assert!(stored.starts_with("enc:v1:") && previous.unwrap().starts_with("enc:v1:"));

    // No grace: only the new one.
    let r = rotate(json!({"grace": "0s"})).await.unwrap();
    let newer = r.json::<Value>().await.unwrap()["secret"].as_str().unwrap().to_owned();
    app.create(&email("rotated again", &["a@example.org"])).await;
    wait_ids(&receiver, 2).await;
    let h = &delivered(&receiver)[1];
    assert_eq!(h.signatures(), 1);
    assert!(h.signed_with(&newer) && !h.signed_with(&new) && !h.signed_with(&old));
    for bad in [json!({"grace": "soon"}), json!({"grace": "90d"})] {
        assert_eq!(rotate(bad).await.unwrap().status(), 422);
    }
    // Each change is an event (who, when), never with a secret.
    let events = db::webhook_events(&app.pool).await;
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["WebhookEndpointRegistered", "WebhookSecretRotated", "WebhookSecretRotated"]);
    assert!(events.iter().all(|e| e.aggregate_id == endpoint && e.fields()["by"] == "tests"), "{:?}", events[0]);
    for e in &events {
        let text = format!("{} {}", e.payload, e.metadata);
        assert!(!text.contains("whsec_"), "a secret in an event: {text}");
    }
}

#[tokio::test]
async fn private_addresses_are_refused_without_allow_private() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn().await;
    for url in [
        receiver.url(),
        "http://localhost/x".into(),
        "http://169.254.169.254/latest".into(),
        "http://[::1]/".into(),
        "http://10.0.0.1/".into(),
    ] {
        let r = app.post_json("/api/v1/webhooks", &json!({"url": url, "kinds": ["sent"]})).await;
        assert_eq!(r.status(), 422, "{url}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["fields"][0]["field"], "url");
        assert!(e["error"]["message"].as_str().unwrap().contains("not a public address"), "{e}");
    }
    assert_eq!(app.get_json("/api/v1/webhooks").await.1, json!([]));
}

#[tokio::test]
async fn a_delivery_to_a_private_address_is_refused_at_send_time_too() {
    // One instance registers (allowed) and sends nothing; its sibling sends, with the
    // guard on: the attempt is refused before any connection.
    let receiver = Receiver::start().await;
    let sink = SmtpSink::start().await;
    let app = app_with(&sink, &[("MAILLEDGER__WEBHOOKS__ENABLED", "false")]).await;
    let (endpoint, _) = register(&app, &app.client, &receiver.url(), &["sent"]).await;
    let _guarded = app
        .sibling(&[("MAILLEDGER__WEBHOOKS__POLL_INTERVAL", "50ms"), ("MAILLEDGER__WEBHOOKS__BACKOFF", "100ms")])
        .await;
    app.create(&email("guarded", &["a@example.org"])).await;
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &endpoint, "").await["items"][0]["attempts"].as_i64().unwrap_or(0) >= 1
    })
    .await;
    let log = deliveries(&app, &app.client, &endpoint, "").await;
    let attempt = &log["items"][0]["log"][0];
    assert!(attempt["status_code"].is_null());
    assert!(attempt["error"].as_str().unwrap().contains("not a public address"), "{attempt}");
    assert!(receiver.hits().is_empty(), "no request reached the receiver");
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(QUICK).await;
    let url = receiver.url();
    let post = |body: String| {
        app.client.post(app.url("/api/v1/webhooks")).header("content-type", "application/json").body(body).send()
    };
    for (body, status, field) in [
        (json!({"url": "ftp://example.com/", "kinds": ["sent"]}), 422, Some("url")),
        (json!({"url": "not a url", "kinds": ["sent"]}), 422, Some("url")),
        (json!({"url": "https://user:pw@example.com/", "kinds": ["sent"]}), 422, Some("url")),
        (json!({"url": "http://no-such-host.invalid/", "kinds": ["sent"]}), 422, Some("url")),
        (json!({"kinds": ["sent"]}), 422, Some("url")),
        (json!({"url": url, "kinds": ["opened"]}), 422, Some("kinds")),
        (json!({"url": url, "kinds": []}), 422, Some("kinds")),
        (json!({"url": url}), 422, Some("kinds")),
        (json!({"url": url, "kinds": ["sent"], "description": "a\u{1b}[31m"}), 422, Some("description")),
        (json!({"url": url, "kinds": ["sent"], "secret": "mine"}), 400, None),
        (json!({"url": url, "kinds": "sent"}), 400, None),
    ] {
        let r = post(body.to_string()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"]["message"].is_string(), "{e}");
        if let Some(field) = field {
            assert_eq!(e["error"]["fields"][0]["field"], field, "{e}");
        }
    }
    let r = post("{".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    let huge = json!({"url": url, "kinds": ["sent"], "description": "x".repeat(20_000)}).to_string();
    assert_eq!(post(huge).await.unwrap().status(), 413);
    assert_eq!(app.get_json("/api/v1/webhooks").await.1, json!([]), "nothing was registered");

    // A duplicate is a conflict; the first is kept as it was.
    let (id, _) = register(&app, &app.client, &url, &["sent", "sent", "failed"]).await;
    let r = post(json!({"url": url, "kinds": ["failed"]}).to_string()).await.unwrap();
    assert_eq!(r.status(), 409);
    let list = app.get_json("/api/v1/webhooks").await.1;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["kinds"], json!(["sent", "failed"]), "repeats dropped");

    // Unknown and malformed ids, bad changes, bad log parameters.
    for path in ["/api/v1/webhooks/nope", "/api/v1/webhooks/00000000-0000-0000-0000-000000000000"] {
        assert_eq!(app.get_json(path).await.0, 404);
    }
    let patch = |body: Value| app.client.patch(app.url(&format!("/api/v1/webhooks/{id}"))).json(&body).send();
    assert_eq!(patch(json!({"kinds": ["bounced"]})).await.unwrap().status(), 422);
    assert_eq!(patch(json!({"url": "gopher://x/"})).await.unwrap().status(), 422);
    assert_eq!(patch(json!({"secret": "x"})).await.unwrap().status(), 400);
    assert_eq!(app.get_json(&format!("/api/v1/webhooks/{id}")).await.1["kinds"], json!(["sent", "failed"]));
    for q in ["?status=lost", "?limit=0", "?limit=501", "?since=yesterday"] {
        let r = app.client.get(app.url(&format!("/api/v1/webhooks/{id}/deliveries{q}"))).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }

    // Without the scope: 403; without a key: 401.
    let reader = client_with_key(&app.new_key(json!({"name": "reader", "scopes": "send,read"})).await);
    let r = reader.get(app.url("/api/v1/webhooks")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("webhooks"));
    assert_eq!(reqwest::get(app.url("/api/v1/webhooks")).await.unwrap().status(), 401);

    // Deleted: gone.
    let r = app.client.delete(app.url(&format!("/api/v1/webhooks/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.get_json(&format!("/api/v1/webhooks/{id}")).await.0, 404);
    let types: Vec<_> = db::webhook_events(&app.pool).await.into_iter().map(|e| e.event_type).collect();
    assert_eq!(types, ["WebhookEndpointRegistered", "WebhookEndpointDeleted"], "refused input recorded nothing");
}

#[tokio::test]
async fn a_tenant_sees_and_hears_only_its_own() {
    let sink = SmtpSink::start().await;
    let app = app_with(&sink, &[]).await;
    let acme =
        client_with_key(&app.new_key(json!({"name": "acme", "scopes": "send,read,webhooks", "tenant": "acme"})).await);
    let globex = client_with_key(
        &app.new_key(json!({"name": "globex", "scopes": "send,read,webhooks", "tenant": "globex"})).await,
    );
    let (to_acme, to_globex) = (Receiver::start().await, Receiver::start().await);
    let (acme_endpoint, _) = register(&app, &acme, &to_acme.url(), &["sent"]).await;
    let (globex_endpoint, _) = register(&app, &globex, &to_globex.url(), &["sent"]).await;

    let send = |client: &reqwest::Client, subject: &str| {
        client.post(app.url("/api/v1/emails")).json(&email(subject, &["a@example.org"])).send()
    };
    let a: Value = send(&acme, "for acme").await.unwrap().json().await.unwrap();
    let g: Value = send(&globex, "for globex").await.unwrap().json().await.unwrap();
    let d: Value = send(&app.client, "for default").await.unwrap().json().await.unwrap();
    let (a, g, d) = (a["id"].as_str().unwrap(), g["id"].as_str().unwrap(), d["id"].as_str().unwrap());
    app.wait_types(d, &["Requested", "Persisted", "Sent"]).await;
    wait_ids(&to_acme, 1).await;
    wait_ids(&to_globex, 1).await;
    app.wait_types(a, &["Requested", "Persisted", "Sent"]).await;
    app.wait_types(g, &["Requested", "Persisted", "Sent"]).await;
    assert_eq!(delivered(&to_acme).iter().map(|h| h.json["email_id"].clone()).collect::<Vec<_>>(), [json!(a)]);
    assert_eq!(delivered(&to_globex).iter().map(|h| h.json["email_id"].clone()).collect::<Vec<_>>(), [json!(g)]);
    assert_eq!(delivered(&to_globex)[0].json["data"]["tenant"], "globex");

    // Each sees only its own; another tenant's endpoint is not found, for every verb.
    let listed: Value = acme.get(app.url("/api/v1/webhooks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], acme_endpoint.as_str());
    let theirs = format!("/api/v1/webhooks/{globex_endpoint}");
    assert_eq!(acme.get(app.url(&theirs)).send().await.unwrap().status(), 404);
    assert_eq!(acme.patch(app.url(&theirs)).json(&json!({"enabled": false})).send().await.unwrap().status(), 404);
    assert_eq!(acme.post(app.url(&format!("{theirs}/rotate"))).json(&json!({})).send().await.unwrap().status(), 404);
    assert_eq!(acme.get(app.url(&format!("{theirs}/deliveries"))).send().await.unwrap().status(), 404);
    let r = acme.post(app.url(&format!("{theirs}/replay"))).json(&json!({"since": "2020-01-01T00:00:00Z"})).send();
    assert_eq!(r.await.unwrap().status(), 404);
    assert_eq!(acme.delete(app.url(&theirs)).send().await.unwrap().status(), 404);
    let r = acme.get(app.url("/api/v1/webhooks?tenant=globex")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = acme
        .post(app.url("/api/v1/webhooks"))
        .json(&json!({"url": to_acme.url(), "kinds": ["sent"], "tenant": "globex"}));
    assert_eq!(r.send().await.unwrap().status(), 403);
    // The admin key sees both.
    assert_eq!(app.get_json("/api/v1/webhooks").await.1.as_array().unwrap().len(), 2);
    assert_eq!(app.get_json("/api/v1/webhooks?tenant=globex").await.1.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_endpoint_failing_again_and_again_is_paused_alerted_on_and_resumed() {
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.always(500);
    let app = app_with(&sink, &[("MAILLEDGER__WEBHOOKS__PAUSE_AFTER", "3")]).await;
    let scrape = || async { app.client.get(&app.metrics).send().await.unwrap().text().await.unwrap() };
    // The counter is the test process's (every test's service counts into it): this
    // pause must add one to whatever it holds.
    let pauses = || async {
        scrape()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("mailledger_webhook_endpoint_pauses_total ")?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let pauses_before = pauses().await;
    let (endpoint, _) = register(&app, &app.client, &receiver.url(), &["sent"]).await;
    let id = app.create(&email("paused", &["a@example.org"])).await;
    let path = format!("/api/v1/webhooks/{endpoint}");
    eventually(WAIT, || async { app.get_json(&path).await.1["paused_at"].is_string() }).await;
    let (_, e) = app.get_json(&path).await;
    assert_eq!(e["consecutive_failures"], 3);
    assert_eq!(e["enabled"], true, "paused, not disabled");
    assert_eq!(receiver.hits().len(), 3, "nothing is sent to a paused endpoint");
    eventually(WAIT, || async { scrape().await.lines().any(|l| l == "mailledger_webhook_endpoints_paused 1") }).await;
    assert!(pauses().await > pauses_before, "the pause is counted");
    let events = db::webhook_events(&app.pool).await;
    assert_eq!(events.last().unwrap().event_type, "WebhookEndpointPaused");
    assert_eq!(events.last().unwrap().fields()["failures"], 3);

    receiver.always(200);
    let r = app.client.patch(app.url(&path)).json(&json!({"enabled": true})).send().await.unwrap();
    let e: Value = r.json().await.unwrap();
    assert!(e["paused_at"].is_null() && e["consecutive_failures"] == 0, "{e}");
    eventually(WAIT, || async { receiver.answered() == 4 }).await;
    assert_eq!(receiver.hits()[3].id(), format!("{id}:3"));
    eventually(WAIT, || async { scrape().await.lines().any(|l| l == "mailledger_webhook_endpoints_paused 0") }).await;
}

#[tokio::test]
async fn endpoints_over_grpc_and_the_command_line() {
    use mailledger::transport::grpc::proto::{
        CreateWebhookReq, ListWebhookDeliveriesReq, ListWebhooksReq, ReplayWebhookReq, RotateWebhookReq,
        UpdateWebhookReq, WebhookReq,
    };
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    let app = app_with(&sink, &[]).await;
    let mut grpc = app.grpc_client().await;

    let created = grpc
        .create_webhook(CreateWebhookReq {
            url: receiver.url(),
            kinds: vec!["sent".into()],
            description: "over gRPC".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let endpoint = created.endpoint.unwrap();
    assert!(created.secret.starts_with("whsec_"));
    assert_eq!(endpoint.kinds, ["sent"]);
    let id = app.create(&email("over grpc", &["a@example.org"])).await;
    wait_ids(&receiver, 1).await;
    assert!(delivered(&receiver)[0].signed_with(&created.secret));

    let listed = grpc.list_webhooks(ListWebhooksReq::default()).await.unwrap().into_inner();
    assert_eq!(listed.items.len(), 1);
    let got = grpc.get_webhook(WebhookReq { id: endpoint.id.clone() }).await.unwrap().into_inner();
    assert_eq!(got.url, receiver.url());
    eventually(WAIT, || async {
        let mut grpc = app.grpc_client().await;
        let log = grpc
            .list_webhook_deliveries(ListWebhookDeliveriesReq { id: endpoint.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        log.items.first().is_some_and(|d| d.status == "delivered" && d.log[0].status_code == 200)
    })
    .await;
    let replayed = grpc
        .replay_webhook(ReplayWebhookReq {
            id: endpoint.id.clone(),
            since: Some(prost_types::Timestamp::default()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.queued, 1);
    wait_ids(&receiver, 2).await;
    assert_eq!(delivered(&receiver)[1].id(), format!("{id}:3"));
    let rotated = grpc
        .rotate_webhook_secret(RotateWebhookReq { id: endpoint.id.clone(), grace: "1h".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.secret != created.secret && rotated.endpoint.unwrap().previous_secret_until.is_some());
    let off = grpc
        .update_webhook(UpdateWebhookReq { id: endpoint.id.clone(), enabled: Some(false), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(!off.enabled);

    // Bad input, each with a status and a message naming the field.
    let bad = grpc
        .create_webhook(CreateWebhookReq { url: "ftp://x/".into(), kinds: vec!["sent".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().starts_with("URL:"), "{}", bad.message());
    let bad = grpc
        .create_webhook(CreateWebhookReq { url: receiver.url(), kinds: vec!["opened".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert!(bad.message().starts_with("Kinds:"), "{}", bad.message());
    let dup = grpc
        .create_webhook(CreateWebhookReq { url: receiver.url(), kinds: vec!["sent".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let missing = grpc.get_webhook(WebhookReq { id: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let reader = app.new_key(json!({"name": "reader", "scopes": "read"})).await;
    let channel = tonic::transport::Endpoint::from_shared(app.grpc.clone()).unwrap().connect().await.unwrap();
    let mut reader = crate::support::grpc_with_key(channel, &reader);
    let denied = reader.list_webhooks(ListWebhooksReq::default()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    // The command line: add (the secret is the last line), list, disable, deliveries, remove.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailledger"))
            .args(args)
            .envs(app.iso.env())
            .env("MAILLEDGER__WEBHOOKS__ALLOW_PRIVATE", "true")
            .env("USER", "ops")
            .output()
            .unwrap();
        (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let other = format!("http://{}/other", receiver.addr);
    let (code, out, err) = cli(&["webhooks", "add", &other, "--kind", "sent,failed", "--tenant", "acme"]);
    assert_eq!(code, 0, "{err}");
    let secret = out.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{out}");
    let cli_id = out.split_whitespace().next().unwrap().to_owned();
    let (code, out, _) = cli(&["webhooks", "list", "--tenant", "acme"]);
    assert_eq!(code, 0);
    assert!(out.contains(&other) && out.contains("sent,failed") && !out.contains("whsec_"), "{out}");
    let (code, out, _) = cli(&["webhooks", "disable", &cli_id]);
    assert!(code == 0 && out.contains("disabled"), "{out}");
    let (code, out, _) = cli(&["webhooks", "deliveries", &endpoint.id]);
    assert!(code == 0 && out.contains(&format!("{id}:3")) && out.contains("delivered"), "{out}");
    let (code, _, err) = cli(&["webhooks", "add", "gopher://x/", "--kind", "sent"]);
    assert!(code != 0 && err.contains("url"), "{err}");
    let (code, _, err) = cli(&["webhooks", "replay", &cli_id]);
    assert!(code != 0 && err.contains("--since"), "{err}");
    let (code, _, _) = cli(&["webhooks", "remove", &cli_id]);
    assert_eq!(code, 0);
    let (_, out, _) = cli(&["webhooks", "list"]);
    assert!(!out.contains(&other), "{out}");
    assert!(grpc.delete_webhook(WebhookReq { id: endpoint.id.clone() }).await.unwrap().into_inner().deleted);
}

#[tokio::test]
async fn two_dispatchers_send_each_delivery_once() {
    let sink = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    let app = app_with(&sink, &[]).await;
    let _second = app.sibling(QUICK).await;
    let (endpoint, _) = register(&app, &app.client, &receiver.url(), &["sent"]).await;
    for i in 0..12 {
        app.create(&email(&format!("m{i}"), &["a@example.org"])).await;
    }
    eventually(WAIT, || async {
        deliveries(&app, &app.client, &endpoint, "?status=delivered").await["items"].as_array().unwrap().len() == 12
    })
    .await;
    let log = deliveries(&app, &app.client, &endpoint, "").await;
    for d in log["items"].as_array().unwrap() {
        assert_eq!(d["attempts"], 1, "{d}");
        assert_eq!(d["log"].as_array().unwrap().len(), 1, "{d}");
    }
    let mut ids: Vec<String> = delivered(&receiver).iter().map(Hit::id).collect();
    assert_eq!(ids.len(), 12);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12, "no event twice");
}

#[tokio::test]
async fn a_timeout_or_a_refused_connection_is_retried() {
    let sink = SmtpSink::start().await;
    let held = Receiver::start_with(true).await;
    let app = app_with(&sink, &[("MAILLEDGER__WEBHOOKS__TIMEOUT", "300ms")]).await;
    let (slow, _) = register(&app, &app.client, &held.url(), &["sent"]).await;
    let closed = format!("http://127.0.0.1:{}/nobody", crate::support::free_port());
    let (refused, _) = register(&app, &app.client, &closed, &["sent"]).await;
    app.create(&email("unanswered", &["a@example.org"])).await;
    for endpoint in [&slow, &refused] {
        eventually(WAIT, || async {
            deliveries(&app, &app.client, endpoint, "").await["items"][0]["attempts"].as_i64().unwrap_or(0) >= 2
        })
        .await;
        let log = deliveries(&app, &app.client, endpoint, "").await;
        let d = &log["items"][0];
        assert_eq!(d["status"], "pending", "{d}");
        for a in d["log"].as_array().unwrap() {
            assert!(a["status_code"].is_null(), "{a}");
            assert_eq!(a["outcome"], "retry");
            let error = a["error"].as_str().unwrap();
            assert!(!error.contains("127.0.0.1"), "no URL in the error: {error}");
        }
    }
    assert!(held.hits().len() >= 2, "the held receiver saw each attempt");
}

#[tokio::test]
async fn the_delivery_log_keeps_what_is_pending_and_prunes_what_is_done() {
    let sink = SmtpSink::start().await;
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.always(500);
    let app = app_with(&sink, &[("MAILLEDGER__WEBHOOKS__KEEP_LOG", "1ms")]).await;
    let (done, _) = register(&app, &app.client, &ok.url(), &["sent"]).await;
    let (pending, _) = register(&app, &app.client, &failing.url(), &["sent"]).await;
    app.create(&email("pruned", &["a@example.org"])).await;
    wait_ids(&ok, 1).await;
    eventually(WAIT, || async { failing.answered() >= 1 }).await;
    eventually(WAIT, || async { db::webhook_deliveries_of(&app.pool, &done).await == 0 }).await;
    assert_eq!(db::webhook_deliveries_of(&app.pool, &pending).await, 1, "still to send: kept");
}
