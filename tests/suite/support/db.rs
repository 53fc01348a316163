//! What the tests read and do behind the service's back, one helper per fact. Every
//! statement the tests run on the database is here (and only here), so a change to a
//! table is mended in one file.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// One stored event, as the tests look at it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stored {
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The stored payload (wrapped in its type's name: `{"Sent": {…}}`).
    pub payload: Value,
    pub metadata: Value,
    pub position: i64,
    pub txid: String,
}

impl Stored {
    /// The event's own fields (the payload without its type's name around it).
    pub fn fields(&self) -> &Value {
        self.payload.get(&self.event_type).unwrap_or(&self.payload)
    }
}

/// Every stored email event, in commit order (`txid, position`). (Key events, of
/// aggregate type `ApiKey`, are in [`key_events`].)
pub async fn events(pool: &PgPool) -> Vec<Stored> {
    events_of_aggregate(pool, "Email").await
}

/// Every stored event of API keys, in commit order.
pub async fn key_events(pool: &PgPool) -> Vec<Stored> {
    events_of_aggregate(pool, "ApiKey").await
}

async fn events_of_aggregate(pool: &PgPool, aggregate_type: &str) -> Vec<Stored> {
    sqlx::query_as(
        "SELECT aggregate_id, sequence, event_type, event_version, payload, metadata, position, txid::text AS txid \
         FROM events WHERE aggregate_type = $1 ORDER BY events.txid, position",
    )
    .bind(aggregate_type)
    .fetch_all(pool)
    .await
    .expect("read events")
}

/// Every stored event of one email, in sequence order.
pub async fn events_of(pool: &PgPool, id: &str) -> Vec<Stored> {
    sqlx::query_as(
        "SELECT aggregate_id, sequence, event_type, event_version, payload, metadata, position, txid::text AS txid \
         FROM events WHERE aggregate_type = 'Email' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("read events")
}

/// Events in the store (of one email, or of all).
pub async fn event_count(pool: &PgPool, id: Option<&str>) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'Email' AND ($1::text IS NULL OR aggregate_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("count events")
}

/// Distinct emails in the store.
pub async fn email_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Email'")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Events of one type in the store.
pub async fn count_of_type(pool: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Email' AND event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .expect("count events")
}

/// The columns of `events`, in order.
pub async fn event_columns(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'events' ORDER BY ordinal_position",
    )
    .fetch_all(pool)
    .await
    .expect("columns")
}

/// Inserts one stored event on `conn` (inside whatever transaction it is in), written
/// by transaction `txid` when given, with version `version`.
pub async fn insert_event_as(
    conn: &mut PgConnection,
    id: Uuid,
    sequence: i64,
    event: &(String, Value),
    version: &str,
    txid: Option<&str>,
) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, txid) \
         VALUES ('Email', $1, $2, $3, $4, $5, '{}', coalesce($6::text::xid8, pg_current_xact_id()))",
    )
    .bind(id.to_string())
    .bind(sequence)
    .bind(&event.0)
    .bind(version)
    .bind(&event.1)
    .bind(txid)
    .execute(conn)
    .await
    .expect("insert event");
}

/// The cluster's next transaction id.
pub async fn current_txid(pool: &PgPool) -> u64 {
    let txid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text").fetch_one(pool).await.unwrap();
    txid.parse().unwrap()
}

/// Takes the `events` table away (every write and read of it fails) …
pub async fn break_store(pool: &PgPool) {
    sqlx::query("ALTER TABLE events RENAME TO events_away").execute(pool).await.expect("rename events");
}

/// … and gives it back.
pub async fn mend_store(pool: &PgPool) {
    sqlx::query("ALTER TABLE events_away RENAME TO events").execute(pool).await.expect("rename events back");
}

/// Moves projection `name`'s checkpoint back to the start of the feed.
pub async fn rewind_checkpoint(pool: &PgPool, name: &str) {
    sqlx::query("UPDATE projection_checkpoints SET txid = '0', position = 0 WHERE name = $1")
        .bind(name)
        .execute(pool)
        .await
        .expect("rewind");
}

/// The position of projection `name`'s checkpoint (0 when it has none).
pub async fn checkpoint_position(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT position FROM projection_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
        .expect("checkpoint")
        .unwrap_or(0)
}

/// Ends every session holding an advisory lock on this database; returns how many.
pub async fn kill_lock_holders(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .expect("terminate")
}

/// Rows of the `emails` read model, and how many of them lag their email's last event.
pub async fn read_model_state(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE last_sequence < (SELECT max(sequence) FROM events \
         WHERE aggregate_id = emails.id::text)) FROM emails",
    )
    .fetch_one(pool)
    .await
    .expect("read model")
}

/// Rows of the `emails` read model matching a condition on one column.
pub async fn read_model_rows_where(pool: &PgPool, column: &str, value: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM emails WHERE {column}::text = $1"))
        .bind(value)
        .fetch_one(pool)
        .await
        .expect("count rows")
}

/// `(status, sent_at, last_sequence)` of one read-model row.
pub async fn read_model_row(pool: &PgPool, id: Uuid) -> (String, Option<chrono::DateTime<chrono::Utc>>, i64) {
    sqlx::query_as("SELECT status, sent_at, last_sequence FROM emails WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("read model row")
}

/// Any one email id of the read model.
pub async fn some_email_id(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT id::text FROM emails LIMIT 1").fetch_one(pool).await.expect("an email")
}

/// Every row of `table` as JSON text, ordered by `key`.
pub async fn table_snapshot(pool: &PgPool, table: &str, key: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM {table} t ORDER BY {key}"))
        .fetch_all(pool)
        .await
        .expect("snapshot")
}

/// The names of `table`'s indexes, sorted.
pub async fn index_names(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY 1")
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("indexes")
}

/// Rows on the delivery schedule.
pub async fn scheduled(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM deliveries").fetch_one(pool).await.expect("count deliveries")
}

/// Drops a test's database, whoever is connected to it.
pub async fn drop_database(server: &PgPool, name: &str) {
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(server).await;
}

/// Ends every other session on this database (the service's pool among them).
pub async fn kill_other_sessions(pool: &PgPool) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid()",
    )
    .execute(pool)
    .await
    .expect("terminate sessions");
}

/// Writes `n` read-model rows straight into `emails` for the search tests (`g` = 1 is
/// the oldest). Words: alpha everywhere, beta in 2 %, gamma in the oldest 300, delta in
/// the newest 15 and every 100th of the rest, omega in three (17, 6000, 11990).
pub async fn seed_search_corpus(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO emails (id, from_address, to_addresses, recipients, subject, body, status, source, \
                             created_at, updated_at, last_sequence) \
         SELECT gen_random_uuid(), 'user' || (g % 7) || '@example.com', ARRAY['rcpt@example.org'], \
                ARRAY['rcpt@example.org'], 'alpha ' || g, \
                concat_ws(' ', CASE WHEN g % 50 = 0 THEN 'beta' END, CASE WHEN g <= 300 THEN 'gamma' END, \
                          CASE WHEN g > $1 - 15 OR g % 100 = 0 THEN 'delta' END, \
                          CASE WHEN g IN (17, 6000, 11990) THEN 'omega' END), \
                CASE WHEN g % 3 = 0 THEN 'sent' ELSE 'queued' END, 'rest', \
                timestamptz '2026-01-01' + make_interval(secs => g / 2), now(), 2 \
         FROM generate_series(1, $1) AS g",
    )
    .bind(n)
    .execute(pool)
    .await
    .expect("seed");
    sqlx::query("ANALYZE emails").execute(pool).await.expect("analyze");
}

/// Moves the `emails` projection's checkpoint row (a new row version, the same place in
/// the feed), as the projection does with every write to the table: for a test that
/// writes `emails` itself, so that searches see the read model changed.
pub async fn touch_read_model(pool: &PgPool) {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name) VALUES ('emails') \
         ON CONFLICT (name) DO UPDATE SET updated_at = now()",
    )
    .execute(pool)
    .await
    .expect("touch the emails checkpoint");
}

/// Every read-model row matching a search, newest first, by the plainest SQL there is.
pub async fn search_oracle(
    pool: &PgPool,
    tsquery: Option<&str>,
    status: Option<&str>,
    from: Option<&str>,
) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT id FROM emails \
         WHERE ($1::text IS NULL OR search @@ to_tsquery('simple', $1)) \
           AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR from_address = $3) \
         ORDER BY created_at DESC, id DESC",
    )
    .bind(tsquery)
    .bind(status)
    .bind(from)
    .fetch_all(pool)
    .await
    .expect("oracle")
}

/// `n` read-model rows with every field kind of the search language: senders at three
/// domains, recipients at three (a rare one in cc), an HTML body on every 13th, a
/// refused recipient on every 97th and a suppressed one on every 89th, the phrase
/// "quarterly report" in the subject of every 50th and the body of every 30th, three
/// statuses, one email every half second from 2026-01-01.
pub async fn seed_field_corpus(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO emails (id, from_address, to_addresses, cc_addresses, recipients, subject, body, html, status, \
                             source, created_at, updated_at, last_sequence, deliveries) \
         SELECT gen_random_uuid(), f, ARRAY[t], c, ARRAY[t] || c, \
                'alpha ' || g || CASE WHEN g % 50 = 0 THEN ' quarterly report' ELSE '' END, \
                CASE WHEN g % 30 = 0 THEN 'the quarterly report is late' ELSE 'nothing to see' END, \
                CASE WHEN g % 13 = 0 THEN '<p>hi</p>' END, \
                CASE WHEN g % 11 = 0 THEN 'dead_lettered' WHEN g % 3 = 0 THEN 'sent' ELSE 'queued' END, 'rest', \
                timestamptz '2026-01-01' + make_interval(secs => g / 2), now(), 2, \
                jsonb_build_array(jsonb_build_object('address', t, 'status', \
                    CASE WHEN g % 97 = 0 THEN 'refused' WHEN g % 89 = 0 THEN 'suppressed' ELSE 'sent' END)) \
         FROM (SELECT g, \
                      'user' || (g % 7) || '@' || (ARRAY['example.com', 'example.net', 'mail.example.org'])[g % 3 + 1] AS f, \
                      'rcpt' || (g % 5) || '@' || CASE WHEN g % 4 = 0 THEN 'other.org' ELSE 'example.org' END AS t, \
                      CASE WHEN g % 10 = 0 THEN ARRAY['cc@rare.test'] ELSE ARRAY[]::text[] END AS c \
               FROM generate_series(1, $1) AS g) AS s",
    )
    .bind(n)
    .execute(pool)
    .await
    .expect("seed fields");
    sqlx::query("ANALYZE emails").execute(pool).await.expect("analyze");
}

/// Every read-model row where `condition` (plain SQL over the `emails` columns) holds,
/// newest first.
pub async fn ids_where(pool: &PgPool, condition: &str) -> Vec<Uuid> {
    sqlx::query_scalar(&format!("SELECT id FROM emails WHERE {condition} ORDER BY created_at DESC, id DESC"))
        .fetch_all(pool)
        .await
        .expect("oracle")
}

/// Makes the store refuse (with an error, as a broken or hostile row would be refused)
/// every new email whose request mentions `marker`: a row that fails on its own.
pub async fn refuse_requests_mentioning(pool: &PgPool, marker: &str) {
    let quoted = marker.replace('\'', "''");
    sqlx::query(&format!(
        "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.event_type = 'Requested' AND NEW.payload::text LIKE '%{quoted}%' THEN \
             RAISE EXCEPTION 'refused by the test: %', NEW.aggregate_id; \
           END IF; RETURN NEW; END $$"
    ))
    .execute(pool)
    .await
    .expect("trigger function");
    sqlx::query("CREATE TRIGGER refuse_marked BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_marked()")
        .execute(pool)
        .await
        .expect("trigger");
}

/// Every stored event of suppression lists, in commit order.
pub async fn suppression_events(pool: &PgPool) -> Vec<Stored> {
    events_of_aggregate(pool, "Suppression").await
}

/// The suppression list as (tenant, address, source, code, email id), in address order.
pub async fn suppressions(pool: &PgPool) -> Vec<(String, String, String, Option<i32>, Option<Uuid>)> {
    sqlx::query_as("SELECT tenant, address, source, code, email_id FROM suppressions ORDER BY tenant, address")
        .fetch_all(pool)
        .await
        .expect("read suppressions")
}

/// A domain's pause: (seconds of its current back-off, paused until).
pub async fn domain_pause(pool: &PgPool, domain: &str) -> Option<(f64, Option<chrono::DateTime<chrono::Utc>>)> {
    sqlx::query_as("SELECT backoff_s, held_until FROM domain_pacing WHERE domain = $1")
        .bind(domain)
        .fetch_optional(pool)
        .await
        .expect("read domain_pacing")
}

/// One stored event with its JSON as PostgreSQL's text and its time in microseconds:
/// what the proof log's canonical bytes are made of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RawStored {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub micros: i64,
    pub payload: String,
    pub metadata: String,
}

/// The event at `position`, as the canonical bytes take it.
pub async fn raw_event(pool: &PgPool, position: i64) -> RawStored {
    sqlx::query_as(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
           (extract(epoch FROM recorded_at) * 1000000)::bigint AS micros, payload::text AS payload, \
           metadata::text AS metadata FROM events WHERE position = $1",
    )
    .bind(position)
    .fetch_one(pool)
    .await
    .expect("raw event")
}

/// Every event's position, in commit order.
pub async fn positions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT position FROM events ORDER BY txid, position").fetch_all(pool).await.unwrap()
}

/// A copy of database `from` named `to` (nobody may be connected to `from`).
pub async fn copy_database(server: &PgPool, from: &str, to: &str) {
    sqlx::query(&format!("CREATE DATABASE \"{to}\" TEMPLATE \"{from}\"")).execute(server).await.expect("copy database");
}

/// Tamper: replace `from` with `to` in the payload of the event at `position`.
pub async fn edit_payload(pool: &PgPool, position: i64, from: &str, to: &str) {
    let n = sqlx::query(
        "UPDATE events SET payload = replace(payload::text, $2, $3)::jsonb \
         WHERE position = $1 AND strpos(payload::text, $2) > 0",
    )
    .bind(position)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);
}

/// Tamper: delete the event at `position`.
pub async fn delete_event(pool: &PgPool, position: i64) {
    sqlx::query("DELETE FROM events WHERE position = $1").bind(position).execute(pool).await.unwrap();
}

/// Tamper: delete every event from `position` on (in commit order).
pub async fn delete_events_from(pool: &PgPool, position: i64) {
    sqlx::query("DELETE FROM events WHERE (txid, position) >= (SELECT txid, position FROM events WHERE position = $1)")
        .bind(position)
        .execute(pool)
        .await
        .unwrap();
}

/// Tamper: swap the positions of two events.
pub async fn swap_positions(pool: &PgPool, a: i64, b: i64) {
    for (from, to) in [(a, -1), (b, a), (-1, b)] {
        sqlx::query("UPDATE events SET position = $2 WHERE position = $1")
            .bind(from)
            .bind(to)
            .execute(pool)
            .await
            .unwrap();
    }
}

/// Tamper: a forged email event at `position`, written as if by the transaction of the
/// event at `beside` (so it sorts into the middle of the history).
pub async fn insert_forged(pool: &PgPool, beside: i64, position: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
           txid, position) \
         SELECT 'Email', gen_random_uuid()::text, 1, 'Requested', '1.0', '{\"Requested\": {}}', '{}', txid, $2 \
         FROM events WHERE position = $1",
    )
    .bind(beside)
    .bind(position)
    .execute(pool)
    .await
    .unwrap();
}

/// Tamper: replace the note of the checkpoint of `size`.
pub async fn replace_checkpoint_note(pool: &PgPool, size: i64, note: &str) {
    sqlx::query("UPDATE proof_checkpoints SET note = $2 WHERE size = $1")
        .bind(size)
        .bind(note)
        .execute(pool)
        .await
        .unwrap();
}

/// Tamper, thoroughly: cut the history back to the checkpoint of `size` — the events
/// after it, their leaves and every later checkpoint — so the database agrees with itself.
pub async fn truncate_history_to(pool: &PgPool, size: i64) {
    for sql in [
        "DELETE FROM events WHERE position IN (SELECT u.p FROM proof_tiles t, \
           unnest(t.positions) WITH ORDINALITY AS u(p, i) WHERE t.tile * 256 + u.i - 1 >= $1)",
        "DELETE FROM proof_tiles WHERE tile * 256 >= $1",
        "UPDATE proof_tiles SET hashes = substring(hashes FROM 1 FOR (($1 - tile * 256) * 32)::int), \
           positions = positions[1:($1 - tile * 256)] WHERE tile = $1 / 256",
        "DELETE FROM proof_checkpoints WHERE size > $1",
        "UPDATE proof_tree SET size = $1, root = (SELECT root FROM proof_checkpoints WHERE size = $1)",
    ] {
        sqlx::query(sql).bind(size).execute(pool).await.unwrap();
    }
}

/// How many events the store holds, of every aggregate.
pub async fn all_event_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.unwrap()
}

/// Commits many email events in one statement: (email, sequence, type, payload) each.
pub async fn insert_events_at_once(pool: &PgPool, events: &[(Uuid, i64, String, Value)]) {
    let ids: Vec<String> = events.iter().map(|e| e.0.to_string()).collect();
    let sequences: Vec<i64> = events.iter().map(|e| e.1).collect();
    let types: Vec<String> = events.iter().map(|e| e.2.clone()).collect();
    let payloads: Vec<Value> = events.iter().map(|e| e.3.clone()).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT 'Email', id, seq, kind, '1.0', payload, '{}' \
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::jsonb[]) AS e(id, seq, kind, payload)",
    )
    .bind(&ids)
    .bind(&sequences)
    .bind(&types)
    .bind(&payloads)
    .execute(pool)
    .await
    .expect("insert events");
}

/// Webhook deliveries queued for an endpoint (any status).
pub async fn webhook_deliveries_of(pool: &PgPool, endpoint: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1::uuid")
        .bind(endpoint)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every stored event of webhook endpoints, in commit order.
pub async fn webhook_events(pool: &PgPool) -> Vec<Stored> {
    events_of_aggregate(pool, "WebhookEndpoint").await
}

/// An endpoint's secrets as stored (current, previous).
pub async fn webhook_stored_secrets(pool: &PgPool, endpoint: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT secret, previous_secret FROM webhook_endpoints WHERE id = $1::uuid")
        .bind(endpoint)
        .fetch_one(pool)
        .await
        .unwrap()
}
