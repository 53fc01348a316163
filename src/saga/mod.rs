//! The sender saga: claims due deliveries, sends them, and records each attempt in the
//! ledger recipient by recipient (`Sent` for those taken, `Failed` for those refused,
//! `Suppressed` for those on the suppression list; the aggregate adds `DeadLettered`
//! when nobody is left to try).
//!
//! Delivery guarantee: **at least once, and more than once only after a crash**. A
//! claim is a lease on the schedule row (`FOR UPDATE SKIP LOCKED`), so two workers never
//! send the same attempt; before sending, the worker folds the email's events and sends
//! only if the ledger still awaits that attempt, and only to the recipients still
//! pending. The one window left is between the SMTP server's reply and the commit of
//! its outcome: a crash there means the lease runs out and the attempt is made again.
//! Every attempt carries the same `Message-ID`, so the receiving side can drop the
//! duplicate.
//!
//! Throughput: deliveries are claimed in batches (one transaction, which also takes
//! each recipient domain's allowance: [`shaping`]), their histories read in one query,
//! their recipients checked against the suppression list in one query; up to
//! `delivery.concurrency` are in flight, over pooled, pipelined SMTP connections
//! ([`smtp`]); and outcomes are group-committed after the history they were decided on
//! ([`Ledger::record_attempt`]), without loading it again.

pub mod backoff;
pub mod mailer;
pub mod schedule;
pub mod shaping;
pub mod smtp;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::command::{
    Email, EmailCommand, EmailEvent, EmailStatus, RecipientFailure, RecordAttemptCommand, ValidEmail,
};
use crate::config::DeliverySettings;
use crate::ledger::{Ledger, LedgerError, now};
use crate::render::Renderer;
use crate::store::feed::{self, FeedEvent};
use mailer::{Mailer, Outcome, Refusal};
use schedule::domain_of;
use shaping::Claimed;

/// Claim loops per instance.
const CLAIMERS: usize = 2;
/// Deliveries one claim takes at most.
const MAX_CLAIM: usize = 256;

/// One sender (one per instance; each runs up to `delivery.concurrency` deliveries at
/// once). Cheap to clone.
#[derive(Clone)]
pub struct Sender(Arc<Inner>);

struct Inner {
    pool: PgPool,
    ledger: Ledger,
    mailer: Mailer,
    settings: RwLock<Arc<DeliverySettings>>,
    owner: String,
    /// Domains seen paused lately: their next success lifts the pause. Refreshed from
    /// the database at most once a second (other instances pause domains too).
    throttled: Mutex<(HashSet<String>, Option<std::time::Instant>)>,
}

/// A claimed delivery, with what is needed to make it.
struct Job {
    claimed: Claimed,
    parts: Parts,
    /// Pending recipients on the suppression list, with the list's reason.
    suppressed: Vec<(String, String)>,
}

/// The parts of an email its events hold: the message to render and its identity.
struct Parts {
    email: ValidEmail,
    message_id: String,
    date: DateTime<Utc>,
    state: Email,
    last_sequence: i64,
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
    let last_sequence = events.last().map_or(0, |e| e.sequence);
    Some(Parts { email, message_id: p.message_id, date: p.date, state, last_sequence, correlation_id, metadata })
}

impl Sender {
    /// A sender on `pool`, recording through `ledger`, sending with `mailer`.
    pub fn new(pool: PgPool, ledger: Ledger, mailer: Mailer, settings: DeliverySettings) -> Self {
        let owner = format!("sender-{}", &Uuid::new_v4().simple().to_string()[..12]);
        Self(Arc::new(Inner {
            pool,
            ledger,
            mailer,
            settings: RwLock::new(Arc::new(settings)),
            owner,
            throttled: Mutex::default(),
        }))
    }

    /// Takes new settings (domain limits, back-off, concurrency) for the deliveries
    /// claimed from now on.
    pub fn reload(&self, settings: DeliverySettings) {
        *self.0.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    fn settings(&self) -> Arc<DeliverySettings> {
        self.0.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Claims up to `limit` due deliveries and prepares them: their histories in one
    /// read, their recipients against the suppression list in another.
    async fn claim(&self, limit: usize) -> anyhow::Result<Vec<Job>> {
        let settings = self.settings();
        let (claimed, throttled) =
            shaping::claim(&self.0.pool, &self.0.owner, limit as i64, settings.lease, &settings).await?;
        self.0.throttled.lock().unwrap_or_else(|e| e.into_inner()).0.extend(throttled);
        if claimed.is_empty() {
            self.refresh_throttled().await?;
            return Ok(vec![]);
        }
        // The rows are ours for the lease now. A store that fails from here on (an
        // outage) must not leave them to wait for the lease to run out: try again,
        // for up to half the lease, so nobody else can have claimed them meanwhile.
        let deadline = std::time::Instant::now() + settings.lease / 2;
        let mut wait = Duration::from_millis(200);
        loop {
            match self.prepare(&claimed, &settings).await {
                Ok(jobs) => return Ok(jobs),
                Err(e) if std::time::Instant::now() + wait < deadline => {
                    tracing::warn!(error = format!("{e:#}"), claimed = claimed.len(), retry_in = ?wait, "cannot prepare claimed deliveries yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The throttled domains, read again once they are a second old.
    async fn refresh_throttled(&self) -> anyhow::Result<()> {
        let stale = {
            let known = self.0.throttled.lock().unwrap_or_else(|e| e.into_inner());
            known.1.is_none_or(|at| at.elapsed() > Duration::from_secs(1))
        };
        if stale {
            let paused = shaping::throttled(&self.0.pool).await?;
            if !paused.is_empty() {
                let moved = shaping::set_aside_paused(&self.0.pool).await?;
                if moved > 0 {
                    tracing::debug!(moved, "deliveries of paused domains set aside until their pause ends");
                }
            }
            let mut known = self.0.throttled.lock().unwrap_or_else(|e| e.into_inner());
            known.0.extend(paused);
            known.1 = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// The jobs for claimed rows: their histories, those the schedule is ahead of left
    /// to the projection, suppressed recipients looked up.
    async fn prepare(&self, claimed: &[Claimed], settings: &DeliverySettings) -> anyhow::Result<Vec<Job>> {
        self.refresh_throttled().await?;
        let ids: Vec<Uuid> = claimed.iter().map(|c| c.email_id).collect();
        let histories = {
            let mut conn = self.0.pool.acquire().await?;
            feed::read_emails(&mut conn, &ids).await?
        };
        let mut histories: HashMap<Uuid, Vec<FeedEvent>> =
            histories.into_iter().filter_map(|h| Some((h.first()?.email_id, h))).collect();
        let mut jobs = Vec::with_capacity(claimed.len());
        let mut lagging = Vec::new();
        for claimed in claimed {
            let id = claimed.email_id;
            let Some(parts) = histories.remove(&id).as_deref().and_then(parts) else {
                tracing::warn!(email_id = %id, "email on the schedule without its Requested and Persisted events");
                continue;
            };
            let state = &parts.state;
            let awaiting = matches!(state.status, EmailStatus::Queued | EmailStatus::Failed);
            let due = state.next_attempt_at.is_none_or(|t| t <= Utc::now());
            if !awaiting || !due || state.pending.is_empty() {
                // The schedule lags the ledger: leave the row to the projection.
                lagging.push(id);
                continue;
            }
            jobs.push(Job { claimed: claimed.clone(), parts, suppressed: vec![] });
        }
        for id in lagging {
            schedule::extend(&self.0.pool, id, &self.0.owner, settings.lease).await?;
        }
        let wanted: HashSet<(String, String)> = jobs
            .iter()
            .flat_map(|j| j.parts.state.pending.iter().map(|r| (j.claimed.tenant.clone(), r.to_lowercase())))
            .collect();
        let listed = crate::suppression::lookup(&self.0.pool, &wanted).await?;
        if !listed.is_empty() {
            for job in &mut jobs {
                for r in &job.parts.state.pending {
                    if let Some(reason) = listed.get(&(job.claimed.tenant.clone(), r.to_lowercase())) {
                        job.suppressed.push((r.clone(), reason.clone()));
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// Makes one delivery and records its outcome.
    async fn deliver(&self, job: Job) -> anyhow::Result<()> {
        let settings = self.settings();
        let Job { claimed, parts, suppressed } = job;
        let id = claimed.email_id;
        let domain = claimed.domain.as_str();
        let label = if settings.domains.contains_key(domain) { domain } else { "other" };
        let state = &parts.state;
        let to_send: Vec<String> =
            state.pending.iter().filter(|r| !suppressed.iter().any(|(s, _)| s == *r)).cloned().collect();
        let at_start = std::time::Instant::now();
        let attempt = if to_send.is_empty() { state.attempts } else { state.attempts + 1 };
        let span = tracing::info_span!(
            "smtp.deliver",
            email_id = %id,
            attempt,
            domain,
            outcome = tracing::field::Empty,
            smtp.code = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        crate::telemetry::continue_trace(&span, &crate::telemetry::MetadataCarrier(&parts.metadata));
        let outcome = if to_send.is_empty() {
            Outcome::default()
        } else {
            let gauge = crate::metrics::DOMAIN_IN_FLIGHT.with_label_values(&[label]);
            gauge.inc();
            let outcome = tracing::Instrument::instrument(
                async {
                    match Renderer::render(&parts.email, &parts.message_id, parts.date) {
                        Ok(message) => {
                            let from = message.envelope.from().map(|a| a.to_string()).unwrap_or_default();
                            let policy = settings.policy(domain);
                            self.0.mailer.send(id, &from, &to_send, &message.bytes, (domain, policy)).await
                        }
                        Err(e) => Outcome {
                            refused: vec![Refusal {
                                recipients: to_send.clone(),
                                code: None,
                                message: format!("cannot render: {e}"),
                                permanent: true,
                                address: false,
                            }],
                            ..Outcome::default()
                        },
                    }
                },
                span.clone(),
            )
            .await;
            gauge.dec();
            crate::metrics::SMTP_DURATION.observe(at_start.elapsed().as_secs_f64());
            outcome
        };
        let at = now();
        let label_of = if outcome.refused.is_empty() {
            "sent"
        } else if outcome.refused.iter().any(|r| !r.permanent) {
            "transient_failure"
        } else {
            "permanent_failure"
        };
        if !to_send.is_empty() {
            span.record("outcome", label_of);
            crate::metrics::DELIVERIES.with_label_values(&[label_of]).inc();
        }
        let count = |outcome: &str, n: usize| {
            crate::metrics::DOMAIN_DELIVERIES.with_label_values(&[label, outcome]).inc_by(n as u64);
        };
        count("sent", outcome.accepted.len());
        count("suppressed", suppressed.len());
        for r in &outcome.refused {
            count(if r.permanent { "refused" } else { "deferred" }, r.recipients.len());
        }
        self.shape(&settings, &outcome, label).await;

        let _entered = span.enter();
        let (reply_code, reply_text) = outcome.reply.clone().unwrap_or_default();
        if let Some(code) = outcome.refused.first().and_then(|r| r.code).or((reply_code > 0).then_some(reply_code)) {
            span.record("smtp.code", code);
        }
        let elapsed_ms = at_start.elapsed().as_millis() as u64;
        if outcome.refused.is_empty() && !outcome.accepted.is_empty() {
            tracing::info!(email_id = %id, attempt, domain, code = reply_code, recipients = outcome.accepted.len(),
                suppressed = suppressed.len(), elapsed_ms, "delivered");
        } else if !suppressed.is_empty() && to_send.is_empty() {
            tracing::info!(email_id = %id, domain, suppressed = suppressed.len(), "every recipient left is suppressed");
        }
        for r in &outcome.refused {
            tracing::info!(email_id = %id, attempt, domain, code = r.code,
                permanent = r.permanent, recipients = r.recipients.len(), taken = outcome.accepted.len(),
                error = %r.message, elapsed_ms, "delivery attempt failed");
        }
        let delay = backoff::delay(&settings, state.round_attempts + 1);
        let reason = suppressed.first().map(|(_, r)| format!("on the suppression list: {r}")).unwrap_or_default();
        let command = RecordAttemptCommand {
            attempt,
            accepted: outcome.accepted.clone(),
            reply_code,
            reply_text,
            failures: outcome
                .refused
                .iter()
                .map(|r| RecipientFailure {
                    recipients: r.recipients.clone(),
                    error: r.message.clone(),
                    reply_code: r.code,
                    permanent: r.permanent,
                })
                .collect(),
            suppressed: suppressed.iter().map(|(r, _)| r.clone()).collect(),
            suppression_reason: reason,
            at,
            retry_at: at + chrono::Duration::from_std(delay).unwrap_or_default(),
            max_attempts: settings.max_attempts,
        };
        let mut metadata = HashMap::from([
            ("transport".to_owned(), "saga".to_owned()),
            ("worker".to_owned(), self.0.owner.clone()),
            ("actor".to_owned(), self.actor()),
            ("tenant".to_owned(), claimed.tenant.clone()),
        ]);
        if let Some(c) = &parts.correlation_id {
            metadata.insert("correlation_id".into(), c.clone());
        }
        crate::telemetry::inject_current(&mut metadata);
        drop(_entered);
        let recorded = tracing::Instrument::instrument(
            self.record(id, &parts, EmailCommand::RecordAttempt(command), metadata.clone()),
            span,
        )
        .await?;
        if recorded.iter().any(|e| matches!(e, EmailEvent::DeadLettered(_))) {
            crate::metrics::DEAD_LETTERED.inc();
        }
        self.suppress(id, &claimed.tenant, &outcome, metadata).await;
        Ok(())
    }

    fn actor(&self) -> String {
        format!("saga:{}", self.0.owner)
    }

    /// Pauses the domains that throttled, and lifts the pause of one that took mail.
    async fn shape(&self, settings: &DeliverySettings, outcome: &Outcome, label: &str) {
        let mut paused = HashSet::new();
        for r in outcome.refused.iter().filter(|r| !r.permanent && shaping::is_throttle(r.code, &r.message)) {
            paused.extend(r.recipients.iter().map(|a| domain_of(a)));
        }
        for domain in paused {
            match shaping::throttle(&self.0.pool, &domain, settings.throttle_backoff, settings.throttle_backoff_max)
                .await
            {
                Ok(pause) if pause > 0.0 => {
                    crate::metrics::DOMAIN_THROTTLED.with_label_values(&[label]).inc();
                    tracing::warn!(domain, pause_s = pause, "the domain throttles us; paused");
                    self.0.throttled.lock().unwrap_or_else(|e| e.into_inner()).0.insert(domain);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(domain, error = %e, "cannot pause a throttling domain"),
            }
        }
        let recovered: Vec<String> = {
            let mut known = self.0.throttled.lock().unwrap_or_else(|e| e.into_inner());
            if known.0.is_empty() {
                return;
            }
            let took: HashSet<String> = outcome.accepted.iter().map(|a| domain_of(a)).collect();
            let back: Vec<String> = known.0.iter().filter(|d| took.contains(*d)).cloned().collect();
            for d in &back {
                known.0.remove(d);
            }
            back
        };
        for domain in recovered {
            if let Err(e) = shaping::recovered(&self.0.pool, &domain).await {
                tracing::warn!(domain, error = %e, "cannot lift a domain's pause");
            }
        }
    }

    /// Puts the recipients refused for good on their tenant's suppression list.
    async fn suppress(&self, id: Uuid, tenant: &str, outcome: &Outcome, metadata: HashMap<String, String>) {
        let actor = self.actor();
        for r in outcome.refused.iter().filter(|r| r.permanent && r.address) {
            for address in &r.recipients {
                let change = crate::suppression::Change {
                    tenant,
                    address,
                    reason: &r.message,
                    by: &actor,
                    metadata: metadata.clone(),
                };
                let bounce = crate::suppression::Bounce { code: r.code, email_id: id };
                match crate::suppression::add(&self.0.pool, change, Some(bounce)).await {
                    Ok(true) => tracing::info!(email_id = %id, tenant, address = %address, "recipient suppressed"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(email_id = %id, error = %e, "cannot suppress a refused recipient"),
                }
            }
        }
    }

    /// Records an outcome, retrying a few times while the store is unreachable: the
    /// message is already sent, and an unrecorded outcome means a resend.
    async fn record(
        &self,
        id: Uuid,
        parts: &Parts,
        command: EmailCommand,
        metadata: HashMap<String, String>,
    ) -> anyhow::Result<Vec<EmailEvent>> {
        let attempt =
            || self.0.ledger.record_attempt(id, &parts.state, parts.last_sequence, command.clone(), metadata.clone());
        let recorded = attempt
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_times(6))
            .when(LedgerError::is_transient)
            .notify(
                |e, wait| tracing::warn!(email_id = %id, error = %e, retry_in = ?wait, "cannot record the outcome yet"),
            )
            .await;
        match recorded {
            Ok(events) => Ok(events),
            Err(LedgerError::Refused(e)) => {
                tracing::warn!(email_id = %id, error = %e, "outcome refused by the ledger");
                Ok(vec![])
            }
            Err(e) if e.is_transient() => {
                anyhow::bail!("the outcome of {id} could not be recorded ({e}); the attempt will be made again")
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs until `shutdown`: keeps up to `delivery.concurrency` deliveries in flight.
    /// Two claimers take turns: while one claims a batch (a few round trips), the other
    /// can claim what has freed up meanwhile, so claiming never stalls sending. An idle
    /// claimer sleeps until something is scheduled (NOTIFY), the next due time, or the
    /// poll interval. On shutdown, the deliveries in flight are finished and recorded.
    pub async fn run(self, shutdown: CancellationToken, wake: Option<watch::Receiver<u64>>) {
        let concurrency = self.settings().concurrency as usize;
        let slots = Arc::new(Semaphore::new(concurrency));
        let flying = TaskTracker::new();
        let claimers: Vec<_> = (0..CLAIMERS)
            .map(|_| tokio::spawn(self.clone().claimer(slots.clone(), flying.clone(), shutdown.clone(), wake.clone())))
            .collect();
        for claimer in claimers {
            let _ = claimer.await;
        }
        flying.close();
        flying.wait().await;
        tracing::info!("sender stopped");
    }

    async fn claimer(
        self,
        slots: Arc<Semaphore>,
        flying: TaskTracker,
        shutdown: CancellationToken,
        mut wake: Option<watch::Receiver<u64>>,
    ) {
        while !shutdown.is_cancelled() {
            // Every free slot, once at least one is.
            let mut permits = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let more = slots.available_permits().min(MAX_CLAIM - 1);
            if more > 0
                && let Ok(extra) = slots.clone().try_acquire_many_owned(more as u32)
            {
                permits.merge(extra);
            }
            let jobs = match self.claim(permits.num_permits()).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "sender cannot claim deliveries");
                    vec![]
                }
            };
            if jobs.is_empty() {
                drop(permits);
                let settings = self.settings();
                let mut nap = settings.poll_interval;
                if let Ok(Some(next)) = schedule::next_due(&self.0.pool).await {
                    let until = (next - Utc::now()).to_std().unwrap_or_default();
                    nap = nap.min(until.max(Duration::from_millis(5)));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = crate::store::notify::wait(&mut wake, nap) => {}
                }
                continue;
            }
            for job in jobs {
                let permit = permits.split(1).expect("one permit per job claimed");
                let me = self.clone();
                let id = job.claimed.email_id;
                flying.spawn(async move {
                    if let Err(e) = me.deliver(job).await {
                        tracing::warn!(email_id = %id, error = format!("{e:#}"), "delivery not completed; it will be retried");
                    }
                    drop(permit);
                });
            }
        }
    }
}
