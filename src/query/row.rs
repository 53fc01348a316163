//! The `emails` table, the read model's one owner: its row, its columns, and every
//! statement that reads or writes it, for the live table and for a re-projection's
//! shadow alike (`table` names which). The projection writes through [`upsert`]; the
//! repository and the operator tools read through [`get`], [`load`] and
//! [`dead_letters`]. (Search builds its own statements over the same columns:
//! [`super::repository`].)

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::view::{EmailSummary, EmailView, RecipientState};

/// The live read model's table.
pub const TABLE: &str = "emails";

/// Columns of `emails`, in the order of [`EmailRow`].
pub const COLUMNS: &str = "id, from_address, from_name, to_addresses, cc_addresses, bcc_addresses, recipients, subject, \
     body, html, status, attempts, last_error, message_id, source, created_at, updated_at, sent_at, next_attempt_at, \
     last_sequence, tenant, deliveries";

/// One `emails` row, as JSON for `jsonb_to_recordset`.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct EmailRow {
    pub(crate) id: Uuid,
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
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    last_sequence: i64,
    tenant: String,
    deliveries: sqlx::types::Json<Vec<RecipientState>>,
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
            tenant: v.tenant.clone(),
            deliveries: sqlx::types::Json(v.deliveries.clone()),
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
            tenant: r.tenant,
            deliveries: r.deliveries.0,
        }
    }
}

/// The columns of a search result: a row without its bodies, the first `body_chars`
/// characters of the text body standing in (PostgreSQL reads only that slice).
pub fn summary_columns(body_chars: u32) -> String {
    format!(
        "id, from_address, from_name, to_addresses, cc_addresses, bcc_addresses, subject, \
         substring(body, 1, {body_chars}) AS snippet, char_length(body) > {body_chars} AS snippet_cut, \
         html IS NOT NULL AS has_html, status, attempts, last_error, message_id, source, created_at, updated_at, \
         sent_at, next_attempt_at, last_sequence, tenant"
    )
}

/// A row read with [`summary_columns`].
#[derive(Debug, sqlx::FromRow)]
pub struct SummaryRow {
    id: Uuid,
    from_address: String,
    from_name: Option<String>,
    to_addresses: Vec<String>,
    cc_addresses: Vec<String>,
    bcc_addresses: Vec<String>,
    subject: String,
    snippet: String,
    snippet_cut: bool,
    has_html: bool,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    message_id: Option<String>,
    source: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    last_sequence: i64,
    tenant: String,
}

impl From<SummaryRow> for EmailSummary {
    fn from(r: SummaryRow) -> Self {
        Self {
            id: r.id,
            from: r.from_address,
            from_name: r.from_name,
            to: r.to_addresses,
            cc: r.cc_addresses,
            bcc: r.bcc_addresses,
            subject: r.subject,
            snippet: r.snippet,
            snippet_truncated: r.snippet_cut,
            has_html: r.has_html,
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
            tenant: r.tenant,
        }
    }
}

/// The row of `id` in the live table.
pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<EmailView>> {
    let sql = format!("SELECT {COLUMNS} FROM {TABLE} WHERE id = $1");
    let row: Option<EmailRow> = sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?;
    Ok(row.map(EmailView::from))
}

/// The rows of `ids` in `table`, by id.
pub async fn load(conn: &mut PgConnection, table: &str, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, EmailView>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!("SELECT {COLUMNS} FROM {table} WHERE id = ANY($1)");
    let rows: Vec<EmailRow> = sqlx::query_as(&sql).bind(ids).fetch_all(conn).await?;
    Ok(rows.into_iter().map(|r| (r.id, EmailView::from(r))).collect())
}

/// The columns an outcome changes ([`update_state`]); the rest of a row is written once.
const STATE_COLUMNS: &str =
    "status, attempts, last_error, updated_at, sent_at, next_attempt_at, last_sequence, deliveries";

/// The rows of `ids` in `table`, by id, without their bodies: enough to fold outcomes
/// onto and write back with [`update_state`] (never with [`upsert`]).
pub async fn load_state(conn: &mut PgConnection, table: &str, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, EmailView>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let columns = COLUMNS.replace("body, html", "'' AS body, NULL::text AS html");
    let sql = format!("SELECT {columns} FROM {table} WHERE id = ANY($1)");
    let rows: Vec<EmailRow> = sqlx::query_as(&sql).bind(ids).fetch_all(conn).await?;
    Ok(rows.into_iter().map(|r| (r.id, EmailView::from(r))).collect())
}

/// Writes the state of `views` (status, attempts, errors, times, per-recipient
/// deliveries) into their existing rows, never over a newer one. The rest of the row —
/// body, addresses, and the search vector computed from them — is left alone, so
/// PostgreSQL neither receives the body again nor recomputes the vector.
pub async fn update_state(conn: &mut PgConnection, table: &str, views: &[EmailView]) -> sqlx::Result<()> {
    if views.is_empty() {
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = views
        .iter()
        .map(|v| {
            serde_json::json!({
                "id": v.id, "status": v.status, "attempts": v.attempts, "last_error": v.last_error,
                "updated_at": v.updated_at, "sent_at": v.sent_at, "next_attempt_at": v.next_attempt_at,
                "last_sequence": v.version, "deliveries": v.deliveries,
            })
        })
        .collect();
    let sets = STATE_COLUMNS.split(", ").map(|c| format!("{c} = r.{c}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "UPDATE {table} t SET {sets} FROM jsonb_to_recordset($1) AS r(id uuid, status text, attempts integer,            last_error text, updated_at timestamptz, sent_at timestamptz, next_attempt_at timestamptz,            last_sequence bigint, deliveries jsonb)          WHERE t.id = r.id AND t.last_sequence < r.last_sequence"
    );
    sqlx::query(&sql).bind(serde_json::Value::Array(rows)).execute(conn).await?;
    Ok(())
}

/// Writes views into `table` with one multi-row upsert, never replacing a newer row.
pub async fn upsert(conn: &mut PgConnection, table: &str, views: &[EmailView]) -> sqlx::Result<()> {
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
           updated_at timestamptz, sent_at timestamptz, next_attempt_at timestamptz, last_sequence bigint, \
           tenant text, deliveries jsonb) \
         ON CONFLICT (id) DO UPDATE SET {updates} WHERE {table}.last_sequence < EXCLUDED.last_sequence"
    );
    sqlx::query(&sql).bind(json).execute(conn).await?;
    Ok(())
}

/// Every dead-lettered email, oldest first.
pub async fn dead_letters(pool: &PgPool) -> sqlx::Result<Vec<EmailView>> {
    let sql = format!("SELECT {COLUMNS} FROM {TABLE} WHERE status = 'dead_lettered' ORDER BY updated_at, id");
    let rows: Vec<EmailRow> = sqlx::query_as(&sql).fetch_all(pool).await?;
    Ok(rows.into_iter().map(EmailView::from).collect())
}
