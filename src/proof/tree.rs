//! The proof log in PostgreSQL: the one owner of every statement on `proof_tiles`,
//! `proof_nodes`, `proof_tree` and `proof_checkpoints` (migration 0006).
//!
//! Leaves are kept 256 to a tile (as C2SP tlog-tiles does), with the positions of their
//! events; a node below a tile's root is computed from its tile, every complete subtree
//! of a tile or more is a row of `proof_nodes`. A proof or a root at any size reads
//! O(log n) tiles and rows, in two statements ([`nodes`]). Sealing writes no row per
//! event: a batch appends to its tiles. The sealer appends in its feed transaction
//! ([`append`]), so the tree, its size and the feed checkpoint always agree.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::merkle::{self, Frontier, Hash};

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

/// Leaves to a tile (2^[`TILE_HEIGHT`]).
pub const TILE: u64 = 256;
/// Levels inside a tile: nodes below it are computed from the tile's leaves, nodes at
/// or above it are rows of `proof_nodes`.
pub const TILE_HEIGHT: u32 = 8;

/// A tile as stored: its leaves' hashes and their events' positions, in leaf order.
struct Tile {
    hashes: Vec<Hash>,
    positions: Vec<i64>,
}

fn tile(hashes: Vec<u8>, positions: Vec<i64>) -> Result<Tile, sqlx::Error> {
    if !hashes.len().is_multiple_of(32) || hashes.len() / 32 != positions.len() {
        return Err(sqlx::Error::Decode("a proof log tile whose hashes and positions disagree".into()));
    }
    let hashes = hashes.chunks_exact(32).map(|c| <Hash>::try_from(c).expect("32 bytes")).collect();
    Ok(Tile { hashes, positions })
}

async fn tiles(conn: &mut PgConnection, numbers: &[i64]) -> Result<HashMap<u64, Tile>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, Vec<i64>)> =
        sqlx::query_as("SELECT tile, hashes, positions FROM proof_tiles WHERE tile = ANY($1)")
            .bind(numbers)
            .fetch_all(conn)
            .await?;
    rows.into_iter().map(|(t, h, p)| Ok((size(t), tile(h, p)?))).collect()
}

/// The stored nodes `keys` (level 0: leaves), those the log holds: below a tile's root,
/// computed from the tile; from there up, read from `proof_nodes`.
pub async fn nodes(conn: &mut PgConnection, keys: &[(u32, u64)]) -> Result<HashMap<(u32, u64), Hash>, sqlx::Error> {
    let tile_of = |(level, index): (u32, u64)| (index << level) / TILE;
    let mut needed: Vec<i64> = keys.iter().filter(|(l, _)| *l < TILE_HEIGHT).map(|k| tile_of(*k) as i64).collect();
    needed.sort_unstable();
    needed.dedup();
    let tiles = tiles(conn, &needed).await?;
    let mut found = HashMap::new();
    for &(level, index) in keys.iter().filter(|(l, _)| *l < TILE_HEIGHT) {
        let first = (index << level) - tile_of((level, index)) * TILE;
        let range = first as usize..first as usize + (1usize << level);
        if let Some(leaves) = tiles.get(&tile_of((level, index))).and_then(|t| t.hashes.get(range)) {
            found.insert((level, index), merkle::complete_root(leaves));
        }
    }
    let (levels, idx): (Vec<i16>, Vec<i64>) =
        keys.iter().filter(|(l, _)| *l >= TILE_HEIGHT).map(|(l, i)| (*l as i16, *i as i64)).unzip();
    if !levels.is_empty() {
        let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT n.level, n.idx, n.hash FROM proof_nodes n \
             JOIN UNNEST($1::smallint[], $2::bigint[]) AS k(level, i) ON n.level = k.level AND n.idx = k.i",
        )
        .bind(&levels)
        .bind(&idx)
        .fetch_all(conn)
        .await?;
        for (l, i, h) in rows {
            found.insert((l as u32, size(i)), hash(h)?);
        }
    }
    Ok(found)
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

/// Stores new leaves `(index, position, hash)`, appended to their tiles, and the
/// interior nodes `(level, index, hash)` of a tile's height or more (the others are
/// computed from tiles), and the tree's new size and root.
pub async fn append(
    conn: &mut PgConnection,
    leaves: &[(u64, i64, Hash)],
    interior: &[(u32, u64, Hash)],
    new_size: u64,
    root: &Hash,
) -> Result<(), sqlx::Error> {
    for run in leaves.chunk_by(|a, b| a.0 / TILE == b.0 / TILE) {
        let hashes: Vec<u8> = run.iter().flat_map(|l| l.2).collect();
        let positions: Vec<i64> = run.iter().map(|l| l.1).collect();
        let (lo, hi) = (positions.iter().min().copied(), positions.iter().max().copied());
        sqlx::query(
            "INSERT INTO proof_tiles (tile, hashes, positions, span) VALUES ($1, $2, $3, int8range($4, $5, '[]')) \
             ON CONFLICT (tile) DO UPDATE SET hashes = proof_tiles.hashes || EXCLUDED.hashes, \
               positions = proof_tiles.positions || EXCLUDED.positions, \
               span = range_merge(proof_tiles.span, EXCLUDED.span)",
        )
        .bind((run[0].0 / TILE) as i64)
        .bind(&hashes)
        .bind(&positions)
        .bind(lo)
        .bind(hi)
        .execute(&mut *conn)
        .await?;
    }
    let high: Vec<_> = interior.iter().filter(|n| n.0 >= TILE_HEIGHT).collect();
    if !high.is_empty() {
        let level: Vec<i16> = high.iter().map(|n| n.0 as i16).collect();
        let idx: Vec<i64> = high.iter().map(|n| n.1 as i64).collect();
        let hashes: Vec<&[u8]> = high.iter().map(|n| n.2.as_slice()).collect();
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

fn unpack(number: u64, t: Tile) -> impl Iterator<Item = Leaf> {
    t.hashes.into_iter().zip(t.positions).enumerate().map(move |(i, (hash, position))| Leaf {
        index: number * TILE + i as u64,
        position,
        hash,
    })
}

/// Leaves from index `from`, at most about `limit` (whole tiles), in index order.
pub async fn leaves_from(pool: &PgPool, from: u64, limit: i64) -> Result<Vec<Leaf>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, Vec<i64>)> =
        sqlx::query_as("SELECT tile, hashes, positions FROM proof_tiles WHERE tile >= $1 ORDER BY tile LIMIT $2")
            .bind((from / TILE) as i64)
            .bind((limit / TILE as i64).max(1))
            .fetch_all(pool)
            .await?;
    let mut out = Vec::new();
    for (number, hashes, positions) in rows {
        out.extend(unpack(size(number), tile(hashes, positions)?).filter(|l| l.index >= from));
    }
    Ok(out)
}

/// The leaves of the events at `positions` (those sealed), in index order.
pub async fn leaves_at(pool: &PgPool, positions: &[i64]) -> Result<Vec<Leaf>, sqlx::Error> {
    let rows: Vec<(i64, Vec<u8>, Vec<i64>)> = sqlx::query_as(
        "SELECT DISTINCT t.tile, t.hashes, t.positions FROM UNNEST($1::bigint[]) AS p(position) \
         JOIN proof_tiles t ON t.span @> p.position ORDER BY t.tile",
    )
    .bind(positions)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::new();
    for (number, hashes, stored) in rows {
        out.extend(unpack(size(number), tile(hashes, stored)?).filter(|l| positions.contains(&l.position)));
    }
    Ok(out)
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
