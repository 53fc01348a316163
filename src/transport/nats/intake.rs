//! The command intake: one durable pull consumer shared by every instance.
//!
//! Each message is handled once its turn comes (at most `max_ack_pending` in flight):
//! - committed (or an idempotent repeat) → **ack**, only after the commit;
//! - refused for good (malformed JSON, invalid fields, key reused for another email,
//!   unknown subject) → published to `<ns>.dlq.commands`, then **term** (never redelivered);
//! - the event store down or broken (every command would fail) → **held**: retried here
//!   with a growing pause (0.5 s … 10 s), the server told it is in progress so it is
//!   not redelivered meanwhile; at shutdown it is handed back (nak). Intake pauses by
//!   itself (every permit held) and resumes when the store does, and the message stays
//!   in the stream across restarts of the service, PostgreSQL or NATS;
//! - refused by a store that otherwise works (a poison command) → tried once more,
//!   then dead-lettered with the store's reason: **anything that fails the same way
//!   twice is not transient**, and valid traffic flows beside it;
//! - on its `nats.max_deliver`-th delivery (the service stopped while holding it every
//!   time) → dead-lettered without being handled, never left stranded in the stream.
//!
//! The email id comes from the payload's `idempotency_key`, else the `Nats-Msg-Id`
//! header, else the stream sequence (with the stream's creation time): a redelivery
//! always lands on the same email.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, AckKind, Message};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dlq::{self, DeadLetter};
use crate::access::keyring::Keyring;
use crate::command::{Source, ValidationErrors};
use crate::config::{NatsNames, NatsSettings};
use crate::ledger::{CreateEmail, Ledger, LedgerError};
use crate::transport::payload::{CreateEmailPayload, PayloadError};

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or already committed) and acked.
    Acked,
    /// Dead-lettered and terminated, with the reason.
    DeadLettered(String),
    /// Handed back for a later redelivery.
    Nacked(Duration),
}

/// The intake worker.
#[derive(Clone)]
pub struct NatsIntake {
    js: jetstream::Context,
    consumer: PullConsumer,
    ledger: Ledger,
    names: Arc<NatsNames>,
    in_flight: usize,
    max_deliver: i64,
    stop: CancellationToken,
    keyring: Keyring,
    require_key: bool,
    /// When the commands stream was created: part of the fallback idempotency key, so a
    /// recreated stream (whose sequences start again at 1) never reuses an old key.
    epoch: String,
}

impl NatsIntake {
    /// Ensures the durable consumer exists (updating its limits to the settings).
    pub async fn setup(
        js: jetstream::Context,
        settings: &NatsSettings,
        ledger: Ledger,
        keyring: Keyring,
    ) -> anyhow::Result<Self> {
        let names = settings.names();
        let mut stream = js.get_stream(&names.commands_stream).await?;
        let epoch = stream.info().await?.created.unix_timestamp_nanos().to_string();
        let config = pull::Config {
            durable_name: Some(names.consumer.clone()),
            description: Some("mailledger command intake, shared by every instance".into()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_deliver: i64::from(settings.max_deliver),
            max_ack_pending: i64::from(settings.max_ack_pending),
            filter_subject: names.commands_filter.clone(),
            ..Default::default()
        };
        let consumer: PullConsumer = match stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, consumer = %names.consumer, "cannot update the consumer; using it as it is");
                stream
                    .get_consumer(&names.consumer)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot get consumer {}: {e}", names.consumer))?
            }
        };
        let in_flight = settings.max_ack_pending as usize;
        Ok(Self {
            js,
            consumer,
            ledger,
            names: Arc::new(names),
            in_flight,
            max_deliver: i64::from(settings.max_deliver),
            stop: CancellationToken::new(),
            keyring,
            require_key: settings.require_key,
            epoch,
        })
    }

    /// Pulls and handles commands until `shutdown`; then stops pulling, hands back what
    /// it pulled but did not start, and waits for the commands in flight.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.stop = shutdown.clone();
        let permits = Arc::new(Semaphore::new(self.in_flight));
        let tracker = TaskTracker::new();
        let mut failures = 0u32;
        'pull: while !shutdown.is_cancelled() {
            let mut messages = match self
                .consumer
                .stream()
                .max_messages_per_batch(self.batch())
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => {
                    failures = 0;
                    m
                }
                Err(e) => {
                    failures += 1;
                    // Capped low: once NATS is back, intake resumes within seconds.
                    let wait = backoff(failures).min(PULL_RETRY_MAX);
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot pull commands from NATS");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'pull,
                        _ = tokio::time::sleep(wait) => continue 'pull,
                    }
                }
            };
            loop {
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.hand_back(&mut messages).await;
                        break 'pull;
                    }
                    permit = permits.clone().acquire_owned() => permit.expect("semaphore never closes"),
                };
                let next = tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.hand_back(&mut messages).await;
                        break 'pull;
                    }
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let this = self.clone();
                        tracker.spawn(async move {
                            this.handle(message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        // Heartbeats missed, a reconnect, a deleted consumer: pull afresh.
                        tracing::warn!(error = %e, "command stream interrupted; pulling again");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue 'pull;
                    }
                    None => continue 'pull,
                }
            }
        }
        tracker.close();
        tracker.wait().await;
        tracing::info!("command intake stopped");
    }

    /// Naks (without delay) what was already delivered to this instance but not started,
    /// so another instance can take it at once. Bounded: a nak'ed message may come
    /// straight back to this same stream, and whatever is left is redelivered after
    /// `ack_wait` anyway.
    async fn hand_back(&self, messages: &mut pull::Stream) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        for _ in 0..self.batch() {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(message))) => {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                _ => break,
            }
        }
    }

    /// Messages asked for per pull request.
    fn batch(&self) -> usize {
        self.in_flight.min(256)
    }

    /// Handles one message: the single step a test can drive.
    pub async fn handle(&self, message: Message) -> Outcome {
        let span = tracing::info_span!("nats.command", messaging.destination = %message.subject, trace_id = tracing::field::Empty);
        crate::telemetry::continue_trace(&span, &crate::telemetry::NatsCarrier(message.headers.as_ref()));
        let outcome = tracing::Instrument::instrument(self.decide(&message), span).await;
        let label = match &outcome {
            Outcome::Acked => "acked",
            Outcome::DeadLettered(_) => "dead_lettered",
            Outcome::Nacked(_) => "nacked",
        };
        crate::metrics::NATS_MESSAGES.with_label_values(&[label]).inc();
        let ack = match &outcome {
            Outcome::Acked => message.ack().await,
            Outcome::DeadLettered(_) => message.ack_with(AckKind::Term).await,
            Outcome::Nacked(delay) => message.ack_with(AckKind::Nak(Some(*delay))).await,
        };
        if let Err(e) = ack {
            // The server will redeliver after ack_wait; the email id makes that harmless.
            tracing::warn!(error = %e, outcome = label, "cannot acknowledge a command");
        }
        outcome
    }

    async fn decide(&self, message: &Message) -> Outcome {
        let (stream, sequence, delivered) = match message.info() {
            Ok(info) => (info.stream.to_owned(), info.stream_sequence, info.delivered),
            Err(_) => (self.names.commands_stream.clone(), 0, 1),
        };
        let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let msg_id = header("Nats-Msg-Id").filter(|v| !v.is_empty());
        let subject = message.subject.to_string();
        let letter = |reason: String, field: Option<String>| DeadLetter {
            reason,
            field,
            subject: subject.clone(),
            stream: stream.clone(),
            sequence,
            msg_id: msg_id.clone(),
            payload: message.payload.clone(),
        };
        if delivered >= self.max_deliver {
            let reason = format!(
                "delivered {delivered} times without being settled (the service stopped while handling it each time)"
            );
            return self.dead_letter(letter(reason, None), delivered).await;
        }
        if subject != self.names.create_subject {
            crate::metrics::invalid_command("nats");
            return self.dead_letter(letter(format!("unknown command subject {subject}"), None), delivered).await;
        }
        let by = match self.keyring.authenticate_command(header("Authorization").as_deref(), &subject, self.require_key)
        {
            Ok(by) => by,
            // The reason names what was wrong, never the key.
            Err(e) => return self.dead_letter(letter(format!("refused: {e}"), None), delivered).await,
        };
        let payload = match CreateEmailPayload::from_json(&message.payload) {
            Ok(p) => p,
            Err(e) => {
                crate::metrics::invalid_command("nats");
                let refused = match e {
                    PayloadError::Malformed(m) => letter(format!("malformed JSON: {m}"), None),
                    PayloadError::Invalid(v) => invalid(letter, &v),
                };
                return self.dead_letter(refused, delivered).await;
            }
        };
        let (draft, body_key) = payload.into_draft();
        let idempotency_key = Some(
            body_key.or_else(|| msg_id.clone()).unwrap_or_else(|| format!("nats:{stream}:{}:{sequence}", self.epoch)),
        );
        let mut metadata = HashMap::new();
        metadata.insert("transport".to_owned(), "nats".to_owned());
        metadata.insert("nats_subject".into(), subject.clone());
        metadata.insert("nats_stream_sequence".into(), sequence.to_string());
        if let Some(id) = &msg_id {
            metadata.insert("nats_msg_id".into(), id.clone());
        }
        let sane = |v: &String| crate::text::is_token(v, crate::transport::request_id::MAX_LEN);
        let correlation = header("X-Request-Id")
            .filter(sane)
            .or_else(|| header("Correlation-Id").filter(sane))
            .or_else(|| msg_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        metadata.insert("correlation_id".into(), correlation);
        let request = CreateEmail { draft, source: Source::Nats, idempotency_key, metadata, by };
        self.commit(message, request, letter, sequence, delivered).await
    }

    /// Commits one command, holding it while the store is down (see the module header).
    async fn commit(
        &self,
        message: &Message,
        request: CreateEmail,
        letter: impl Fn(String, Option<String>) -> DeadLetter,
        sequence: u64,
        delivered: i64,
    ) -> Outcome {
        let mut pause = Duration::from_millis(500);
        let mut refused_once = false;
        loop {
            match self.ledger.create(request.clone()).await {
                Ok(accepted) => {
                    tracing::debug!(email_id = %accepted.id, sequence, "command committed");
                    return Outcome::Acked;
                }
                Err(LedgerError::Invalid(v)) => return self.dead_letter(invalid(letter, &v), delivered).await,
                Err(e @ (LedgerError::Conflict | LedgerError::Refused(_) | LedgerError::Denied(_))) => {
                    return self.dead_letter(letter(e.to_string(), None), delivered).await;
                }
                Err(e) => {
                    let store_down = matches!(e, LedgerError::Unavailable(_)) || !self.ledger.store_answers().await;
                    if store_down {
                        tracing::warn!(error = %e, sequence, retry_in = ?pause, "event store unavailable; holding the command");
                    } else if refused_once {
                        let reason = format!("refused twice by the event store: {e}");
                        return self.dead_letter(letter(reason, None), delivered).await;
                    } else {
                        refused_once = true;
                        tracing::warn!(error = %e, sequence, "the event store refused a command; trying it once more");
                    }
                    // Held: tell the server it is in progress, so it is not redelivered.
                    let _ = message.ack_with(AckKind::Progress).await;
                    tokio::select! {
                        _ = self.stop.cancelled() => return Outcome::Nacked(Duration::ZERO),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn dead_letter(&self, letter: DeadLetter, delivered: i64) -> Outcome {
        let max_payload = self.js.client().server_info().max_payload;
        match dlq::publish(&self.js, &self.names.dlq_commands_subject, max_payload, &letter).await {
            Ok(()) => {
                tracing::info!(reason = %letter.reason, sequence = letter.sequence, "command dead-lettered");
                Outcome::DeadLettered(letter.reason)
            }
            Err(e) => {
                // Keep the command until its dead letter is safely stored.
                let delay = backoff(delivered.max(1) as u32);
                tracing::warn!(error = %e, retry_in = ?delay, "cannot publish a dead letter; will retry");
                Outcome::Nacked(delay)
            }
        }
    }
}

fn invalid(letter: impl Fn(String, Option<String>) -> DeadLetter, v: &ValidationErrors) -> DeadLetter {
    letter(format!("invalid command: {v}"), v.0.first().map(|e| e.field.clone()))
}

/// The longest pause between two attempts to pull while NATS does not answer.
const PULL_RETRY_MAX: Duration = Duration::from_secs(5);

/// 1 s, 2 s, 4 s, … capped at 60 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(6), Duration::from_secs(32));
        assert_eq!(backoff(7), Duration::from_secs(60));
        assert_eq!(backoff(1000), Duration::from_secs(60));
    }
}
