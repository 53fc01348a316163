//! Re-projection without downtime: rows after equal rows before, readers never see an
//! empty or partial table while requests run, the live projection keeps going, and old
//! event versions are read through upcasters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{
    Cleanup, Isolation, TestApp, accepted_events, db, eventually, fresh_database, insert_event, original_payload,
};
use mailledger::ops::progress::Silent;
use mailledger::ops::reproject::{Target, reproject};
use mailledger::projections::runner::{Runner, RunnerOptions};
use mailledger::store::upcast::{UPCASTERS, Upcaster};
use serde_json::{Value, json};

#[tokio::test]
async fn reproject_while_reads_run_never_shows_a_partial_table() {
    let app = TestApp::spawn().await;
    const N: usize = 300;
    let bodies: Vec<Value> = (0..N).map(|i| original_payload(&format!("before {i}"))).collect();
    for chunk in bodies.chunks(50) {
        futures::future::join_all(chunk.iter().map(|b| app.post_json("/api/v1/emails", b))).await;
    }
    app.wait_projected(N as i64).await;
    let before = db::table_snapshot(&app.pool, "emails", "id").await;
    let some_id = db::some_email_id(&app.pool).await;

    // Readers hammer search and lookup the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, failures) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut readers = vec![];
    for r in 0..4 {
        let (client, base, id) = (app.client.clone(), app.http.clone(), some_id.clone());
        let (stop, reads, failures) = (stop.clone(), reads.clone(), failures.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = if r % 2 == 0 {
                    let res = client.get(format!("{base}/api/v1/emails?q=before&size=5")).send().await;
                    match res {
                        Ok(res) if res.status() == 200 => {
                            let v: Value = res.json().await.unwrap();
                            v["total_count"].as_i64().unwrap_or(0) >= N as i64
                        }
                        _ => false,
                    }
                } else {
                    let res = client.get(format!("{base}/api/v1/email/{id}")).send().await;
                    matches!(res, Ok(res) if res.status() == 200)
                };
                reads.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Writes keep coming, so the live projection runs during the rebuild.
    let writer = {
        let (client, base) = (app.client.clone(), app.http.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                let r = client
                    .post(format!("{base}/api/v1/emails"))
                    .json(&original_payload(&format!("during {i}")))
                    .send()
                    .await;
                assert_eq!(r.unwrap().status(), 202);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let report = reproject(&app.pool, Target::Emails, None, 64, UPCASTERS, &Silent).await.unwrap();
        assert!(report.events >= (N * 2) as u64);
    }
    writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 20, "readers ran throughout");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no read failed or saw a partial table");

    app.wait_projected((N + 40) as i64).await;
    let after = db::table_snapshot(&app.pool, "emails", "id").await;
    let after_old: Vec<&String> = after.iter().filter(|r| r.contains("\"before ")).collect();
    assert_eq!(after_old.len(), N);
    assert_eq!(before.iter().collect::<Vec<_>>(), after_old, "the rebuilt rows equal the rows before");
    let indexes = db::index_names(&app.pool, "emails").await;
    assert_eq!(
        indexes,
        [
            "emails_bounced_created",
            "emails_created",
            "emails_from_created",
            "emails_from_domain_created",
            "emails_html_created",
            "emails_pkey",
            "emails_recipient_domains",
            "emails_recipients",
            "emails_search",
            "emails_status_created",
            "emails_suppressed_created",
            "emails_tenant_created",
        ]
    );
}

#[tokio::test]
async fn the_schedule_and_the_cache_can_be_reprojected_too() {
    let app = TestApp::spawn().await;
    for i in 0..20 {
        app.create(&original_payload(&format!("s{i}"))).await;
    }
    app.wait_projected(20).await;
    eventually(Duration::from_secs(10), || async { db::scheduled(&app.pool).await == 20 }).await;
    let before = db::table_snapshot(&app.pool, "deliveries", "email_id").await;
    reproject(&app.pool, Target::Schedule, None, 7, UPCASTERS, &Silent).await.unwrap();
    assert_eq!(db::table_snapshot(&app.pool, "deliveries", "email_id").await, before);
    let cache = mailledger::query::cache::Cache::new(&app.iso.settings(&[]).redis);
    let report = reproject(&app.pool, Target::Cache, Some(cache), 7, UPCASTERS, &Silent).await.unwrap();
    assert_eq!(report.events, 40);
}

/// A `Sent` written by an older schema (0.9): `code`, `text`, `at` instead of today's names.
fn sent_v0_9(payload: Value) -> Value {
    let old = &payload["Sent"];
    json!({"Sent": {"attempt": old["attempt"], "reply_code": old["code"], "reply_text": old["text"], "sent_at": old["at"]}})
}

static TEST_UPCASTERS: &[Upcaster] =
    &[Upcaster { event_type: "Sent", from_version: "0.9", to_version: "1.0", convert: sent_v0_9 }];

#[tokio::test]
async fn reproject_reads_old_event_versions_through_upcasters() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let id = uuid::Uuid::now_v7();
    let mut tx = pool.begin().await.unwrap();
    for (s, e) in accepted_events(id, "old schema").iter().enumerate() {
        insert_event(&mut tx, id, s as i64 + 1, e).await;
    }
    let old_sent =
        ("Sent".to_owned(), json!({"Sent": {"attempt": 1, "code": 250, "text": "OK", "at": "2026-01-01T00:00:00Z"}}));
    db::insert_event_as(&mut tx, id, 3, &old_sent, "0.9", None).await;
    tx.commit().await.unwrap();

    // Without the upcaster the event cannot be read: the projection stops there.
    let plain = Runner::new(
        pool.clone(),
        Arc::new(mailledger::projections::emails::EmailsProjection::new()),
        RunnerOptions::default(),
    );
    let started = std::time::Instant::now();
    let err = loop {
        // (Until the cluster's horizon, held back by other tests' transactions, passes it.)
        match plain.catch_up().await {
            Err(e) => break e,
            Ok(_) => {
                assert!(started.elapsed() < Duration::from_secs(20), "the old event was never read");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(format!("{err:#}").contains("no upcaster from Sent version 0.9"), "{err:#}");

    let report = reproject(&pool, Target::Emails, None, 100, TEST_UPCASTERS, &Silent).await.unwrap();
    assert_eq!(report.events, 3);
    let (status, sent_at, version) = db::read_model_row(&pool, id).await;
    assert_eq!((status.as_str(), version), ("sent", 3));
    assert_eq!(sent_at.unwrap().to_rfc3339(), "2026-01-01T00:00:00+00:00");
}
