//! NATS JetStream intake: the original payload, idempotency, poison messages,
//! ack-after-commit and durability across a restart of the service.

use std::time::Duration;

use crate::support::{TestApp, db, eventually, original_payload};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn the_original_payload_is_committed_then_acked() {
    let app = TestApp::spawn().await;
    let payload = br#"{"from":"sender@example.com","to":"rcpt@example.org","subject":"hi","message":"hello"}"#;
    app.publish(&payload[..], None).await;
    eventually(WAIT, || async { app.event_count(None).await == 2 }).await;
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
    let first = db::events(&app.pool).await.into_iter().next().unwrap();
    assert_eq!(first.event_type, "Requested");
    assert_eq!(first.metadata["transport"], "nats");
    assert_eq!(first.metadata["nats_stream_sequence"], "1");
    assert!(app.dead_letters().await.is_empty());
}

#[tokio::test]
async fn the_same_key_twice_makes_one_email() {
    let app = TestApp::spawn_with(&[("MAILLEDGER__NATS__DUPLICATE_WINDOW", "1s")]).await;
    // Payload key, on two messages JetStream sees as different.
    let mut body = original_payload("keyed");
    body["idempotency_key"] = json!("invoice-7");
    app.publish(body.to_string(), Some("a")).await;
    app.publish(body.to_string(), Some("b")).await;
    // Nats-Msg-Id as the key, published again after JetStream's duplicate window.
    app.publish(original_payload("by msg id").to_string(), Some("msg-1")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.publish(original_payload("by msg id").to_string(), Some("msg-1")).await;
    // No key at all: every message is its own email.
    app.publish(original_payload("unkeyed").to_string(), None).await;
    app.publish(original_payload("unkeyed").to_string(), None).await;
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
    assert_eq!(app.email_count().await, 4);
    assert_eq!(app.event_count(None).await, 8);
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_reason_and_bytes_and_the_consumer_goes_on() {
    let app = TestApp::spawn().await;
    let mut conflicting = original_payload("first");
    conflicting["idempotency_key"] = json!("k");
    app.publish(conflicting.to_string(), None).await;
    eventually(WAIT, || async { app.email_count().await == 1 }).await;

    let bad: Vec<(Vec<u8>, &str, Option<&str>)> = vec![
        (b"{not json".to_vec(), "malformed JSON", None),
        (b"\xff\xfe binary".to_vec(), "malformed JSON", None),
        (br#"{"from":"a@example.com","subject":"s","message":"m"}"#.to_vec(), "invalid command: to:", Some("to")),
        (
            json!({"from":"a@example.com","to":"b@example.com","subject":"x\r\nBcc: e@evil.example","message":"m"})
                .to_string()
                .into_bytes(),
            "invalid command: subject: contains a line break",
            Some("subject"),
        ),
        (
            json!({"from":"a@example.com","to":"b@example.com","subject":"other","message":"m","idempotency_key":"k"})
                .to_string()
                .into_bytes(),
            "idempotency key already used",
            None,
        ),
    ];
    for (payload, _, _) in &bad {
        app.publish(payload.clone(), None).await;
    }
    app.publish(original_payload("after the poison").to_string(), None).await;

    eventually(WAIT, || async { app.email_count().await == 2 }).await;
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
    let letters = app.dead_letters().await;
    assert_eq!(letters.len(), bad.len());
    for (letter, (payload, reason, field)) in letters.iter().zip(&bad) {
        assert_eq!(letter.subject.as_str(), format!("{}.dlq.commands", app.iso.namespace));
        assert_eq!(&letter.payload[..], &payload[..], "original bytes kept");
        let headers = &letter.headers;
        let error = headers.get("Mailledger-Error").unwrap().as_str();
        assert!(error.contains(reason), "{error:?} should contain {reason:?}");
        assert_eq!(headers.get("Mailledger-Error-Field").map(|v| v.as_str()), *field);
        assert_eq!(
            headers.get("Mailledger-Original-Subject").unwrap().as_str(),
            format!("{}.commands.create", app.iso.namespace)
        );
        assert!(headers.get("Mailledger-Original-Sequence").is_some());
    }
    assert_eq!(app.event_count(None).await, 4, "nothing from the poison reached the store");
}

#[tokio::test]
async fn a_command_whose_commit_fails_is_redelivered_not_lost() {
    let app = TestApp::spawn().await;
    db::break_store(&app.pool).await;
    app.publish(original_payload("waits for the store").to_string(), None).await;
    // Delivered, refused by the store, nak'ed: still in the stream, not dead-lettered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.commands_left().await, 1);
    assert!(app.dead_letters().await.is_empty());
    db::mend_store(&app.pool).await;
    eventually(WAIT, || async { app.event_count(None).await == 2 }).await;
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
}

#[tokio::test]
async fn commands_published_while_the_service_is_down_are_all_committed_after_restart() {
    let mut app = TestApp::spawn().await;
    app.publish(original_payload("before").to_string(), None).await;
    eventually(WAIT, || async { app.email_count().await == 1 }).await;
    let took = app.stop().await;
    assert!(took < Duration::from_secs(5), "graceful shutdown took {took:?}");
    for i in 0..50 {
        app.publish(original_payload(&format!("while down {i}")).to_string(), Some(&format!("down-{i}"))).await;
    }
    assert_eq!(app.commands_left().await, 50);
    let iso = app.iso.clone();
    std::mem::forget(app); // keep the isolation (its Drop would delete it)
    let app = TestApp::spawn_in(iso, &[]).await;
    eventually(WAIT, || async { app.email_count().await == 51 }).await;
    eventually(WAIT, || async { app.commands_left().await == 0 }).await;
    assert_eq!(app.event_count(None).await, 102);
}
