//! REST intake: POST /api/v1/emails and the original POST /api/v1/email.

use crate::support::{TestApp, db, original_payload};
use serde_json::{Value, json};

#[tokio::test]
async fn post_records_requested_and_persisted_on_both_paths() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/emails", "/api/v1/email"] {
        let response = app.post_json(path, &original_payload("hello")).await;
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = response.json().await.unwrap();
        let id = body["id"].as_str().unwrap();
        assert_eq!(location, format!("/api/v1/emails/{id}"));
        assert_eq!(app.event_types(id).await, ["Requested", "Persisted"]);
        let stored = app.stored(id, 2).await;
        let (persisted, metadata) = (stored.fields(), &stored.metadata);
        assert_eq!(persisted["from"]["address"], "sender@example.com");
        assert_eq!(persisted["to"][0]["address"], "rcpt@example.org");
        assert!(persisted["message_id"].as_str().unwrap().ends_with("@example.com>"));
        assert!(persisted["size_bytes"].as_u64().unwrap() > 100);
        assert_eq!(metadata["transport"], "rest");
        assert!(metadata["correlation_id"].as_str().is_some());
    }
}

#[tokio::test]
async fn full_payload_with_lists_names_html_and_headers() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/emails",
            &json!({
                "from": "Ann Lee <ann@example.com>",
                "to": ["bob@example.org", "\"Lee, Cé\" <ce@example.org>"],
                "cc": "carol@example.net",
                "bcc": ["dan@example.net"],
                "reply_to": "replies@example.com",
                "subject": "Grüße",
                "message": "plain",
                "html": "<p>html</p>",
                "headers": {"X-Campaign": "spring"}
            }),
        )
        .await;
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
}

#[tokio::test]
async fn idempotency_key_same_body_same_id_other_body_conflict() {
    let app = TestApp::spawn().await;
    let send = |key: &'static str, subject: &'static str| {
        let app = &app;
        async move {
            app.client
                .post(app.url("/api/v1/emails"))
                .header("Idempotency-Key", key)
                .json(&original_payload(subject))
                .send()
                .await
                .unwrap()
        }
    };
    let first = send("order-42", "receipt").await;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let again = send("order-42", "receipt").await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], id.as_str());
    // The body field works like the header, and names the same email.
    let mut body = original_payload("receipt");
    body["idempotency_key"] = json!("order-42");
    let by_field = app.post_json("/api/v1/email", &body).await;
    assert_eq!(by_field.json::<Value>().await.unwrap()["id"], id.as_str());
    assert_eq!(app.event_count(Some(&id)).await, 2, "repeats record nothing new");

    let conflict = send("order-42", "something else").await;
    assert_eq!(conflict.status(), 409);
    let error: Value = conflict.json().await.unwrap();
    assert_eq!(error["error"]["code"], "conflict");
    assert_eq!(app.event_count(None).await, 2);
}

#[tokio::test]
async fn concurrent_retries_of_one_key_make_one_email() {
    let app = TestApp::spawn().await;
    let requests = (0..8).map(|_| {
        app.client.post(app.url("/api/v1/emails")).header("Idempotency-Key", "race").json(&original_payload("r")).send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        ids.insert(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.event_count(None).await, 2);
}

/// Posts a raw body and returns (status, error body).
async fn post_raw(app: &TestApp, body: impl Into<reqwest::Body>, content_type: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/api/v1/emails"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_bad_input_gets_a_clear_error_and_stores_nothing() {
    let app = TestApp::spawn_with(&[
        ("MAILLEDGER__LIMITS__MAX_BODY_BYTES", "1000"),
        ("MAILLEDGER__LIMITS__MAX_RECIPIENTS", "3"),
    ])
    .await;
    let json = "application/json";
    // Broken JSON: 400.
    let (status, body) = post_raw(&app, r#"{"from": "a@example.com", "#, json).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("malformed JSON"));
    // Not JSON at all: 415.
    let (status, _) = post_raw(&app, "from=a", "application/x-www-form-urlencoded").await;
    assert_eq!(status, 415);

    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({}), 422, "from"),
        (json!({"from": "a@example.com", "subject": "s", "message": "m"}), 422, "to"),
        (json!({"from": "a@example.com", "to": "b@example.com", "message": "m"}), 422, "subject"),
        (json!({"from": "a@example.com", "to": "b@example.com", "subject": "s"}), 422, "message"),
        (json!({"from": "not-an-address", "to": "b@example.com", "subject": "s", "message": "m"}), 422, "from"),
        (json!({"from": "a@example.com", "to": ["b@example.com", "b@"], "subject": "s", "message": "m"}), 422, "to[1]"),
        (
            json!({"from": "a@example.com", "to": "b@example.com", "subject": "hi\r\nBcc: x@evil.example", "message": "m"}),
            422,
            "subject",
        ),
        (
            json!({"from": "a@example.com\nBcc: x@evil.example", "to": "b@example.com", "subject": "s", "message": "m"}),
            422,
            "from",
        ),
        (
            json!({"from": "a@example.com", "to": "b@example.com", "subject": "s", "message": "m", "headers": {"X-A": "1\r\nBcc: x@evil.example"}}),
            422,
            "headers.X-A",
        ),
        (
            json!({"from": "a@example.com", "to": "b@example.com", "subject": "s", "message": "m", "headers": {"From": "x@evil.example"}}),
            422,
            "headers.From",
        ),
        (json!({"from": 7, "to": "b@example.com", "subject": "s", "message": "m"}), 422, "from"),
        (json!({"from": "a@example.com", "too": "b@example.com", "subject": "s", "message": "m"}), 422, "too"),
        (
            json!({"from": "a@example.com", "to": "b@example.com", "subject": "s", "message": "x".repeat(1001)}),
            413,
            "message",
        ),
        (
            json!({"from": "a@example.com", "to": ["a@example.com", "b@example.com"], "cc": ["c@example.com", "d@example.com"], "subject": "s", "message": "m"}),
            413,
            "to",
        ),
        (
            json!({"from": "a@example.com", "to": "b@example.com", "subject": "s", "message": "m", "idempotency_key": ""}),
            422,
            "idempotency_key",
        ),
    ];
    for (body, want_status, want_field) in cases {
        let r = app.post_json("/api/v1/emails", &body).await;
        let status = r.status().as_u16();
        let error: Value = r.json().await.unwrap();
        assert_eq!(status, want_status, "{body} → {error}");
        let fields: Vec<&str> =
            error["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert!(fields.contains(&want_field), "{body}: expected field {want_field} in {error}");
        assert!(!error["error"]["message"].as_str().unwrap().is_empty());
    }
    // Over the transport limit (2 × 1000 + 64 KiB): 413 before parsing.
    let huge =
        format!(r#"{{"from":"a@example.com","to":"b@example.com","subject":"s","message":"{}"}}"#, "x".repeat(80_000));
    let (status, body) = post_raw(&app, huge, json).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "too_large");
    // A bad header: 400.
    let r = app
        .client
        .post(app.url("/api/v1/emails"))
        .header("Idempotency-Key", reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap())
        .json(&original_payload("s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    assert_eq!(app.event_count(None).await, 0, "nothing invalid reached the store");
}

#[tokio::test]
async fn a_broken_store_is_a_bare_500_and_dropped_connections_recover() {
    let app = TestApp::spawn().await;
    db::break_store(&app.pool).await;
    let r = app.post_json("/api/v1/emails", &original_payload("during outage")).await;
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert_eq!(text, r#"{"error":{"code":"internal","message":"internal error"}}"#);
    db::mend_store(&app.pool).await;
    // Connections killed under it: the pool reconnects.
    db::kill_other_sessions(&app.pool).await;
    let mut accepted = false;
    for _ in 0..3 {
        let r = app.post_json("/api/v1/emails", &original_payload("after outage")).await;
        if r.status() == 202 {
            accepted = true;
            break;
        }
        assert_eq!(r.status(), 503, "a dropped connection is 'unavailable', not a 500");
    }
    assert!(accepted);
}

#[tokio::test]
async fn health_and_ready_answer() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["ready"], true);
}

#[tokio::test]
async fn the_request_id_is_taken_or_made_echoed_and_recorded() {
    let app = TestApp::spawn().await;
    let sent = app
        .client
        .post(app.url("/api/v1/emails"))
        .header("x-request-id", "req-abc-123")
        .json(&original_payload("traced by id"))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.headers()["x-request-id"], "req-abc-123");
    let id = sent.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert_eq!(app.stored(&id, 1).await.metadata["correlation_id"], "req-abc-123");

    // None, or one that is not a sane token: a new one is made (and echoed on errors too).
    for header in [None, Some("has spaces in it"), Some(&*"x".repeat(200))] {
        let mut r = app.client.get(app.url("/api/v1/emails/not-a-uuid"));
        if let Some(h) = header {
            r = r.header("x-request-id", h);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 400);
        let made = r.headers()["x-request-id"].to_str().unwrap();
        assert!(made.parse::<uuid::Uuid>().is_ok(), "{made:?}");
    }
    let r = app.client.get(app.url("/health")).header("x-correlation-id", "corr-9").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "corr-9", "a correlation id stands in for a missing request id");
}
