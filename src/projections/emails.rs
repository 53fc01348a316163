//! The `emails` read model (transactional): each batch folds its events onto the
//! current rows and writes them back in one multi-row upsert, in the same transaction
//! as the checkpoint. An event at or below a row's `last_sequence` is skipped, so
//! applying a batch twice changes nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::feed::FeedEvent;
use super::{Projection, ProjectionKind};
use crate::query::view::EmailView;

/// The `emails` projection, writing into `table` (a shadow table during a re-projection).
pub struct EmailsProjection {
    table: String,
}

impl EmailsProjection {
    /// The live projection, into `emails`.
    pub fn new() -> Self {
        Self::into_table("emails")
    }

    /// The same projection into another table with the same shape (a shadow).
    pub fn into_table(table: &str) -> Self {
        Self { table: table.into() }
    }
}

impl Default for EmailsProjection {
    fn default() -> Self {
        Self::new()
    }
}

/// Columns of `emails`, in the order of [`EmailRow`].
pub const COLUMNS: &str = "id, from_address, from_name, to_addresses, cc_addresses, bcc_addresses, recipients, subject, \
     body, html, status, attempts, last_error, message_id, source, created_at, updated_at, sent_at, next_attempt_at, \
     last_sequence";

/// One `emails` row, as JSON for `jsonb_to_recordset`.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct EmailRow {
    id: Uuid,
    from_address: String,
    from_name: Option<String>,
    to_addresses: Vec<String>,
    cc_addresses: Vec<String>,
    bcc_addresses: Vec<String>,
    recipients: Vec<String>,
    subject: String,
    body: String,
    html: Option<String>,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    message_id: Option<String>,
    source: String,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    sent_at: Option<chrono::DateTime<chrono::Utc>>,
    next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    last_sequence: i64,
}

impl From<&EmailView> for EmailRow {
    fn from(v: &EmailView) -> Self {
        Self {
            id: v.id,
            from_address: v.from.clone(),
            from_name: v.from_name.clone(),
            to_addresses: v.to.clone(),
            cc_addresses: v.cc.clone(),
            bcc_addresses: v.bcc.clone(),
            recipients: v.recipients(),
            subject: v.subject.clone(),
            body: v.body.clone(),
            html: v.html.clone(),
            status: v.status.clone(),
            attempts: v.attempts as i32,
            last_error: v.last_error.clone(),
            message_id: v.message_id.clone(),
            source: v.source.clone(),
            created_at: v.created_at,
            updated_at: v.updated_at,
            sent_at: v.sent_at,
            next_attempt_at: v.next_attempt_at,
            last_sequence: v.version,
        }
    }
}

impl From<EmailRow> for EmailView {
    fn from(r: EmailRow) -> Self {
        Self {
            id: r.id,
            from: r.from_address,
            from_name: r.from_name,
            to: r.to_addresses,
            cc: r.cc_addresses,
            bcc: r.bcc_addresses,
            subject: r.subject,
            body: r.body,
            html: r.html,
            status: r.status,
            attempts: r.attempts.max(0) as u32,
            last_error: r.last_error,
            message_id: r.message_id,
            source: r.source,
            created_at: r.created_at,
            updated_at: r.updated_at,
            sent_at: r.sent_at,
            next_attempt_at: r.next_attempt_at,
            version: r.last_sequence,
        }
    }
}

/// Folds `events` onto `current` (the views as they stand), returning the changed views.
pub fn fold_batch(mut current: HashMap<Uuid, EmailView>, events: &[FeedEvent]) -> Vec<EmailView> {
    let mut changed: Vec<Uuid> = Vec::new();
    for e in events {
        let known = current.get(&e.email_id).map(|v| v.version);
        if known.is_some_and(|version| e.sequence <= version) {
            continue; // already applied
        }
        let folded = match current.remove(&e.email_id) {
            Some(view) => Some(view.apply(e.sequence, e.recorded_at, &e.event)),
            None => EmailView::fold([(e.sequence, e.recorded_at, &e.event)]),
        };
        if let Some(view) = folded {
            if !changed.contains(&view.id) {
                changed.push(view.id);
            }
            current.insert(view.id, view);
        }
    }
    changed.into_iter().filter_map(|id| current.remove(&id)).collect()
}

impl EmailsProjection {
    /// Loads the current rows of the emails touched by `events` — except those whose
    /// history starts in this batch (their `Requested` is here, so no row exists yet):
    /// new emails, the bulk of any busy batch and of every rebuild, cost no read.
    async fn load(&self, conn: &mut PgConnection, events: &[FeedEvent]) -> sqlx::Result<HashMap<Uuid, EmailView>> {
        let starts_here: std::collections::HashSet<Uuid> =
            events.iter().filter(|e| e.sequence == 1).map(|e| e.email_id).collect();
        let mut ids: Vec<Uuid> = events.iter().map(|e| e.email_id).filter(|id| !starts_here.contains(id)).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!("SELECT {COLUMNS} FROM {} WHERE id = ANY($1)", self.table);
        let rows: Vec<EmailRow> = sqlx::query_as(&sql).bind(&ids).fetch_all(conn).await?;
        Ok(rows.into_iter().map(|r| (r.id, EmailView::from(r))).collect())
    }

    /// Writes views with one multi-row upsert, never replacing a newer row.
    pub async fn upsert(&self, conn: &mut PgConnection, views: &[EmailView]) -> sqlx::Result<()> {
        if views.is_empty() {
            return Ok(());
        }
        let rows: Vec<EmailRow> = views.iter().map(EmailRow::from).collect();
        let json = serde_json::to_value(&rows).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let updates = COLUMNS
            .split(", ")
            .filter(|c| *c != "id")
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {table} ({COLUMNS}) SELECT {COLUMNS} FROM jsonb_to_recordset($1) AS r(\
               id uuid, from_address text, from_name text, to_addresses text[], cc_addresses text[], \
               bcc_addresses text[], recipients text[], subject text, body text, html text, status text, \
               attempts integer, last_error text, message_id text, source text, created_at timestamptz, \
               updated_at timestamptz, sent_at timestamptz, next_attempt_at timestamptz, last_sequence bigint) \
             ON CONFLICT (id) DO UPDATE SET {updates} WHERE {table}.last_sequence < EXCLUDED.last_sequence",
            table = self.table
        );
        sqlx::query(&sql).bind(json).execute(conn).await?;
        Ok(())
    }
}

#[async_trait]
impl Projection for EmailsProjection {
    fn name(&self) -> &'static str {
        "emails"
    }

    fn kind(&self) -> ProjectionKind {
        ProjectionKind::Transactional
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[FeedEvent]) -> anyhow::Result<()> {
        if self.table == "emails" {
            for e in events {
                crate::metrics::EVENTS_APPENDED.with_label_values(&[&e.event_type]).inc();
            }
        }
        let current = self.load(tx, events).await?;
        let views = fold_batch(current, events);
        self.upsert(tx, &views).await?;
        Ok(())
    }
}
