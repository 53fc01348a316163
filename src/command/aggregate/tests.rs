//! given / when / then for every command in every state.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

use super::*;
use crate::command::commands::*;
use crate::command::draft::{EmailDraft, Limits};
use crate::command::events::Source;

/// Renders a stand-in message: enough to check that size and digest come from it.
struct FakeRenderer;

impl MessageRenderer for FakeRenderer {
    fn render(&self, email: &ValidEmail, message_id: &str, date: DateTime<Utc>) -> Result<Vec<u8>, String> {
        if email.subject.as_str() == "unrenderable" {
            return Err("no".into());
        }
        Ok(format!("{message_id}|{date}|{}", email.subject).into_bytes())
    }
}

type EmailTest = TestFramework<Email>;

fn framework() -> EmailTest {
    TestFramework::with(EmailServices { renderer: Arc::new(FakeRenderer) })
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
}

fn id() -> Uuid {
    Uuid::from_u128(42)
}

fn request_with_subject(subject: &str) -> RequestEmailCommand {
    let draft = EmailDraft {
        from: Some("Ann <ann@example.com>".into()),
        to: vec!["bob@example.org".into()],
        subject: Some(subject.into()),
        text: Some("hello".into()),
        ..Default::default()
    };
    let email = draft.validate(&Limits::default()).unwrap();
    RequestEmailCommand {
        email_id: id(),
        source: Source::Rest,
        idempotency_key: Some("k1".into()),
        draft,
        email,
        received_at: t0(),
    }
}

fn request() -> RequestEmailCommand {
    request_with_subject("Hi")
}

/// The events a fresh request produces.
fn accepted() -> Vec<EmailEvent> {
    let c = request();
    let message_id = message_id_for(c.email_id, &c.email);
    let rendered = format!("{message_id}|{}|Hi", t0());
    vec![
        EmailEvent::Requested(Requested {
            email_id: id(),
            source: Source::Rest,
            idempotency_key: Some("k1".into()),
            request: c.draft.clone(),
            requested_at: t0(),
        }),
        EmailEvent::Persisted(Persisted {
            message_id,
            date: t0(),
            from: c.email.from.clone(),
            to: c.email.to.clone(),
            cc: vec![],
            bcc: vec![],
            reply_to: vec![],
            subject: c.email.subject.clone(),
            headers: Default::default(),
            size_bytes: rendered.len() as u64,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(rendered.as_bytes())),
            request_digest: c.email.digest(),
        }),
    ]
}

fn sent(attempt: u32) -> EmailEvent {
    EmailEvent::Sent(Sent { attempt, reply_code: 250, reply_text: "OK".into(), sent_at: t0() })
}

fn failed(attempt: u32, next: Option<DateTime<Utc>>) -> EmailEvent {
    EmailEvent::Failed(Failed {
        attempt,
        error: "451 try later".into(),
        reply_code: Some(451),
        permanent: false,
        failed_at: t0(),
        next_attempt_at: next,
    })
}

fn dead(attempts: u32) -> EmailEvent {
    EmailEvent::DeadLettered(DeadLettered {
        reason: format!("gave up after {attempts} attempts; last error: 451 try later"),
        attempts,
        dead_lettered_at: t0(),
    })
}

fn retry_at() -> DateTime<Utc> {
    t0() + Duration::seconds(30)
}

fn record_sent(attempt: u32) -> EmailCommand {
    EmailCommand::RecordSent(RecordSentCommand { attempt, reply_code: 250, reply_text: "OK".into(), at: t0() })
}

fn record_failure(attempt: u32, permanent: bool) -> EmailCommand {
    EmailCommand::RecordFailure(RecordFailureCommand {
        attempt,
        error: if permanent { "550 no such user".into() } else { "451 try later".into() },
        reply_code: Some(if permanent { 550 } else { 451 }),
        permanent,
        at: t0(),
        retry_at: retry_at(),
        max_attempts: 3,
    })
}

fn redrive() -> EmailCommand {
    EmailCommand::Redrive(RedriveCommand { by: "ops@example.com".into(), at: t0() })
}

/// States: new, queued, failed (retrying), sent, dead-lettered.
fn queued() -> Vec<EmailEvent> {
    accepted()
}
fn retrying() -> Vec<EmailEvent> {
    [accepted(), vec![failed(1, Some(retry_at()))]].concat()
}
fn delivered() -> Vec<EmailEvent> {
    [accepted(), vec![sent(1)]].concat()
}
fn dead_lettered() -> Vec<EmailEvent> {
    [accepted(), vec![failed(1, Some(retry_at())), failed(2, Some(retry_at())), failed(3, None), dead(3)]].concat()
}

// --- Request ---------------------------------------------------------------------------

#[tokio::test]
async fn request_when_new_records_requested_and_persisted() {
    framework()
        .given_no_previous_events()
        .when_async(EmailCommand::Request(Box::new(request())))
        .await
        .then_expect_events(accepted());
}

#[tokio::test]
async fn request_when_unrenderable_is_refused() {
    let result = framework()
        .given_no_previous_events()
        .when_async(EmailCommand::Request(Box::new(request_with_subject("unrenderable"))))
        .await
        .inspect_result();
    assert_eq!(result, Err(EmailError::Unrenderable("no".into())));
}

#[tokio::test]
async fn same_request_again_in_any_state_is_a_no_op() {
    for given in [queued(), retrying(), delivered(), dead_lettered()] {
        framework()
            .given(given)
            .when_async(EmailCommand::Request(Box::new(request())))
            .await
            .then_expect_events(vec![]);
    }
}

#[tokio::test]
async fn other_request_with_the_same_key_is_a_conflict_in_any_state() {
    for given in [queued(), retrying(), delivered(), dead_lettered()] {
        framework()
            .given(given)
            .when_async(EmailCommand::Request(Box::new(request_with_subject("Something else"))))
            .await
            .then_expect_error(EmailError::IdempotencyConflict);
    }
}

// --- RecordSent ------------------------------------------------------------------------

#[tokio::test]
async fn sent_when_new_is_not_found() {
    framework().given_no_previous_events().when_async(record_sent(1)).await.then_expect_error(EmailError::NotFound);
}

#[tokio::test]
async fn sent_when_queued_or_retrying_records_sent() {
    framework().given(queued()).when_async(record_sent(1)).await.then_expect_events(vec![sent(1)]);
    framework().given(retrying()).when_async(record_sent(2)).await.then_expect_events(vec![sent(2)]);
}

#[tokio::test]
async fn sent_for_the_wrong_attempt_is_refused() {
    framework()
        .given(retrying())
        .when_async(record_sent(1))
        .await
        .then_expect_error(EmailError::AttemptOutOfOrder { expected: 2, got: 1 });
}

#[tokio::test]
async fn a_second_sent_is_refused() {
    framework().given(delivered()).when_async(record_sent(2)).await.then_expect_error(EmailError::AlreadySent);
}

#[tokio::test]
async fn sent_when_dead_lettered_is_refused() {
    framework().given(dead_lettered()).when_async(record_sent(4)).await.then_expect_error(EmailError::DeadLettered);
}

// --- RecordFailure ---------------------------------------------------------------------

#[tokio::test]
async fn failure_when_new_is_not_found() {
    framework()
        .given_no_previous_events()
        .when_async(record_failure(1, false))
        .await
        .then_expect_error(EmailError::NotFound);
}

#[tokio::test]
async fn transient_failure_when_queued_schedules_a_retry() {
    framework()
        .given(queued())
        .when_async(record_failure(1, false))
        .await
        .then_expect_events(vec![failed(1, Some(retry_at()))]);
}

#[tokio::test]
async fn transient_failure_on_the_last_attempt_dead_letters() {
    framework()
        .given([accepted(), vec![failed(1, Some(retry_at())), failed(2, Some(retry_at()))]].concat())
        .when_async(record_failure(3, false))
        .await
        .then_expect_events(vec![failed(3, None), dead(3)]);
}

#[tokio::test]
async fn permanent_failure_dead_letters_at_once() {
    let events = framework().given(retrying()).when_async(record_failure(2, true)).await.inspect_result().unwrap();
    assert!(
        matches!(&events[0], EmailEvent::Failed(f) if f.permanent && f.next_attempt_at.is_none() && f.attempt == 2)
    );
    assert!(matches!(&events[1], EmailEvent::DeadLettered(d) if d.reason.starts_with("permanent failure: 550")));
}

#[tokio::test]
async fn failure_when_sent_or_dead_lettered_is_refused() {
    framework()
        .given(delivered())
        .when_async(record_failure(2, false))
        .await
        .then_expect_error(EmailError::AlreadySent);
    framework()
        .given(dead_lettered())
        .when_async(record_failure(4, false))
        .await
        .then_expect_error(EmailError::DeadLettered);
}

// --- Redrive ---------------------------------------------------------------------------

#[tokio::test]
async fn redrive_of_a_dead_letter_queues_it_with_a_fresh_round() {
    let events = dead_lettered();
    framework()
        .given(events.clone())
        .when_async(redrive())
        .await
        .then_expect_events(vec![EmailEvent::Redriven(Redriven { by: "ops@example.com".into(), redriven_at: t0() })]);
    // After a redrive, the next attempt is 4 and three more attempts are allowed.
    let redriven = [events, vec![EmailEvent::Redriven(Redriven { by: "ops".into(), redriven_at: t0() })]].concat();
    framework()
        .given(redriven.clone())
        .when_async(record_failure(4, false))
        .await
        .then_expect_events(vec![failed(4, Some(retry_at()))]);
    framework().given(redriven).when_async(record_sent(4)).await.then_expect_events(vec![sent(4)]);
}

#[tokio::test]
async fn redrive_in_any_other_state_is_refused() {
    framework().given_no_previous_events().when_async(redrive()).await.then_expect_error(EmailError::NotFound);
    for given in [queued(), retrying(), delivered()] {
        framework().given(given).when_async(redrive()).await.then_expect_error(EmailError::NotDeadLettered);
    }
}

#[test]
fn the_same_key_always_names_the_same_email() {
    assert_eq!(email_id_for_key("abc"), email_id_for_key("abc"));
    assert_ne!(email_id_for_key("abc"), email_id_for_key("abd"));
}
