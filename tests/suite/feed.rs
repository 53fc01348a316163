//! The event feed never skips an event committed late, every projection sees every
//! event exactly once, projections catch up after a restart, and a standby takes over
//! when the leader's session dies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Cleanup, Isolation, accepted_events, commit_email, db, eventually, fresh_database, insert_event};
use async_trait::async_trait;
use mailledger::projections::emails::EmailsProjection;
use mailledger::projections::runner::{Runner, RunnerOptions};
use mailledger::projections::{Projection, ProjectionKind};
use mailledger::store::feed::FeedEvent;
use sqlx::{Acquire, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records every (email, sequence) it is handed, and how often.
#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<(Uuid, i64), usize>>,
    kind: Option<ProjectionKind>,
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &'static str {
        match self.kind {
            Some(ProjectionKind::SideEffecting) => "recorder_side",
            _ => "recorder_tx",
        }
    }
    fn kind(&self) -> ProjectionKind {
        self.kind.unwrap_or(ProjectionKind::Transactional)
    }
    async fn apply(&self, _tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        let mut seen = self.seen.lock().unwrap();
        for e in events {
            *seen.entry((e.email_id, e.sequence)).or_default() += 1;
        }
        Ok(())
    }
}

/// Catches up until `want` events were applied: the feed reads only below the cluster's
/// horizon, which any transaction open elsewhere (another test's) holds back a while.
async fn drain(runner: &Runner, want: usize) -> usize {
    let mut applied = 0;
    let started = std::time::Instant::now();
    while applied < want && started.elapsed() < Duration::from_secs(20) {
        applied += if want - applied == 1 { runner.try_execute_once().await } else { runner.catch_up().await }.unwrap();
        if applied < want {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    applied
}

fn options(batch: i64) -> RunnerOptions {
    RunnerOptions {
        batch_size: batch,
        batch_bytes: 1 << 20,
        poll_interval: Duration::from_millis(50),
        standby_interval: Duration::from_millis(100),
        coalesce: Duration::ZERO,
    }
}

#[tokio::test]
async fn a_long_transaction_committing_after_a_short_one_is_not_skipped() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let recorder = Arc::new(Recorder::default());
    let runner = Runner::new(pool.clone(), recorder.clone(), options(100));
    let emails = Runner::new(pool.clone(), Arc::new(EmailsProjection::new()), options(100));

    // The long transaction writes first: it holds the lower position.
    let (long_id, short_id) = (Uuid::now_v7(), Uuid::now_v7());
    let mut long_conn = pool.acquire().await.unwrap();
    let mut long_tx = long_conn.begin().await.unwrap();
    for (i, e) in accepted_events(long_id, "long").iter().enumerate() {
        insert_event(&mut long_tx, long_id, i as i64 + 1, e).await;
    }
    // The short one writes later and commits first.
    let mut short = pool.begin().await.unwrap();
    for (i, e) in accepted_events(short_id, "short").iter().enumerate() {
        insert_event(&mut short, short_id, i as i64 + 1, e).await;
    }
    short.commit().await.unwrap();

    // A reader by position alone would take the short one now and later skip the long
    // one. The feed waits: nothing is below the horizon yet.
    assert_eq!(runner.try_execute_once().await.unwrap(), 0);
    assert_eq!(emails.try_execute_once().await.unwrap(), 0);

    long_tx.commit().await.unwrap();
    assert_eq!(drain(&runner, 4).await, 4);
    assert_eq!(drain(&emails, 4).await, 4);
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert_eq!(db::read_model_rows_where(&pool, "status", "queued").await, 2);
}

#[tokio::test]
async fn concurrent_interleaved_writers_every_event_seen_exactly_once() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let recorders = [
        Arc::new(Recorder { kind: Some(ProjectionKind::Transactional), ..Default::default() }),
        Arc::new(Recorder { kind: Some(ProjectionKind::SideEffecting), ..Default::default() }),
    ];
    let stop = CancellationToken::new();
    let mut readers = vec![];
    for r in &recorders {
        readers.push(tokio::spawn(Runner::new(pool.clone(), r.clone(), options(7)).run(stop.clone())));
    }
    readers
        .push(tokio::spawn(Runner::new(pool.clone(), Arc::new(EmailsProjection::new()), options(5)).run(stop.clone())));

    // 8 writers, 25 emails each; each transaction holds its events open for a while
    // of its own (0–20 ms) so commits land out of insertion order.
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 25;
    let mut writers = vec![];
    for w in 0..WRITERS {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let id = Uuid::now_v7();
                let mut tx = pool.begin().await.unwrap();
                let events = accepted_events(id, &format!("w{w} e{i}"));
                insert_event(&mut tx, id, 1, &events[0]).await;
                tokio::time::sleep(Duration::from_millis(((w * 7 + i * 13) % 20) as u64)).await;
                insert_event(&mut tx, id, 2, &events[1]).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let total = WRITERS * PER_WRITER * 2;
    for r in &recorders {
        eventually(Duration::from_secs(20), || async { r.seen.lock().unwrap().len() == total }).await;
    }
    eventually(Duration::from_secs(20), || async {
        db::read_model_rows_where(&pool, "last_sequence", "2").await == (WRITERS * PER_WRITER) as i64
    })
    .await;
    stop.cancel();
    for r in readers {
        r.await.unwrap();
    }
    for r in &recorders {
        let seen = r.seen.lock().unwrap();
        assert_eq!(seen.len(), total);
        assert!(seen.values().all(|&n| n == 1), "{} saw an event twice", r.name());
    }
}

#[tokio::test]
async fn a_restarted_projection_catches_up_without_duplicates() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let recorder = Arc::new(Recorder::default());
    let write = |n: usize| {
        let pool = pool.clone();
        async move {
            for i in 0..n {
                commit_email(&pool, &format!("e{i}")).await;
            }
        }
    };
    write(30).await;
    let stop = CancellationToken::new();
    let run = tokio::spawn(Runner::new(pool.clone(), recorder.clone(), options(10)).run(stop.clone()));
    eventually(Duration::from_secs(10), || async { recorder.seen.lock().unwrap().len() == 60 }).await;
    stop.cancel();
    run.await.unwrap();

    write(20).await; // while the projection is down
    let stop = CancellationToken::new();
    let run = tokio::spawn(Runner::new(pool.clone(), recorder.clone(), options(10)).run(stop.clone()));
    eventually(Duration::from_secs(10), || async { recorder.seen.lock().unwrap().len() == 100 }).await;
    stop.cancel();
    run.await.unwrap();
    assert!(recorder.seen.lock().unwrap().values().all(|&n| n == 1));
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_standby_takes_over() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let stop_first = CancellationToken::new();
    let stop_second = CancellationToken::new();
    let a = tokio::spawn(Runner::new(pool.clone(), first.clone(), options(10)).run(stop_first.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = tokio::spawn(Runner::new(pool.clone(), second.clone(), options(10)).run(stop_second.clone()));

    commit_email(&pool, "one").await;
    eventually(Duration::from_secs(10), || async { first.seen.lock().unwrap().len() == 2 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(second.seen.lock().unwrap().is_empty(), "the standby did nothing while the leader lived");

    stop_first.cancel(); // the leader goes away; its lock goes with its session
    a.await.unwrap();
    commit_email(&pool, "two").await;
    eventually(Duration::from_secs(10), || async { second.seen.lock().unwrap().len() == 2 }).await;
    let seen = second.seen.lock().unwrap().clone();
    assert!(seen.keys().all(|(_, s)| *s <= 2));
    assert_eq!(first.seen.lock().unwrap().len(), 2, "the old leader saw only the first email");
    stop_second.cancel();
    b.await.unwrap();
}

#[tokio::test]
async fn a_leader_whose_session_is_killed_loses_the_lead_to_the_standby() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let first = Arc::new(Recorder::default());
    let second = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let a = tokio::spawn(Runner::new(pool.clone(), first.clone(), options(10)).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = tokio::spawn(Runner::new(pool.clone(), second.clone(), options(10)).run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill the session holding the advisory lock: as if the leader's host died.
    assert_eq!(db::kill_lock_holders(&pool).await, 1);
    commit_email(&pool, "after").await;
    // Whoever leads now (the standby, or the old leader back after re-taking the lock)
    // applies the events exactly once in all.
    eventually(Duration::from_secs(10), || async {
        first.seen.lock().unwrap().len() + second.seen.lock().unwrap().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.seen.lock().unwrap().len() + second.seen.lock().unwrap().len(), 2);
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();
}

#[tokio::test]
async fn commit_order_is_numeric_across_a_digit_boundary() {
    // Transaction ids sort as numbers, not as text: 9998 comes before 10001. The ids are
    // chosen below the cluster's current one (the feed reads only below its horizon),
    // across the highest power of ten that allows it.
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let now = db::current_txid(&pool).await;
    let boundary = (1..=18).map(|k| 10u64.pow(k)).filter(|b| b + 1 < now).max().expect("a cluster past xid 11");
    let (low, high) = ((boundary - 2).to_string(), (boundary + 1).to_string());
    let (late, early) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut conn = pool.acquire().await.unwrap();
    for (id, txid) in [(late, &high), (early, &low)] {
        for (s, e) in accepted_events(id, "x").iter().enumerate() {
            db::insert_event_as(&mut conn, id, s as i64 + 1, e, "1.0", Some(txid)).await;
        }
    }
    drop(conn);
    let recorder = Arc::new(Recorder::default());
    let runner = Runner::new(pool.clone(), recorder.clone(), options(1));
    assert_eq!(drain(&runner, 1).await, 1);
    assert_eq!(runner.checkpoint().await.unwrap().txid, boundary - 2);
    assert_eq!(drain(&runner, 3).await, 3);
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.values().all(|&n| n == 1));
}

/// A recorder with a name of its choosing (several follow one feed).
struct Named(&'static str, Arc<Recorder>);

#[async_trait]
impl Projection for Named {
    fn name(&self) -> &'static str {
        self.0
    }
    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Transactional
    }
    async fn apply(&self, tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        self.1.apply(tx, events).await
    }
}

/// Puts `address` on the suppression list: an event of another aggregate than emails.
async fn suppress(pool: &sqlx::PgPool, address: &str) {
    let change = mailledger::suppression::Change {
        tenant: "default",
        address,
        reason: "test",
        by: "tester",
        metadata: HashMap::new(),
    };
    assert!(mailledger::suppression::add(pool, change, None).await.unwrap());
}

#[tokio::test]
async fn a_run_of_other_aggregates_events_longer_than_a_batch_does_not_stall_the_email_projections() {
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let recorder = Arc::new(Recorder::default());
    let runner = Runner::new(pool.clone(), recorder.clone(), options(3));
    let emails = Runner::new(pool.clone(), Arc::new(EmailsProjection::new()), options(3));
    // Seven suppression-list events (not email events), then an email: a reader whose
    // batch holds none of its events must still move past them.
    for i in 0..7 {
        suppress(&pool, &format!("gone{i}@example.net")).await;
    }
    let id = commit_email(&pool, "after the suppressions").await;
    assert_eq!(drain(&runner, 2).await, 2);
    assert_eq!(drain(&emails, 2).await, 2);
    assert_eq!(recorder.seen.lock().unwrap().keys().filter(|(e, _)| *e == id).count(), 2);
    assert_eq!(db::read_model_rows_where(&pool, "status", "queued").await, 1);
}

#[tokio::test]
async fn projections_sharing_one_tail_each_see_every_event_exactly_once() {
    use mailledger::store::tail::{Tail, TailLimits};
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    // A small ring, so the slower reader also falls behind it and reads for itself.
    let tail = Tail::new(TailLimits { events: 8, bytes: 1 << 30 });
    let (fast, slow) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let fast_runner =
        Runner::new(pool.clone(), Arc::new(Named("tail_fast", fast.clone())), options(4)).with_tail(tail.clone());
    let slow_runner =
        Runner::new(pool.clone(), Arc::new(Named("tail_slow", slow.clone())), options(4)).with_tail(tail.clone());
    let emails = Runner::new(pool.clone(), Arc::new(EmailsProjection::new()), options(4)).with_tail(tail.clone());
    let mut ids = vec![];
    for round in 0..6 {
        // Interleaved with the readers: other aggregates' events among the emails'.
        for i in 0..3 {
            ids.push(commit_email(&pool, &format!("round {round} email {i}")).await);
        }
        if round % 2 == 0 {
            suppress(&pool, &format!("round{round}@example.net")).await;
        }
        fast_runner.catch_up().await.unwrap();
        if round % 3 == 2 {
            slow_runner.catch_up().await.unwrap();
        }
        emails.try_execute_once().await.unwrap();
    }
    let want = ids.len() * 2;
    let (fast_seen, slow_seen) =
        (drain_all(&fast_runner, &fast, want).await, drain_all(&slow_runner, &slow, want).await);
    drain_all(&emails, &Recorder::default(), 0).await;
    for seen in [fast_seen, slow_seen] {
        assert_eq!(seen.len(), want, "every event of every email");
        assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
        assert!(ids.iter().all(|id| seen.contains_key(&(*id, 1)) && seen.contains_key(&(*id, 2))));
    }
    assert_eq!(db::read_model_rows_where(&pool, "status", "queued").await, ids.len() as i64);
    assert!(tail.served_from_memory() > 0, "the readers behind the first were served from memory");
}

/// Catches `runner` up until `recorder` has seen `want` events (the horizon may hold
/// the last ones back a moment); returns what it saw.
async fn drain_all(runner: &Runner, recorder: &Recorder, want: usize) -> HashMap<(Uuid, i64), usize> {
    let started = std::time::Instant::now();
    loop {
        runner.catch_up().await.unwrap();
        let seen = recorder.seen.lock().unwrap().clone();
        if seen.len() >= want || started.elapsed() > Duration::from_secs(20) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The read model's rows travel to PostgreSQL column by column (typed arrays, the
/// address lists as array literals): whatever the text holds — quotes, backslashes,
/// commas, braces, the word NULL, an empty string, non-ASCII — it comes back as it went,
/// and an outcome's narrow update changes the state columns only, never a newer row.
#[tokio::test]
async fn read_model_rows_keep_any_text_exactly_through_the_columnar_write() {
    use mailledger::query::row;
    use mailledger::query::view::{EmailView, RecipientState};
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let at = |s: i64| chrono::DateTime::from_timestamp(1_790_000_000 + s, 123_456_000).unwrap();
    let hostile =
        ["\"quoted\"@example.com", "back\\slash@example.com", "a,b{c}@example.com", "NULL", "", "ünï@例え.jp"];
    let view = |i: usize| EmailView {
        id: Uuid::new_v4(),
        from: format!("from-{i}\"\\@example.com"),
        from_name: i.is_multiple_of(2).then(|| "Ann \"the\" O'Neil, {boss}\\".to_owned()),
        to: hostile.iter().map(|s| s.to_string()).collect(),
        cc: if i.is_multiple_of(2) { vec![] } else { vec!["{}".into(), " spaced ".into()] },
        bcc: vec!["\\\"".into()],
        subject: format!("subject {i}\twith tab\nand newline"),
        body: "body \\N with a backslash-N, not a NULL".into(),
        html: (i % 2 == 1).then(|| "<p>\"html\"</p>".to_owned()),
        status: "queued".into(),
        attempts: 0,
        last_error: None,
        message_id: Some(format!("<{i}@example.com>")),
        source: "rest".into(),
        created_at: at(0),
        updated_at: at(0),
        sent_at: None,
        next_attempt_at: None,
        version: 2,
        tenant: "tenant \"x\"".into(),
        deliveries: vec![RecipientState {
            address: "\"quoted\"@example.com".into(),
            status: "pending".into(),
            code: None,
            detail: Some("a \"detail\" \\ with \u{1F600}".into()),
            attempt: 0,
        }],
    };
    let views: Vec<EmailView> = (0..3).map(view).collect();
    let ids: Vec<Uuid> = views.iter().map(|v| v.id).collect();
    let mut conn = pool.acquire().await.unwrap();
    row::upsert(&mut conn, row::TABLE, &views).await.unwrap();
    let loaded = row::load(&mut conn, row::TABLE, &ids).await.unwrap();
    for v in &views {
        assert_eq!(loaded.get(&v.id), Some(v), "the row of {} came back changed", v.id);
    }

    // An outcome: the state columns change, the rest stays.
    let mut sent = views[0].clone();
    sent.status = "sent".into();
    sent.attempts = 1;
    sent.last_error = Some("was \"slow\"".into());
    sent.updated_at = at(5);
    sent.sent_at = Some(at(5));
    sent.version = 3;
    sent.deliveries[0].status = "sent".into();
    sent.deliveries[0].code = Some(250);
    // A stale state (an older sequence) for the second row changes nothing.
    let mut stale = views[1].clone();
    stale.status = "failed".into();
    stale.version = 1;
    row::update_state(&mut conn, row::TABLE, &[sent.clone(), stale]).await.unwrap();
    let loaded = row::load(&mut conn, row::TABLE, &ids).await.unwrap();
    assert_eq!(loaded.get(&sent.id), Some(&sent));
    assert_eq!(loaded.get(&views[1].id), Some(&views[1]));

    // Writing the older whole row again does not replace the newer one.
    row::upsert(&mut conn, row::TABLE, &views[..1]).await.unwrap();
    assert_eq!(row::load(&mut conn, row::TABLE, &ids[..1]).await.unwrap().get(&sent.id), Some(&sent));

    // The search document and the domains are computed from what was written.
    let (domains, hit): (Vec<String>, bool) = sqlx::query_as(
        "SELECT recipient_domains, search @@ plainto_tsquery('simple', 'newline') FROM emails WHERE id = $1",
    )
    .bind(ids[2])
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    assert!(domains.contains(&"example.com".to_owned()), "{domains:?}");
    assert!(hit);
}

/// A batch says it took everything below the horizon only when it did — fewer rows than
/// asked for, and not cut by its byte budget — so a projection stops reading after it
/// without one more read to find nothing, and never stops short.
#[tokio::test]
async fn a_batch_is_drained_only_when_nothing_below_the_horizon_was_left() {
    use mailledger::store::feed::{self, Checkpoint};
    use mailledger::store::upcast::UPCASTERS;
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    for i in 0..3 {
        commit_email(&pool, &format!("drained {i}")).await; // two events each
    }
    let mut conn = pool.acquire().await.unwrap();
    let budget = 16 * 1024 * 1024;
    // Below the horizon once no transaction older than theirs is open on the cluster
    // (other tests' may be): until then a read takes nothing, and says it took all there is.
    let mut all = feed::read_after(&mut conn, Checkpoint::default(), 100, budget, UPCASTERS).await.unwrap();
    let started = std::time::Instant::now();
    while all.events.len() < 6 && started.elapsed() < Duration::from_secs(20) {
        assert!(all.drained, "a read that stops at the horizon took everything below it");
        tokio::time::sleep(Duration::from_millis(50)).await;
        all = feed::read_after(&mut conn, Checkpoint::default(), 100, budget, UPCASTERS).await.unwrap();
    }
    assert_eq!((all.events.len(), all.drained), (6, true));
    let full = feed::read_after(&mut conn, Checkpoint::default(), 6, budget, UPCASTERS).await.unwrap();
    assert_eq!((full.events.len(), full.drained), (6, false), "as many rows as asked for: maybe more");
    let cut = feed::read_after(&mut conn, Checkpoint::default(), 100, 1, UPCASTERS).await.unwrap();
    assert_eq!((cut.events.len(), cut.drained), (1, false), "cut by the byte budget");
    let after = feed::read_after(&mut conn, full.reached.unwrap(), 6, budget, UPCASTERS).await.unwrap();
    assert_eq!((after.events.len(), after.reached, after.drained), (0, None, true));

    // A projection whose batches are smaller than the feed still gets all of it in one
    // catch-up (4 rows, as many as asked for: read on; then 2: drained), and what
    // commits later comes with a later one, each event once.
    let recorder = Arc::new(Recorder::default());
    let runner = Runner::new(pool.clone(), recorder.clone(), options(4));
    assert_eq!(runner.catch_up().await.unwrap(), 6);
    commit_email(&pool, "one more").await;
    assert_eq!(drain(&runner, 2).await, 2);
    assert_eq!(recorder.seen.lock().unwrap().len(), 8);
    assert!(recorder.seen.lock().unwrap().values().all(|n| *n == 1));
}

/// A commit wakes the process's own waiters once (at the commit), not a second time when
/// its NOTIFY to the other instances comes back from PostgreSQL; another instance's
/// NOTIFY wakes them.
#[tokio::test]
async fn a_process_is_woken_once_by_its_own_commit_and_by_every_other_instance_s() {
    use mailledger::store::notify::{self, Notifier};
    let iso = Isolation::new();
    let _cleanup = Cleanup(iso.clone());
    let pool = fresh_database(&iso).await;
    let stop = CancellationToken::new();
    let notifier = Notifier::start(&pool, stop.clone());
    let events = notifier.events();
    // Listening: the listener ticks once when it connects (anything may have been missed).
    eventually(Duration::from_secs(10), || async { *events.borrow() >= 1 }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = *events.borrow();
    notifier.announcer().committed();
    assert_eq!(*events.borrow(), before + 1, "woken at the commit");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(*events.borrow(), before + 1, "its own NOTIFY, back from PostgreSQL, is not a second wake");
    sqlx::query("SELECT pg_notify($1, 'another-instance')").bind(notify::EVENTS).execute(&pool).await.unwrap();
    eventually(Duration::from_secs(5), || async { *events.borrow() == before + 2 }).await;
    stop.cancel();
}
