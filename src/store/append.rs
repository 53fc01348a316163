//! Group commit: new emails, and the outcomes of delivery attempts.
//!
//! A new email's events are appended without loading anything (its history is empty by
//! definition); an attempt's outcome is appended after the events the sender folded
//! (`first_sequence` = the last one's + 1), also without loading them again. Requests
//! queue here; each of a few writers takes everything queued (up
//! to [`MAX_BATCH`] emails) and appends it with one `INSERT … SELECT FROM UNNEST` — one
//! statement, one durable commit, one prepared plan whatever the batch size — then
//! answers every request. Under load the batches grow on their own (whatever arrives
//! while a commit is in flight goes in the next one); alone, a new email waits for
//! nobody, and an outcome at most [`OUTCOME_LINGER`] for others to share its commit.
//! While another batch is being written, a small one (fewer than [`WORTH_A_COMMIT`]
//! emails) waits for that write to end, at most [`CROWD_LINGER`], gathering more: 32
//! REST clients each waiting for their own `202` otherwise came 3.5 emails to a commit.
//!
//! A statement the store refuses for one email's sake is split until that email stands
//! alone ([`insert_isolating`]): the others are committed, and only it is refused.
//!
//! `ON CONFLICT DO NOTHING` tells each email apart: an email whose first event is
//! already stored (a retry, or a key reused for another email) comes back as
//! [`Appended::Exists`] and the caller decides through the aggregate, while the rest of
//! its batch is committed. Two requests for one id in one batch: the first is appended,
//! the second is answered `Exists` once that commit is done.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

/// Emails one INSERT carries at most.
pub const MAX_BATCH: usize = 256;
/// INSERTs in flight at once (each on its own pooled connection).
const WRITERS: usize = 4;
/// How long a batch holding an attempt's outcome waits for more before it is written.
const OUTCOME_LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// Emails that make a batch worth a commit of its own beside one in flight.
const WORTH_A_COMMIT: usize = 32;
/// How long a smaller batch waits for the write in flight to end, gathering more.
const CROWD_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

const INSERT: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[]) \
     ON CONFLICT DO NOTHING \
     RETURNING aggregate_id";

/// One event to append.
#[derive(Debug)]
pub struct EventRow {
    /// `events.event_type`.
    pub event_type: String,
    /// `events.event_version`.
    pub event_version: String,
    /// The event as stored.
    pub payload: serde_json::Value,
}

/// Events of one email, as its aggregate produced them: a new email's whole history
/// (`first_sequence` 1), or what follows the history it was decided on.
#[derive(Debug)]
pub struct NewEvents {
    /// The email's id (`events.aggregate_id`).
    pub id: String,
    /// The sequence of the first of `events`.
    pub first_sequence: i64,
    /// The events, in order.
    pub events: Vec<EventRow>,
    /// The metadata every one of its events carries.
    pub metadata: serde_json::Value,
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The database could not be reached; retry later.
    #[error("event store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: a bug, or a store written by hand.
    #[error("{0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Every event is committed.
    Inserted,
    /// The email already had events at these sequences (it exists already, or someone
    /// wrote after the history the events were decided on); nothing was written.
    Exists,
}

struct Job {
    new: NewEvents,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// The queue in front of the writers. Cheap to clone; the writers stop when the last
/// clone is dropped.
#[derive(Clone)]
pub(crate) struct Appender {
    queue: mpsc::Sender<Job>,
}

impl Appender {
    /// Starts the writers on `pool` (needs a Tokio runtime).
    pub(crate) fn start(pool: PgPool) -> Self {
        let (queue, jobs) = mpsc::channel(MAX_BATCH * WRITERS);
        let jobs = Arc::new(Mutex::new(jobs));
        let writing = Arc::new(Writing::default());
        for _ in 0..WRITERS {
            tokio::spawn(writer(pool.clone(), jobs.clone(), writing.clone()));
        }
        Self { queue }
    }

    /// Appends `email`; returns once it is committed (or known to exist already).
    pub(crate) async fn append(&self, email: NewEvents) -> Result<Appended, AppendError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || AppendError::Internal("the event appender stopped".into());
        self.queue.send(Job { new: email, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writes in flight, and a signal when one ends.
#[derive(Default)]
struct Writing {
    count: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

async fn writer(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Job>>>, writing: Arc<Writing>) {
    use std::sync::atomic::Ordering;
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    loop {
        let mut queue = queue.lock().await;
        if queue.recv_many(&mut jobs, MAX_BATCH).await == 0 {
            return;
        }
        if jobs.iter().any(|j| j.new.first_sequence > 1) {
            // Outcomes come one SMTP reply at a time: a moment's wait lets those of the
            // other connections share this commit (end to end at 2,000 emails a second:
            // 0.55 → 0.38 event INSERTs, each a WAL flush, per email).
            let until = tokio::time::Instant::now() + OUTCOME_LINGER;
            while jobs.len() < MAX_BATCH {
                let more = MAX_BATCH - jobs.len();
                match tokio::time::timeout_at(until, queue.recv_many(&mut jobs, more)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        } else if jobs.len() < WORTH_A_COMMIT && writing.count.load(Ordering::Acquire) > 0 {
            // Another batch is being written: what arrives until it is done (or for
            // CROWD_LINGER at most) shares this commit instead of needing one more.
            let until = tokio::time::Instant::now() + CROWD_LINGER;
            loop {
                // Listening before looking, so a write that ends in between still wakes us.
                let ended = writing.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if jobs.len() >= WORTH_A_COMMIT || writing.count.load(Ordering::Acquire) == 0 {
                    break;
                }
                let more = MAX_BATCH - jobs.len();
                tokio::select! {
                    n = queue.recv_many(&mut jobs, more) => if n == 0 { break },
                    _ = &mut ended => break,
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
        }
        drop(queue);
        writing.count.fetch_add(1, Ordering::AcqRel);
        write(&pool, &mut jobs).await;
        writing.count.fetch_sub(1, Ordering::AcqRel);
        writing.ended.notify_waiters();
    }
}

/// Appends the batch and answers every job in it.
async fn write(pool: &PgPool, jobs: &mut Vec<Job>) {
    // A second request for an id already in this batch waits for the first one's commit.
    let mut seen = HashSet::with_capacity(jobs.len());
    let mut repeats = vec![];
    let mut batch = Vec::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        if seen.insert(job.new.id.clone()) {
            batch.push(job);
        } else {
            repeats.push(job);
        }
    }
    crate::metrics::APPEND_BATCH.observe(batch.len() as f64);
    let answers = insert_isolating(pool, &batch).await;
    // A repeat shares its first request's fate: committed (then it exists) or not.
    let mut fate: HashMap<&str, Result<(), (bool, String)>> = HashMap::with_capacity(repeats.len());
    for (job, answer) in batch.iter().zip(&answers) {
        let settled = match answer {
            Ok(_) => Ok(()),
            Err(AppendError::Unavailable(e)) => Err((true, e.to_string())),
            Err(AppendError::Internal(e)) => Err((false, e.to_string())),
        };
        fate.insert(job.new.id.as_str(), settled);
    }
    let repeat_answers: Vec<Result<Appended, AppendError>> = repeats
        .iter()
        .map(|job| match fate.get(job.new.id.as_str()) {
            Some(Err((true, e))) => Err(AppendError::Unavailable(e.clone().into())),
            Some(Err((false, e))) => Err(AppendError::Internal(e.clone().into())),
            _ => Ok(Appended::Exists),
        })
        .collect();
    for (job, answer) in batch.into_iter().zip(answers).chain(repeats.into_iter().zip(repeat_answers)) {
        let _ = job.reply.send(answer);
    }
}

/// Inserts `batch` and gives each job its answer. A statement the store refuses for a
/// reason other than an outage is split in halves, each tried on its own, until the
/// rows it refuses stand alone: **a batch never fails an innocent member** (a refused
/// row costs its batch about log₂(batch) more statements).
fn insert_isolating<'a>(
    pool: &'a PgPool,
    batch: &'a [Job],
) -> futures::future::BoxFuture<'a, Vec<Result<Appended, AppendError>>> {
    Box::pin(async move {
        if batch.is_empty() {
            return vec![];
        }
        match insert(pool, batch).await {
            Ok(stored) => batch.iter().map(|job| answer(job, &stored)).collect(),
            Err(e) if super::is_unavailable(&e) => {
                let message = e.to_string();
                batch.iter().map(|_| Err(AppendError::Unavailable(message.clone().into()))).collect()
            }
            Err(e) if batch.len() == 1 => {
                tracing::warn!(email_id = %batch[0].new.id, error = %e, "the event store refused an email's events");
                vec![Err(AppendError::Internal(e.to_string().into()))]
            }
            Err(_) => {
                let (left, right) = batch.split_at(batch.len() / 2);
                let mut answers = insert_isolating(pool, left).await;
                answers.extend(insert_isolating(pool, right).await);
                answers
            }
        }
    })
}

fn answer(job: &Job, stored: &HashMap<String, usize>) -> Result<Appended, AppendError> {
    match stored.get(job.new.id.as_str()).copied().unwrap_or(0) {
        0 => Ok(Appended::Exists),
        n if n == job.new.events.len() => Ok(Appended::Inserted),
        n => {
            // Undone in its transaction (see `insert`) for appends after a history; for a
            // new email, a partial history means the store was written by hand.
            tracing::error!(email_id = %job.new.id, stored = n, "only part of an email's events were appended");
            Err(AppendError::Internal(format!("email {} has a partial history", job.new.id).into()))
        }
    }
}

/// One statement for the whole batch; returns how many events were stored per email.
/// When some of the batch append more than one event after an existing history, the
/// statement runs in a transaction that removes again the rows of any email only part
/// of whose events went in (another writer took one of its sequences first): such an
/// email then counts as [`Appended::Exists`], whole or not at all. A single event (an
/// attempt's `Sent`, most outcomes) goes in whole or not at all by itself, so a batch
/// of new emails and single outcomes is one autocommitted statement: no `BEGIN` and
/// `COMMIT` round trips.
async fn insert(pool: &PgPool, batch: &[Job]) -> Result<HashMap<String, usize>, sqlx::Error> {
    let rows: usize = batch.iter().map(|j| j.new.events.len()).sum();
    let (mut ids, mut sequences, mut types, mut versions, mut payloads, mut metadata) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for job in batch {
        for (i, event) in job.new.events.iter().enumerate() {
            ids.push(job.new.id.as_str());
            sequences.push(job.new.first_sequence + i as i64);
            types.push(event.event_type.as_str());
            versions.push(event.event_version.as_str());
            payloads.push(&event.payload);
            metadata.push(&job.new.metadata);
        }
    }
    let query = sqlx::query_scalar(INSERT)
        .bind(<crate::command::Email as cqrs_es::Aggregate>::TYPE)
        .bind(ids)
        .bind(sequences)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata);
    let count = |returned: Vec<String>| {
        let mut stored: HashMap<String, usize> = HashMap::with_capacity(batch.len());
        for id in returned {
            *stored.entry(id).or_insert(0) += 1;
        }
        stored
    };
    if batch.iter().all(|j| j.new.first_sequence == 1 || j.new.events.len() == 1) {
        return Ok(count(query.fetch_all(pool).await?));
    }
    let mut tx = pool.begin().await?;
    let mut stored = count(query.fetch_all(&mut *tx).await?);
    let partial: Vec<&str> = batch
        .iter()
        .filter(|j| j.new.first_sequence > 1)
        .filter(|j| stored.get(&j.new.id).is_some_and(|&n| n < j.new.events.len()))
        .map(|j| j.new.id.as_str())
        .collect();
    if !partial.is_empty() {
        sqlx::query(
            "DELETE FROM events WHERE aggregate_type = 'Email' AND aggregate_id = ANY($1) \
             AND txid = pg_current_xact_id()",
        )
        .bind(&partial)
        .execute(&mut *tx)
        .await?;
        for id in partial {
            stored.remove(id);
        }
    }
    tx.commit().await?;
    Ok(stored)
}
