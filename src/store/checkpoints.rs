//! Where each projection stands in the feed: `projection_checkpoints`, one row per
//! projection (a re-projection keeps `<name>__shadow` while it runs).

use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::feed::Checkpoint;

/// The checkpoint of projection `name` (the start of the feed when it has none), locked
/// until the end of the transaction so that one batch at a time moves it (a
/// re-projection's swap waits on this lock).
pub async fn load(conn: &mut PgConnection, name: &str) -> Result<Checkpoint, sqlx::Error> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT txid::text, position FROM projection_checkpoints WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(conn)
            .await?;
    Ok(row
        .map_or_else(Checkpoint::default, |(txid, position)| Checkpoint { txid: txid.parse().unwrap_or(0), position }))
}

/// Records that projection `name` has applied everything up to `at`.
pub async fn save(conn: &mut PgConnection, name: &str, at: Checkpoint) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, txid, position, updated_at) VALUES ($1, $2::text::xid8, $3, now()) \
         ON CONFLICT (name) DO UPDATE SET txid = EXCLUDED.txid, position = EXCLUDED.position, updated_at = now()",
    )
    .bind(name)
    .bind(at.txid.to_string())
    .bind(at.position)
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes sure projection `name` has a row (at the start of the feed), so that [`load`]
/// has something to lock.
pub async fn ensure(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets projection `name`'s checkpoint.
pub async fn remove(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1").bind(name).execute(conn).await?;
    Ok(())
}

/// The lowest checkpoint of the projections `names` (how far all of them have applied
/// the feed); `None` while any of them has none.
pub async fn lowest(pool: &sqlx::PgPool, names: &[&str]) -> Result<Option<Checkpoint>, sqlx::Error> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT txid::text, position FROM projection_checkpoints WHERE name = ANY($1)")
            .bind(names)
            .fetch_all(pool)
            .await?;
    if rows.len() < names.len() {
        return Ok(None);
    }
    Ok(rows
        .iter()
        .filter_map(|(txid, position)| Some(Checkpoint { txid: txid.parse().ok()?, position: *position }))
        .min())
}

/// The version of what projection `name` has written: its checkpoint, which moves in the
/// same transaction as every write the projection makes (a re-projection's swap
/// included), and the version of the row it is kept in (so that any save counts).
const VERSION: &str =
    "SELECT txid::text || ':' || position || ':' || xmin::text FROM projection_checkpoints WHERE name = ";

/// Pushes a subquery giving the version of projection `name`'s output (see [`version`]),
/// for a statement that must read it in the same snapshot as what it counts.
pub fn push_version(q: &mut QueryBuilder<'_, Postgres>, name: &str) {
    q.push("(").push(VERSION).push_bind(name.to_owned()).push(")");
}

/// The version of what projection `name` has written (`None` while it has no
/// checkpoint): equal versions, equal output.
pub async fn version(pool: &sqlx::PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    let version: Option<Option<String>> =
        sqlx::query_scalar(&format!("{VERSION}$1")).bind(name).fetch_optional(pool).await?;
    Ok(version.flatten())
}
