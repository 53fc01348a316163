//! The ledger's write API: what every transport and operator command calls. It derives
//! the email id from the idempotency key, records where a command came from in the
//! event metadata, hands the command to the [`EventStore`] (new emails group-committed,
//! later commands through cqrs-es: see [`crate::store`]), announces the commit, and
//! sorts failures into the kinds a transport needs to answer: invalid, conflict,
//! refused, unavailable, internal.

use std::collections::HashMap;
use std::sync::Arc;

use backon::Retryable;
use cqrs_es::AggregateError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::keyring::{Authenticated, Keyring};
use crate::access::{AccessError, Principal, Scope};
use crate::command::{
    Email, EmailCommand, EmailDraft, EmailError, EmailEvent, EmailServices, FieldError, Limits, RequestEmailCommand,
    Source, ValidationErrors, email_id_for_tenant_key,
};
use crate::render::Renderer;
use crate::store::EventStore;
use crate::store::append::{AppendError, Appended, EventRow, NewEvents};
use crate::store::notify::Announcer;

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A request to create an email, as a transport hands it over.
#[derive(Debug, Clone)]
pub struct CreateEmail {
    /// What the producer asked for.
    pub draft: EmailDraft,
    /// Where it came in.
    pub source: Source,
    /// The producer's idempotency key; without one the email gets a fresh id.
    pub idempotency_key: Option<String>,
    /// Where it came from, for auditors (`correlation_id`, `nats_msg_id`, `caller`, …).
    pub metadata: HashMap<String, String>,
    /// Who asks: the email belongs to its tenant, and its events name it as the actor.
    pub by: Authenticated,
}

/// An accepted (committed) email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The email's id.
    pub id: Uuid,
}

/// Why a command was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The input is not acceptable; retrying it will not help.
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// The idempotency key was used before for another email.
    #[error("idempotency key already used for a different email")]
    Conflict,
    /// The command does not apply to the email in its current state (or it is unknown).
    #[error(transparent)]
    Refused(EmailError),
    /// The caller may not do this (a scope, a sender domain, a quota).
    #[error(transparent)]
    Denied(AccessError),
    /// The database could not be reached; retry later.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LedgerError {
    /// Worth retrying later (a transport naks or answers 503).
    pub fn is_transient(&self) -> bool {
        matches!(self, LedgerError::Unavailable(_) | LedgerError::Internal(_))
    }
}

/// The write side, shared by every transport.
#[derive(Clone)]
pub struct Ledger {
    store: EventStore,
    limits: Limits,
    services: EmailServices,
    announcer: Option<Announcer>,
    keyring: Option<Keyring>,
}

impl Ledger {
    /// A ledger on `pool` (already migrated). Starts the group-commit writers, so it
    /// must be called inside a Tokio runtime.
    pub fn new(pool: PgPool, limits: Limits) -> Self {
        let services = EmailServices { renderer: Arc::new(Renderer) };
        Self { store: EventStore::new(pool, services.clone()), limits, services, announcer: None, keyring: None }
    }

    /// Announces every commit (so projections here and elsewhere wake at once).
    pub(crate) fn with_announcer(mut self, announcer: Announcer) -> Self {
        self.announcer = Some(announcer);
        self
    }

    /// Counts sends against keys' daily quotas.
    pub(crate) fn with_keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    fn committed(&self) {
        if let Some(a) = &self.announcer {
            a.committed();
        }
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Validates and records a request. Returns only after the events are committed.
    /// The same idempotency key with the same email returns the same id and records
    /// nothing new; with another email it is a [`LedgerError::Conflict`].
    #[tracing::instrument(name = "ledger.create", skip_all, fields(source = request.source.as_str()))]
    pub async fn create(&self, request: CreateEmail) -> Result<Accepted, LedgerError> {
        let source = request.source;
        let result = self.create_inner(request).await;
        let outcome = match &result {
            Ok(_) => "accepted",
            Err(LedgerError::Invalid(_)) => "invalid",
            Err(LedgerError::Conflict | LedgerError::Refused(_)) => "conflict",
            Err(LedgerError::Denied(_)) => "denied",
            Err(LedgerError::Unavailable(_)) => "unavailable",
            Err(LedgerError::Internal(_)) => "internal",
        };
        crate::metrics::COMMANDS.with_label_values(&[source.as_str(), outcome]).inc();
        result
    }

    async fn create_inner(&self, request: CreateEmail) -> Result<Accepted, LedgerError> {
        if let Some(key) = &request.idempotency_key {
            check_idempotency_key(key).map_err(|e| LedgerError::Invalid(ValidationErrors::single(e)))?;
        }
        let principal = &request.by.principal;
        principal.require(Scope::Send).map_err(LedgerError::Denied)?;
        let email = request.draft.validate(&self.limits).map_err(LedgerError::Invalid)?;
        principal.may_send_from(&email.from.address).map_err(LedgerError::Denied)?;
        if let Some(keyring) = &self.keyring {
            keyring.check_quota(request.by.key.as_deref()).map_err(LedgerError::Denied)?;
        }
        let email_id = match &request.idempotency_key {
            Some(key) => email_id_for_tenant_key(&principal.tenant, key),
            None => Uuid::now_v7(),
        };
        let mut metadata = clean(request.metadata);
        metadata.insert("source".into(), request.source.as_str().into());
        principal.stamp(&mut metadata);
        crate::telemetry::inject_current(&mut metadata);
        if let Some(key) = &request.idempotency_key {
            metadata.insert("idempotency_key".into(), key.clone());
        }
        let command = RequestEmailCommand {
            email_id,
            source: request.source,
            idempotency_key: request.idempotency_key,
            draft: request.draft,
            email,
            received_at: now(),
        };
        let command = EmailCommand::Request(Box::new(command));
        if self.try_append_new(email_id, command.clone(), &metadata).await? {
            if let Some(keyring) = &self.keyring {
                keyring.count_send(request.by.key.as_deref());
            }
        } else {
            // The id exists: a retry (no-op) or a reused key (conflict). The aggregate
            // decides — and a key of another tenant is told of a conflict, never of the
            // other tenant's email.
            let owner = self.store.tenant_of(email_id).await.map_err(|e| LedgerError::Unavailable(Box::new(e)))?;
            if owner.as_deref().is_some_and(|t| t != request.by.principal.tenant) {
                return Err(LedgerError::Conflict);
            }
            self.execute(email_id, command, metadata).await?;
        }
        Ok(Accepted { id: email_id })
    }

    /// The fast path for a new email: the aggregate handles the command from its empty
    /// state, and its events are group-committed with other new emails' (see
    /// [`append`]) instead of cqrs-es's load-then-append. `Ok(false)` when the email
    /// already exists, so the caller takes the general path.
    async fn try_append_new(
        &self,
        email_id: Uuid,
        command: EmailCommand,
        metadata: &HashMap<String, String>,
    ) -> Result<bool, LedgerError> {
        Ok(self.decide_and_append(email_id, Email::default(), 0, command, metadata).await?.is_some())
    }

    /// Records the outcome of a delivery attempt decided on `state`, the email as the
    /// sender folded it from its events up to `last_sequence`: the events follow that
    /// sequence and are group-committed with other emails' outcomes, without loading the
    /// history again; returns those events. When someone wrote after `last_sequence`
    /// meanwhile, nothing is written and the command runs on the fresh history instead
    /// ([`Ledger::execute`]; then no events are returned).
    pub async fn record_attempt(
        &self,
        email_id: Uuid,
        state: &Email,
        last_sequence: i64,
        command: EmailCommand,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EmailEvent>, LedgerError> {
        let metadata = clean(metadata);
        match self.decide_and_append(email_id, state.clone(), last_sequence, command.clone(), &metadata).await? {
            Some(events) => Ok(events),
            None => self.execute(email_id, command, metadata).await.map(|()| vec![]),
        }
    }

    /// Handles `command` on `state` (the email up to `last_sequence`) and appends the
    /// events it decides through the group commit; `None` when those sequences are
    /// taken already (nothing written).
    async fn decide_and_append(
        &self,
        email_id: Uuid,
        mut state: Email,
        last_sequence: i64,
        command: EmailCommand,
        metadata: &HashMap<String, String>,
    ) -> Result<Option<Vec<EmailEvent>>, LedgerError> {
        let sink = cqrs_es::event_sink::EventSink::<Email>::default();
        cqrs_es::Aggregate::handle(&mut state, command, &self.services, &sink)
            .await
            .map_err(|e| classify(AggregateError::UserError(e)))?;
        let internal = |e: serde_json::Error| LedgerError::Internal(Box::new(e));
        let decided = sink.collect().await;
        let events = decided
            .iter()
            .map(|event| {
                Ok(EventRow {
                    event_type: cqrs_es::DomainEvent::event_type(event),
                    event_version: cqrs_es::DomainEvent::event_version(event),
                    payload: serde_json::to_value(event).map_err(internal)?,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        if events.is_empty() {
            return Ok(Some(decided));
        }
        let new = NewEvents {
            id: email_id.to_string(),
            first_sequence: last_sequence + 1,
            events,
            metadata: serde_json::to_value(metadata).map_err(internal)?,
        };
        let appended = self.store.append(new).await.map_err(|e| match e {
            AppendError::Unavailable(e) => LedgerError::Unavailable(e),
            AppendError::Internal(e) => LedgerError::Internal(e),
        })?;
        Ok(match appended {
            Appended::Inserted => {
                self.committed();
                Some(decided)
            }
            Appended::Exists => None,
        })
    }

    /// Whether the event store answers: an error that is not a command's own fault
    /// (the database down, or its `events` table gone) fails this too.
    pub async fn store_answers(&self) -> bool {
        self.store.probe().await.is_ok()
    }

    /// Queues a dead-lettered email again, recording who asked (`by`, or the principal's
    /// name). An email of another tenant is not found.
    pub async fn redrive(
        &self,
        email_id: Uuid,
        principal: &Principal,
        by: Option<&str>,
        run: Option<Uuid>,
        mut metadata: HashMap<String, String>,
    ) -> Result<(), LedgerError> {
        principal.require(Scope::Redrive).map_err(LedgerError::Denied)?;
        let owner = self.store.tenant_of(email_id).await.map_err(|e| LedgerError::Unavailable(Box::new(e)))?;
        if !owner.as_deref().is_some_and(|t| principal.sees(t)) {
            return Err(LedgerError::Refused(EmailError::NotFound));
        }
        principal.stamp(&mut metadata);
        // Outcomes and redrives belong to the email's tenant, whoever acted.
        metadata.insert("tenant".into(), owner.unwrap_or_default());
        let by = by.unwrap_or(&principal.name).to_owned();
        let command = EmailCommand::Redrive(crate::command::RedriveCommand { by, at: now(), run });
        self.execute(email_id, command, metadata).await
    }

    /// Runs any command on one email. A concurrent writer to the same email (two
    /// retries of one request racing) is resolved by re-running on the fresh state.
    pub async fn execute(
        &self,
        email_id: Uuid,
        command: EmailCommand,
        metadata: HashMap<String, String>,
    ) -> Result<(), LedgerError> {
        let metadata = clean(metadata);
        let attempt = || self.store.execute(email_id, command.clone(), metadata.clone());
        attempt
            .retry(backon::ConstantBuilder::default().with_delay(std::time::Duration::ZERO).with_max_times(2))
            .when(|e| matches!(e, AggregateError::AggregateConflict))
            .await
            .map_err(classify)?;
        self.committed();
        Ok(())
    }
}

/// Longest metadata value kept, in characters.
const MAX_METADATA_CHARS: usize = 512;

/// Metadata as it may be stored: values taken from requests (headers, peer names) lose
/// their control characters — PostgreSQL's jsonb refuses NUL, and an ESC has no business
/// in an auditor's terminal — and are cut to [`MAX_METADATA_CHARS`]; keys likewise.
fn clean(metadata: HashMap<String, String>) -> HashMap<String, String> {
    metadata
        .into_iter()
        .map(|(k, v)| (crate::text::printable(&k, 64), crate::text::printable(&v, MAX_METADATA_CHARS)))
        .collect()
}

fn check_idempotency_key(key: &str) -> Result<(), FieldError> {
    const FIELD: &str = "idempotency_key";
    if key.is_empty() {
        return Err(FieldError::invalid(FIELD, "is empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(FieldError::too_large(FIELD, format!("is longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes")));
    }
    if key.chars().any(char::is_control) {
        return Err(FieldError::invalid(FIELD, "contains a control character"));
    }
    Ok(())
}

fn classify(error: AggregateError<EmailError>) -> LedgerError {
    match error {
        AggregateError::UserError(EmailError::Invalid(e)) => LedgerError::Invalid(e),
        AggregateError::UserError(EmailError::Unrenderable(reason)) => {
            LedgerError::Invalid(ValidationErrors::single(FieldError::invalid("message", reason)))
        }
        AggregateError::UserError(EmailError::IdempotencyConflict) => LedgerError::Conflict,
        AggregateError::UserError(e) => LedgerError::Refused(e),
        AggregateError::AggregateConflict => LedgerError::Unavailable("concurrent writers kept conflicting".into()),
        AggregateError::DatabaseConnectionError(e) => LedgerError::Unavailable(e),
        AggregateError::DeserializationError(e) => LedgerError::Internal(e),
        AggregateError::UnexpectedError(e) => {
            if crate::store::is_unavailable(e.as_ref()) {
                LedgerError::Unavailable(e)
            } else {
                LedgerError::Internal(e)
            }
        }
    }
}

pub use crate::store::now;
