//! The proof log in PostgreSQL: the one owner of every statement on `proof_leaves`,
//! `proof_nodes`, `proof_tree` and `proof_checkpoints` (migration 0006).
//!
//! Leaves (level 0) carry the position of their event; every complete subtree above
//! them is a row of `proof_nodes`, so a proof or a root at any size reads O(log n)
//! rows, all in one statement ([`nodes`]). The sealer appends in its feed transaction
//! ([`append`]), so the tree, its size and the feed checkpoint always agree.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use super::merkle::{Frontier, Hash};

/// A stored signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// Tree size.
    pub size: u64,
    /// Root hash at that size.
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// When it was signed.
    pub signed_at: DateTime<Utc>,
}

/// A leaf as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Its index in the tree.
    pub index: u64,
    /// The position of its event.
    pub position: i64,
    /// Its hash.
    pub hash: Hash,
}

fn hash(bytes: Vec<u8>) -> Result<Hash, sqlx::Error> {
    Hash::try_from(bytes).map_err(|b| sqlx::Error::Decode(format!("a stored hash of {} bytes", b.len()).into()))
}

fn size(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The tree's size and root, locked until the end of the transaction.
pub async fn lock(conn: &mut PgConnection) -> Result<(u64, Hash), sqlx::Error> {
    let (n, root): (i64, Vec<u8>) =
        sqlx::query_as("SELECT size, root FROM proof_tree FOR UPDATE").fetch_one(&mut *conn).await?;
    Ok((size(n), hash(root)?))
}

/// The tree's size and root now.
pub async fn head(pool: &PgPool) -> Result<(u64, Hash), sqlx::Error> {
    let (n, root): (i64, Vec<u8>) = sqlx::query_as("SELECT size, root FROM proof_tree").fetch_one(pool).await?;
    Ok((size(n), hash(root)?))
}

/// The stored nodes `keys` (level 0: leaves), those that exist.
pub async fn nodes(conn: &mut PgConnection, keys: &[(u32, u64)]) -> Result<HashMap<(u32, u64), Hash>, sqlx::Error> {
    let levels: Vec<i16> = keys.iter().map(|(l, _)| *l as i16).collect();
    let idx: Vec<i64> = keys.iter().map(|(_, i)| *i as i64).collect();
    let rows = sqlx::query(
        "SELECT 0::smallint AS level, l.idx, l.hash FROM proof_leaves l \
           WHERE l.idx = ANY(SELECT i FROM UNNEST($1::smallint[], $2::bigint[]) AS k(level, i) WHERE k.level = 0) \
         UNION ALL \
         SELECT n.level, n.idx, n.hash FROM proof_nodes n \
           JOIN UNNEST($1::smallint[], $2::bigint[]) AS k(level, i) ON n.level = k.level AND n.idx = k.i",
    )
    .bind(&levels)
    .bind(&idx)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(((r.try_get::<i16, _>("level")? as u32, r.try_get::<i64, _>("idx")? as u64), hash(r.try_get("hash")?)?))
        })
        .collect()
}

/// The right edge of the tree of `n` leaves, from its stored nodes.
pub async fn frontier(conn: &mut PgConnection, n: u64) -> anyhow::Result<Frontier> {
    let keys = Frontier::keys(n);
    let found = nodes(conn, &keys).await?;
    let edge = keys
        .iter()
        .map(|k| found.get(k).copied().ok_or_else(|| anyhow::anyhow!("proof log node {k:?} is missing")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Frontier::from_nodes(n, edge).ok_or_else(|| anyhow::anyhow!("proof log edge of size {n} is malformed"))
}

/// Stores new leaves `(index, position, hash)` and interior nodes `(level, index, hash)`,
/// and the tree's new size and root.
pub async fn append(
    conn: &mut PgConnection,
    leaves: &[(u64, i64, Hash)],
    interior: &[(u32, u64, Hash)],
    new_size: u64,
    root: &Hash,
) -> Result<(), sqlx::Error> {
    let idx: Vec<i64> = leaves.iter().map(|l| l.0 as i64).collect();
    let pos: Vec<i64> = leaves.iter().map(|l| l.1).collect();
    let hashes: Vec<&[u8]> = leaves.iter().map(|l| l.2.as_slice()).collect();
    sqlx::query(
        "INSERT INTO proof_leaves (idx, position, hash) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[])",
    )
    .bind(&idx)
    .bind(&pos)
    .bind(&hashes)
    .execute(&mut *conn)
    .await?;
    if !interior.is_empty() {
        let level: Vec<i16> = interior.iter().map(|n| n.0 as i16).collect();
        let idx: Vec<i64> = interior.iter().map(|n| n.1 as i64).collect();
        let hashes: Vec<&[u8]> = interior.iter().map(|n| n.2.as_slice()).collect();
        sqlx::query(
            "INSERT INTO proof_nodes (level, idx, hash) SELECT * FROM UNNEST($1::smallint[], $2::bigint[], $3::bytea[])",
        )
        .bind(&level)
        .bind(&idx)
        .bind(&hashes)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE proof_tree SET size = $1, root = $2")
        .bind(new_size as i64)
        .bind(root.as_slice())
        .execute(conn)
        .await?;
    Ok(())
}

/// Leaves from index `from`, at most `limit`, in index order.
pub async fn leaves_from(pool: &PgPool, from: u64, limit: i64) -> Result<Vec<Leaf>, sqlx::Error> {
    let rows: Vec<(i64, i64, Vec<u8>)> =
        sqlx::query_as("SELECT idx, position, hash FROM proof_leaves WHERE idx >= $1 ORDER BY idx LIMIT $2")
            .bind(from as i64)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(|(i, p, h)| Ok(Leaf { index: size(i), position: p, hash: hash(h)? })).collect()
}

/// The leaves of the events at `positions` (those sealed).
pub async fn leaves_at(pool: &PgPool, positions: &[i64]) -> Result<Vec<Leaf>, sqlx::Error> {
    let rows: Vec<(i64, i64, Vec<u8>)> =
        sqlx::query_as("SELECT idx, position, hash FROM proof_leaves WHERE position = ANY($1) ORDER BY idx")
            .bind(positions)
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(|(i, p, h)| Ok(Leaf { index: size(i), position: p, hash: hash(h)? })).collect()
}

const CHECKPOINT: &str = "SELECT size, root, note, signed_at FROM proof_checkpoints";

fn checkpoint(row: (i64, Vec<u8>, String, DateTime<Utc>)) -> Result<StoredCheckpoint, sqlx::Error> {
    Ok(StoredCheckpoint { size: size(row.0), root: hash(row.1)?, note: row.2, signed_at: row.3 })
}

/// The newest checkpoint (the largest tree).
pub async fn latest(conn: &mut PgConnection) -> Result<Option<StoredCheckpoint>, sqlx::Error> {
    sqlx::query_as(&format!("{CHECKPOINT} ORDER BY size DESC LIMIT 1"))
        .fetch_optional(conn)
        .await?
        .map(checkpoint)
        .transpose()
}

/// The checkpoint of the tree of `n` leaves, if one was signed.
pub async fn checkpoint_at(pool: &PgPool, n: u64) -> Result<Option<StoredCheckpoint>, sqlx::Error> {
    sqlx::query_as(&format!("{CHECKPOINT} WHERE size = $1"))
        .bind(n as i64)
        .fetch_optional(pool)
        .await?
        .map(checkpoint)
        .transpose()
}

/// Checkpoints of sizes above `after`, at most `limit`, smallest first.
pub async fn checkpoints_after(pool: &PgPool, after: u64, limit: i64) -> Result<Vec<StoredCheckpoint>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, String, DateTime<Utc>)> =
        sqlx::query_as(&format!("{CHECKPOINT} WHERE size > $1 ORDER BY size LIMIT $2"))
            .bind(after as i64)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    rows.into_iter().map(checkpoint).collect()
}

/// Records a signed checkpoint (a second one of the same size is ignored).
pub async fn insert_checkpoint(conn: &mut PgConnection, n: u64, root: &Hash, note: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO proof_checkpoints (size, root, note) VALUES ($1, $2, $3) ON CONFLICT (size) DO NOTHING")
        .bind(n as i64)
        .bind(root.as_slice())
        .bind(note)
        .execute(conn)
        .await?;
    Ok(())
}

/// Checkpoints not yet copied to NATS, smallest first.
pub async fn unpublished(pool: &PgPool, limit: i64) -> Result<Vec<(u64, String)>, sqlx::Error> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT size, note FROM proof_checkpoints WHERE NOT published ORDER BY size LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(s, n)| (size(s), n)).collect())
}

/// Marks the checkpoint of size `n` as copied to NATS.
pub async fn mark_published(pool: &PgPool, n: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE proof_checkpoints SET published = true WHERE size = $1").bind(n as i64).execute(pool).await?;
    Ok(())
}

/// The tree's size and root, locked until the end of the transaction, unless another
/// transaction holds them (then `None`).
pub async fn try_lock(conn: &mut PgConnection) -> Result<Option<(u64, Hash)>, sqlx::Error> {
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT size, root FROM proof_tree FOR UPDATE SKIP LOCKED").fetch_optional(&mut *conn).await?;
    row.map(|(n, root)| Ok((size(n), hash(root)?))).transpose()
}
