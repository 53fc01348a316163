//! The sender saga: claims due deliveries, sends them, and records each attempt in the
//! ledger as `Sent` or `Failed` (the aggregate adds `DeadLettered` when the failure is
//! permanent or the attempts are spent).
//!
//! Delivery guarantee: **at least once, and more than once only after a crash**. A
//! claim is a lease on the schedule row (`FOR UPDATE SKIP LOCKED`), so two workers never
//! send the same attempt; before sending, the worker folds the email's events and sends
//! only if the ledger still awaits that attempt. The one window left is between the SMTP
//! server's reply and the commit of its outcome: a crash there means the lease runs out
//! and the attempt is made again. Every attempt carries the same `Message-ID`, so the
//! receiving side can drop the duplicate.

pub mod backoff;
pub mod mailer;
pub mod schedule;

use std::collections::HashMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::command::{
    Email, EmailCommand, EmailEvent, EmailStatus, RecordFailureCommand, RecordSentCommand, ValidEmail,
};
use crate::config::DeliverySettings;
use crate::ledger::{Ledger, LedgerError, now};
use crate::render::Renderer;
use crate::store::feed::{self, FeedEvent};
use mailer::Mailer;

/// What one delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The server accepted it.
    Sent,
    /// It failed; the ledger decides whether it is retried.
    Failed {
        /// A 5xx or equivalent.
        permanent: bool,
    },
    /// Nothing to do now (already done, or not due yet); the schedule will catch up.
    Skipped,
}

/// One sender worker (one per instance; each runs deliveries concurrently).
#[derive(Clone)]
pub struct Sender {
    pool: PgPool,
    ledger: Ledger,
    mailer: Mailer,
    settings: DeliverySettings,
    owner: String,
}

/// The parts of an email its events hold: the message to render and its identity.
struct Parts {
    email: ValidEmail,
    message_id: String,
    date: DateTime<Utc>,
    state: Email,
    correlation_id: Option<String>,
    /// The request's metadata (its trace context continues into the delivery).
    metadata: serde_json::Value,
}

fn parts(events: &[FeedEvent]) -> Option<Parts> {
    let mut state = Email::default();
    let (mut requested, mut persisted) = (None, None);
    for e in events {
        match &e.event {
            EmailEvent::Requested(r) => requested = Some((r.clone(), e.metadata.clone())),
            EmailEvent::Persisted(p) => persisted = Some(p.clone()),
            _ => {}
        }
        state.apply(e.event.clone());
    }
    let ((requested, metadata), p) = (requested?, persisted?);
    let email = ValidEmail {
        from: p.from,
        to: p.to,
        cc: p.cc,
        bcc: p.bcc,
        reply_to: p.reply_to,
        subject: p.subject,
        text: requested.request.text,
        html: requested.request.html,
        headers: p.headers,
    };
    let correlation_id = metadata.get("correlation_id").and_then(|v| v.as_str()).map(str::to_owned);
    Some(Parts { email, message_id: p.message_id, date: p.date, state, correlation_id, metadata })
}

impl Sender {
    /// A sender on `pool`, recording through `ledger`, sending with `mailer`.
    pub fn new(pool: PgPool, ledger: Ledger, mailer: Mailer, settings: DeliverySettings) -> Self {
        let owner = format!("sender-{}", &Uuid::new_v4().simple().to_string()[..12]);
        Self { pool, ledger, mailer, settings, owner }
    }

    /// Claims what is due and delivers it: the single step tests drive. Returns how
    /// many deliveries were claimed.
    pub async fn try_execute_once(&self) -> anyhow::Result<usize> {
        let limit = i64::from(self.settings.concurrency);
        let ids = schedule::claim(&self.pool, &self.owner, limit, self.settings.lease).await?;
        let n = ids.len();
        futures::stream::iter(ids)
            .for_each_concurrent(self.settings.concurrency as usize, |id| async move {
                if let Err(e) = self.deliver(id).await {
                    tracing::warn!(email_id = %id, error = format!("{e:#}"), "delivery not completed; it will be retried");
                }
            })
            .await;
        Ok(n)
    }

    /// Delivers one claimed email and records the outcome.
    pub async fn deliver(&self, id: Uuid) -> anyhow::Result<Delivery> {
        let events = {
            let mut conn = self.pool.acquire().await?;
            feed::read_email(&mut conn, id, None).await?
        };
        let Some(parts) = parts(&events) else {
            anyhow::bail!("email {id} is on the schedule but its events are incomplete");
        };
        let state = &parts.state;
        let awaiting = matches!(state.status, EmailStatus::Queued | EmailStatus::Failed);
        let due = state.next_attempt_at.is_none_or(|t| t <= Utc::now());
        if !awaiting || !due {
            // The schedule lags the ledger: leave the row to the projection.
            schedule::extend(&self.pool, id, &self.owner, self.settings.lease).await?;
            return Ok(Delivery::Skipped);
        }
        let attempt = state.attempts + 1;
        let span = tracing::info_span!(
            "smtp.deliver",
            email_id = %id,
            attempt,
            outcome = tracing::field::Empty,
            smtp.code = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        crate::telemetry::continue_trace(&span, &crate::telemetry::MetadataCarrier(&parts.metadata));
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(
            async {
                match Renderer::render(&parts.email, &parts.message_id, parts.date) {
                    Ok(message) => self.mailer.send(id, &message.envelope, &message.bytes).await,
                    Err(e) => {
                        Err(mailer::Rejected { code: None, message: format!("cannot render: {e}"), permanent: true })
                    }
                }
            },
            span.clone(),
        )
        .await;
        let elapsed = started.elapsed();
        crate::metrics::SMTP_DURATION.observe(elapsed.as_secs_f64());
        let at = now();
        // One name per outcome, for the span and the metric.
        let label = match &result {
            Ok(_) => "sent",
            Err(rejected) if rejected.permanent => "permanent_failure",
            Err(_) => "transient_failure",
        };
        span.record("outcome", label);
        crate::metrics::DELIVERIES.with_label_values(&[label]).inc();
        // The outcome is logged inside the attempt's span, so the line carries its trace id.
        let _entered = span.enter();
        let (command, outcome) = match result {
            Ok(accepted) => {
                span.record("smtp.code", accepted.code);
                tracing::info!(email_id = %id, attempt, code = accepted.code, ?elapsed, "delivered");
                let c = RecordSentCommand { attempt, reply_code: accepted.code, reply_text: accepted.text, at };
                (EmailCommand::RecordSent(c), Delivery::Sent)
            }
            Err(rejected) => {
                if let Some(code) = rejected.code {
                    span.record("smtp.code", code);
                }
                tracing::info!(email_id = %id, attempt, code = ?rejected.code, permanent = rejected.permanent,
                    error = %rejected.message, "delivery attempt failed");
                let delay = backoff::delay(&self.settings, state.round_attempts + 1);
                let c = RecordFailureCommand {
                    attempt,
                    error: rejected.message,
                    reply_code: rejected.code,
                    permanent: rejected.permanent,
                    at,
                    retry_at: at + chrono::Duration::from_std(delay).unwrap_or_default(),
                    max_attempts: self.settings.max_attempts,
                };
                if rejected.permanent || state.round_attempts + 1 >= self.settings.max_attempts {
                    crate::metrics::DEAD_LETTERED.inc();
                }
                (EmailCommand::RecordFailure(c), Delivery::Failed { permanent: rejected.permanent })
            }
        };
        let mut metadata = HashMap::from([
            ("transport".to_owned(), "saga".to_owned()),
            ("worker".to_owned(), self.owner.clone()),
            ("actor".to_owned(), format!("saga:{}", self.owner)),
            ("tenant".to_owned(), crate::query::view::tenant_in(&parts.metadata)),
        ]);
        if let Some(c) = parts.correlation_id {
            metadata.insert("correlation_id".into(), c);
        }
        crate::telemetry::inject_current(&mut metadata);
        drop(_entered);
        tracing::Instrument::instrument(self.record(id, command, metadata), span).await?;
        Ok(outcome)
    }

    /// Records an outcome, retrying a few times while the store is unreachable: the
    /// message is already sent, and an unrecorded outcome means a resend.
    async fn record(&self, id: Uuid, command: EmailCommand, metadata: HashMap<String, String>) -> anyhow::Result<()> {
        let attempt = || self.ledger.execute(id, command.clone(), metadata.clone());
        let recorded = attempt
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_times(6))
            .when(LedgerError::is_transient)
            .notify(
                |e, wait| tracing::warn!(email_id = %id, error = %e, retry_in = ?wait, "cannot record the outcome yet"),
            )
            .await;
        match recorded {
            Ok(()) => Ok(()),
            Err(LedgerError::Refused(e)) => {
                tracing::warn!(email_id = %id, error = %e, "outcome refused by the ledger");
                Ok(())
            }
            Err(e) if e.is_transient() => {
                anyhow::bail!("the outcome of {id} could not be recorded ({e}); the attempt will be made again")
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs until `shutdown`: deliver what is due, then sleep until something is
    /// scheduled (NOTIFY), the next due time, or the poll interval.
    pub async fn run(self, shutdown: CancellationToken, mut wake: Option<watch::Receiver<u64>>) {
        while !shutdown.is_cancelled() {
            let claimed = match self.try_execute_once().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "sender cannot claim deliveries");
                    0
                }
            };
            if claimed > 0 {
                continue;
            }
            let mut nap = self.settings.poll_interval;
            if let Ok(Some(next)) = schedule::next_due(&self.pool).await {
                let until = (next - Utc::now()).to_std().unwrap_or_default();
                nap = nap.min(until.max(Duration::from_millis(5)));
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = crate::store::notify::wait(&mut wake, nap) => {}
            }
        }
        tracing::info!("sender stopped");
    }
}
