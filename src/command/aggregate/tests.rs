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
    EmailEvent::Sent(Sent { attempt, reply_code: 250, reply_text: "OK".into(), sent_at: t0(), recipients: vec![] })
}

fn failed(attempt: u32, next: Option<DateTime<Utc>>) -> EmailEvent {
    EmailEvent::Failed(Failed {
        attempt,
        error: "451 try later".into(),
        reply_code: Some(451),
        permanent: false,
        failed_at: t0(),
        next_attempt_at: next,
        recipients: vec![],
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
    EmailCommand::Redrive(RedriveCommand { by: "ops@example.com".into(), at: t0(), run: None })
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
    framework().given(events.clone()).when_async(redrive()).await.then_expect_events(vec![EmailEvent::Redriven(
        Redriven { by: "ops@example.com".into(), redriven_at: t0(), run: None },
    )]);
    // After a redrive, the next attempt is 4 and three more attempts are allowed.
    let redriven =
        [events, vec![EmailEvent::Redriven(Redriven { by: "ops".into(), redriven_at: t0(), run: None })]].concat();
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

// Per-recipient outcomes: an email to three recipients.

fn three_recipients() -> Vec<EmailEvent> {
    let mut events = accepted();
    if let EmailEvent::Persisted(p) = &mut events[1] {
        p.to.push(crate::command::Mailbox::parse("cy@example.org").unwrap());
        p.cc.push(crate::command::Mailbox::parse("di@example.org").unwrap());
    }
    events
}

fn attempt(n: u32) -> RecordAttemptCommand {
    RecordAttemptCommand {
        attempt: n,
        reply_code: 250,
        reply_text: "OK".into(),
        at: t0(),
        retry_at: retry_at(),
        max_attempts: 3,
        ..Default::default()
    }
}

fn failure(recipients: &[&str], code: u16) -> RecipientFailure {
    RecipientFailure {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        error: format!("{code} no"),
        reply_code: Some(code),
        permanent: code >= 500,
    }
}

#[test]
fn some_taken_one_refused_for_good_one_for_now() {
    let c = RecordAttemptCommand {
        accepted: vec!["bob@example.org".into()],
        failures: vec![failure(&["cy@example.org"], 550), failure(&["di@example.org"], 451)],
        ..attempt(1)
    };
    framework().given(three_recipients()).when(EmailCommand::RecordAttempt(c)).then_expect_events(vec![
        EmailEvent::Sent(Sent {
            attempt: 1,
            reply_code: 250,
            reply_text: "OK".into(),
            sent_at: t0(),
            recipients: vec!["bob@example.org".into()],
        }),
        EmailEvent::Failed(Failed {
            attempt: 1,
            error: "550 no".into(),
            reply_code: Some(550),
            permanent: true,
            failed_at: t0(),
            next_attempt_at: None,
            recipients: vec!["cy@example.org".into()],
        }),
        EmailEvent::Failed(Failed {
            attempt: 1,
            error: "451 no".into(),
            reply_code: Some(451),
            permanent: false,
            failed_at: t0(),
            next_attempt_at: Some(retry_at()),
            recipients: vec!["di@example.org".into()],
        }),
    ]);
}

#[test]
fn the_next_attempt_goes_to_the_one_still_pending_and_settles_the_email() {
    let mut given = three_recipients();
    let mut state = Email::default();
    for e in three_recipients() {
        state.apply(e);
    }
    let first = RecordAttemptCommand {
        accepted: vec!["bob@example.org".into()],
        failures: vec![failure(&["cy@example.org"], 550), failure(&["di@example.org"], 451)],
        ..attempt(1)
    };
    for e in state.record_attempt(first).unwrap() {
        state.apply(e.clone());
        given.push(e);
    }
    assert_eq!(state.pending, ["di@example.org"]);
    assert_eq!(state.status, EmailStatus::Failed);
    // Naming a recipient that is not pending is refused.
    let wrong = RecordAttemptCommand { accepted: vec!["bob@example.org".into()], ..attempt(2) };
    framework()
        .given(given.clone())
        .when(EmailCommand::RecordAttempt(wrong))
        .then_expect_error(EmailError::UnknownRecipient);
    let second = RecordAttemptCommand { accepted: vec!["di@example.org".into()], ..attempt(2) };
    let events = state.record_attempt(second).unwrap();
    assert_eq!(events.len(), 1);
    state.apply(events[0].clone());
    assert_eq!(state.status, EmailStatus::Sent, "delivered to everyone who could take it");
}

#[test]
fn nobody_deliverable_is_a_dead_letter_and_suppressed_recipients_are_recorded() {
    let c = RecordAttemptCommand {
        suppressed: vec!["bob@example.org".into(), "cy@example.org".into()],
        suppression_reason: "550 bounced on 2026-11-01".into(),
        failures: vec![failure(&["di@example.org"], 550)],
        ..attempt(1)
    };
    let mut state = Email::default();
    for e in three_recipients() {
        state.apply(e);
    }
    let events = state.record_attempt(c).unwrap();
    let kinds: Vec<&str> = events.iter().map(EmailEvent::kind).collect();
    assert_eq!(kinds, ["Suppressed", "Failed", "DeadLettered"]);
    for e in events {
        state.apply(e);
    }
    assert_eq!(state.status, EmailStatus::DeadLettered);
    assert!(state.pending.is_empty());
    // A redrive makes every recipient not delivered pending again.
    let redriven = state.redrive(RedriveCommand { by: "ops".into(), at: t0(), run: None }).unwrap();
    state.apply(redriven[0].clone());
    assert_eq!(state.pending.len(), 3);
}

#[test]
fn every_recipient_suppressed_needs_no_smtp_attempt() {
    let mut state = Email::default();
    for e in accepted() {
        state.apply(e);
    }
    let c = RecordAttemptCommand {
        attempt: 0,
        suppressed: vec!["bob@example.org".into()],
        suppression_reason: "manual".into(),
        at: t0(),
        ..Default::default()
    };
    let events = state.record_attempt(c).unwrap();
    assert_eq!(events.iter().map(EmailEvent::kind).collect::<Vec<_>>(), ["Suppressed", "DeadLettered"]);
    for e in events {
        state.apply(e);
    }
    assert_eq!(state.attempts, 0, "no SMTP attempt was made");
}

#[test]
fn a_bulk_run_redrives_an_email_once_however_often_it_is_resumed() {
    let mut state = Email::default();
    for e in accepted() {
        state.apply(e);
    }
    state.apply(EmailEvent::DeadLettered(crate::command::events::DeadLettered {
        reason: "permanent failure".into(),
        attempts: 1,
        dead_lettered_at: t0(),
    }));
    let run = Some(Uuid::now_v7());
    let first = state.redrive(RedriveCommand { by: "ops".into(), at: t0(), run }).unwrap();
    assert_eq!(first.len(), 1);
    state.apply(first[0].clone());
    state.apply(EmailEvent::DeadLettered(crate::command::events::DeadLettered {
        reason: "again".into(),
        attempts: 2,
        dead_lettered_at: t0(),
    }));
    assert!(state.redrive(RedriveCommand { by: "ops".into(), at: t0(), run }).unwrap().is_empty());
    let another = state.redrive(RedriveCommand { by: "ops".into(), at: t0(), run: Some(Uuid::now_v7()) }).unwrap();
    assert_eq!(another.len(), 1, "another run may redrive it");
}
