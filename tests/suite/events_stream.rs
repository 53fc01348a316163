//! Domain events on NATS: every event on `<ns>.events.<kind>` with message id
//! `<email id>:<sequence>`; a republish is dropped; subscribers replay from the start,
//! from a sequence, from a time, or the last event per subject.

use std::time::Duration;

use crate::support::{TestApp, db, eventually, original_payload};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use serde_json::Value;

async fn replay(app: &TestApp, policy: DeliverPolicy) -> Vec<(String, Value)> {
    let stream = app.js.get_stream(format!("{}_EVENTS", app.iso.stream_prefix)).await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: policy,
            filter_subject: format!("{}.events.>", app.iso.namespace),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = vec![];
    let mut batch = consumer.fetch().max_messages(100).expires(Duration::from_millis(500)).messages().await.unwrap();
    while let Some(Ok(m)) = batch.next().await {
        let id = m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.to_string()).unwrap_or_default();
        out.push((
            m.subject.to_string(),
            serde_json::from_slice::<Value>(&m.payload).unwrap().as_object().cloned().map(Value::Object).unwrap(),
        ));
        assert!(!id.is_empty());
        m.ack().await.unwrap();
    }
    out
}

async fn stream_len(app: &TestApp) -> u64 {
    match app.js.get_stream(format!("{}_EVENTS", app.iso.stream_prefix)).await {
        Ok(mut s) => s.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

#[tokio::test]
async fn events_are_published_once_and_can_be_replayed_every_way() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let app = TestApp::delivering_to(&url, &[]).await;
    let first = app.create(&original_payload("first")).await;
    eventually(Duration::from_secs(20), || async { stream_len(&app).await == 3 }).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = app.create(&original_payload("second")).await;
    eventually(Duration::from_secs(20), || async { stream_len(&app).await == 6 }).await;

    let all = replay(&app, DeliverPolicy::All).await;
    let ns = &app.iso.namespace;
    let subjects: Vec<String> = all.iter().map(|(s, _)| s.replace(ns.as_str(), "NS")).collect();
    assert_eq!(subjects, ["NS.events.requested", "NS.events.persisted", "NS.events.sent"].repeat(2));
    assert_eq!(all[0].1["email_id"], first.as_str());
    assert_eq!(all[3].1["email_id"], second.as_str());
    assert_eq!(all[2].1["type"], "Sent");
    assert_eq!(all[2].1["sequence"], 3);
    assert_eq!(all[2].1["payload"]["reply_code"], 250);
    assert_eq!(all[0].1["metadata"]["transport"], "rest");

    let from_seq = replay(&app, DeliverPolicy::ByStartSequence { start_sequence: 4 }).await;
    assert_eq!(from_seq.len(), 3);
    assert!(from_seq.iter().all(|(_, v)| v["email_id"] == second.as_str()));

    let start_time =
        time::OffsetDateTime::from_unix_timestamp_nanos(between.timestamp_nanos_opt().unwrap() as i128).unwrap();
    let from_time = replay(&app, DeliverPolicy::ByStartTime { start_time }).await;
    assert_eq!(from_time.len(), 3);
    assert!(from_time.iter().all(|(_, v)| v["email_id"] == second.as_str()));

    let last = replay(&app, DeliverPolicy::LastPerSubject).await;
    assert_eq!(last.len(), 3, "one per kind");
    assert!(last.iter().all(|(_, v)| v["email_id"] == second.as_str()));

    // Re-running the publisher from the start republishes with the same ids: dropped.
    db::rewind_checkpoint(&app.pool, "nats_events").await;
    eventually(Duration::from_secs(10), || async { db::checkpoint_position(&app.pool, "nats_events").await > 0 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stream_len(&app).await, 6);
}

/// The events stream is bounded by `nats.events_max_age` (7 days unless set), and a
/// stream made before the bound existed (no limit) gets it when the service starts.
#[tokio::test]
async fn the_events_stream_is_bounded_even_when_it_existed_unbounded() {
    use async_nats::jetstream::stream;

    let iso = crate::support::Isolation::new();
    let js = async_nats::jetstream::new(async_nats::connect(crate::support::nats_url()).await.unwrap());
    let name = format!("{}_EVENTS", iso.stream_prefix);
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{}.events.>", iso.namespace)],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut before = js.get_stream(&name).await.unwrap();
    assert_eq!(before.info().await.unwrap().config.max_age, Duration::ZERO);

    let app = TestApp::spawn_in(iso, &[("MAILLEDGER__NATS__EVENTS_MAX_AGE", "36h")]).await;
    let mut stream = app.js.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_age, Duration::from_secs(36 * 3600));
    // Still the stream it was: events go on into it.
    app.create(&original_payload("bounded")).await;
    eventually(Duration::from_secs(20), || async { stream_len(&app).await >= 2 }).await;

    let fresh = TestApp::spawn().await;
    let mut stream = fresh.js.get_stream(format!("{}_EVENTS", fresh.iso.stream_prefix)).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_age, Duration::from_secs(7 * 24 * 3600));
}
