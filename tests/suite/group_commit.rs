//! The write side's group commit: concurrent new emails share INSERTs, and every
//! request still gets its own answer — a repeat, a reused key and a failing store
//! included.

use std::collections::{HashMap, HashSet};

use crate::support::{TestApp, db, original_payload};
use mailledger::access::keyring::Authenticated;
use mailledger::command::{Limits, Source};
use mailledger::ledger::{CreateEmail, Ledger, LedgerError};
use mailledger::transport::payload::CreateEmailPayload;
use uuid::Uuid;

fn request(subject: &str, key: Option<String>) -> CreateEmail {
    let bytes = serde_json::to_vec(&original_payload(subject)).unwrap();
    let (draft, _) = CreateEmailPayload::from_json(&bytes).unwrap().into_draft();
    let by = Authenticated { principal: mailledger::access::Principal::operator("tests"), key: None };
    CreateEmail { draft, source: Source::Rest, idempotency_key: key, metadata: HashMap::new(), by }
}

#[tokio::test]
async fn concurrent_new_emails_share_commits_and_each_is_whole() {
    let app = TestApp::spawn().await;
    let ledger = Ledger::new(app.pool.clone(), Limits::default());
    let n = 300;
    let results = futures::future::join_all(
        (0..n).map(|i| ledger.create(request(&format!("bulk {i}"), Some(format!("bulk-{i}"))))),
    )
    .await;
    let ids: HashSet<Uuid> = results.into_iter().map(|r| r.expect("accepted").id).collect();
    assert_eq!(ids.len(), n);

    let events = db::events(&app.pool).await;
    let mut histories: HashMap<&str, Vec<i64>> = HashMap::new();
    for e in &events {
        histories.entry(&e.aggregate_id).or_default().push(e.sequence);
    }
    assert_eq!(histories.len(), n);
    for (id, sequences) in &mut histories {
        sequences.sort_unstable();
        assert!(ids.contains(&id.parse().unwrap()), "{id} was not asked for");
        assert_eq!(sequences, &[1, 2], "{id}: Requested and Persisted, nothing else");
    }
    // Rows written by one INSERT share a transaction id: fewer commits than emails.
    let commits = events.iter().map(|e| &e.txid).collect::<HashSet<_>>().len();
    assert!(commits < n, "{commits} commits for {n} emails: nothing was grouped");
}

#[tokio::test]
async fn repeats_and_a_reused_key_in_one_burst_get_their_own_answers() {
    let app = TestApp::spawn().await;
    let ledger = Ledger::new(app.pool.clone(), Limits::default());
    // Six requests for one key (five alike, one other email) among fifty bystanders.
    let mut requests: Vec<(Option<&str>, CreateEmail)> = vec![];
    for i in 0..50 {
        requests.push((None, request(&format!("bystander {i}"), Some(format!("by-{i}")))));
        if i % 10 == 0 {
            requests.push((Some("alike"), request("alike", Some("shared".into()))));
        }
    }
    requests.insert(25, (Some("other"), request("other", Some("shared".into()))));
    let (subjects, creates): (Vec<_>, Vec<_>) = requests.into_iter().unzip();
    let results = futures::future::join_all(creates.into_iter().map(|c| ledger.create(c))).await;

    let shared = mailledger::command::email_id_for_key("shared");
    let requested = app.stored(&shared.to_string(), 1).await;
    let stored = requested.fields()["request"]["subject"].as_str().unwrap().to_owned();
    for (subject, result) in subjects.iter().zip(&results) {
        match subject {
            None => assert!(result.is_ok(), "a bystander failed: {result:?}"),
            Some(s) if *s == stored => assert_eq!(result.as_ref().unwrap().id, shared),
            Some(_) => assert!(matches!(result, Err(LedgerError::Conflict)), "{result:?}"),
        }
    }
    let winners = subjects.iter().filter(|s| s.is_some_and(|s| s == stored)).count();
    assert!(winners == 1 || winners == 5, "the stored email is one of the two asked for");
    assert_eq!(app.event_count(Some(&shared.to_string())).await, 2, "repeats record nothing");
    assert_eq!(app.event_count(None).await, 2 * 51);
}

#[tokio::test]
async fn a_failing_store_fails_the_whole_batch_and_retries_store_it_once() {
    let app = TestApp::spawn().await;
    let ledger = Ledger::new(app.pool.clone(), Limits::default());
    let burst = |round: &'static str| {
        futures::future::join_all(
            (0..40).map(|i| ledger.create(request(&format!("{round} {i}"), Some(format!("k-{i}"))))),
        )
    };
    db::break_store(&app.pool).await;
    for result in burst("first").await {
        let error = result.expect_err("nothing can be stored");
        assert!(error.is_transient(), "a broken store is worth retrying: {error}");
    }
    db::mend_store(&app.pool).await;
    assert_eq!(app.event_count(None).await, 0, "nothing was half-stored");

    let ids: HashSet<Uuid> = burst("first").await.into_iter().map(|r| r.expect("stored on retry").id).collect();
    assert_eq!(ids.len(), 40);
    // Once more, each key now taken: the same email is a repeat, another a conflict.
    let again = futures::future::join_all((0..40).map(|i| {
        let round = if i % 2 == 0 { "first" } else { "second" };
        ledger.create(request(&format!("{round} {i}"), Some(format!("k-{i}"))))
    }))
    .await;
    for (i, result) in again.into_iter().enumerate() {
        if i % 2 == 0 {
            assert!(ids.contains(&result.expect("a repeat is accepted").id));
        } else {
            assert!(matches!(result, Err(LedgerError::Conflict)), "key k-{i} reused: {result:?}");
        }
    }
    assert_eq!(app.event_count(None).await, 80);
}

/// An attempt's outcome is one event, appended by one autocommitted statement. Two
/// senders recording an attempt on the same history (a lease that ran out mid-send):
/// one outcome is stored, the other finds its sequence taken and is decided again on
/// the fresh history, where attempt 1 is already recorded: never both, never a gap.
#[tokio::test]
async fn two_outcomes_decided_on_one_history_store_one_and_never_both() {
    use cqrs_es::Aggregate;
    use mailledger::command::{Email, EmailCommand, EmailEvent, RecordAttemptCommand};

    let app = TestApp::spawn().await;
    let ledger = Ledger::new(app.pool.clone(), Limits::default());
    for round in 0..10 {
        let id = ledger.create(request(&format!("raced {round}"), None)).await.unwrap().id;
        let history = mailledger::store::feed::history(&app.pool, id).await.unwrap();
        let mut state = Email::default();
        for e in &history {
            let event: EmailEvent =
                serde_json::from_value(serde_json::json!({ e.event_type.clone(): e.payload })).unwrap();
            state.apply(event);
        }
        let last = history.last().unwrap().sequence;
        let sent = |text: &str| {
            EmailCommand::RecordAttempt(RecordAttemptCommand {
                attempt: 1,
                accepted: vec!["rcpt@example.org".into()],
                reply_code: 250,
                reply_text: text.into(),
                failures: vec![],
                suppressed: vec![],
                suppression_reason: String::new(),
                at: chrono::Utc::now(),
                retry_at: chrono::Utc::now(),
                max_attempts: 5,
            })
        };
        let (a, b) = tokio::join!(
            ledger.record_attempt(id, &state, last, sent("first"), HashMap::new()),
            ledger.record_attempt(id, &state, last, sent("second"), HashMap::new()),
        );
        let stored = [&a, &b].iter().filter(|r| r.as_ref().is_ok_and(|events| !events.is_empty())).count();
        assert_eq!(stored, 1, "round {round}: exactly one outcome is stored ({a:?}, {b:?})");
        for r in [&a, &b] {
            assert!(
                matches!(r, Ok(_) | Err(LedgerError::Refused(_))),
                "round {round}: the other is decided again and refused as a stale attempt, not failed: {r:?}"
            );
        }
        let after = mailledger::store::feed::history(&app.pool, id).await.unwrap();
        let sequences: Vec<i64> = after.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=last + 1).collect::<Vec<_>>(), "round {round}: one event after the history");
        assert_eq!(after.last().unwrap().event_type, "Sent");
    }
}
