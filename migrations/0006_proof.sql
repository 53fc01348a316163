-- The proof log: an RFC 6962 Merkle tree over every event of `events`, in commit order
-- (txid, position), kept by the `proof` projection (src/proof), plus the signed
-- checkpoints of that tree.
--
-- proof_tiles       the leaves, 256 to a tile (as in C2SP tlog-tiles): tile t holds leaves
--                   [256·t, 256·t + 256): their hashes, SHA-256(0x00 ‖ canonical bytes),
--                   32 bytes each in order, and the positions of their events; `span`
--                   covers those positions, so a position finds its tile through one GiST
--                   lookup. The last tile grows as events are sealed. Every node below a
--                   tile's root is computed from its hashes (at most 255 SHA-256s).
-- proof_nodes       every complete subtree of 256 leaves or more: (level ≥ 8, idx) covers
--                   leaves [idx·2^level, (idx+1)·2^level). Any proof reads O(log n) tiles
--                   and nodes.
-- proof_tree        one row: how many leaves, and the root over them.
-- proof_checkpoints signed notes (C2SP tlog-checkpoint) of the tree at some sizes;
--                   `published` once a copy is on NATS (<namespace>.checkpoints).
--
-- Sealing an event writes no row of its own: a batch appends to a tile or two, and a
-- node every 256 leaves, so the log costs the database far less than the events do.
CREATE TABLE proof_tiles
(
    tile      bigint PRIMARY KEY,
    hashes    bytea     NOT NULL,
    positions bigint[]  NOT NULL,
    span      int8range NOT NULL
);
-- Hashes do not compress: store them out of line as they are.
ALTER TABLE proof_tiles ALTER COLUMN hashes SET STORAGE EXTERNAL;
CREATE INDEX proof_tiles_span ON proof_tiles USING gist (span);

CREATE TABLE proof_nodes
(
    level smallint NOT NULL CHECK (level >= 8),
    idx   bigint   NOT NULL,
    hash  bytea    NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE proof_tree
(
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    size bigint NOT NULL,
    root bytea  NOT NULL
);
INSERT INTO proof_tree (size, root) VALUES (0, sha256(''));

CREATE TABLE proof_checkpoints
(
    size      bigint PRIMARY KEY,
    root      bytea       NOT NULL,
    note      text        NOT NULL,
    signed_at timestamptz NOT NULL DEFAULT now(),
    published boolean     NOT NULL DEFAULT false
);
CREATE INDEX proof_checkpoints_unpublished ON proof_checkpoints (size) WHERE NOT published;
