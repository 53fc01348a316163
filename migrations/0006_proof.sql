-- The proof log: an RFC 6962 Merkle tree over every event of `events`, in commit order
-- (txid, position), kept by the `proof` projection (src/proof), plus the signed
-- checkpoints of that tree.
--
-- proof_leaves      leaf i of the tree: the event at `position`, SHA-256(0x00 ‖ canonical bytes).
-- proof_nodes       every complete subtree above the leaves: (level, idx) covers leaves
--                   [idx·2^level, (idx+1)·2^level). Any proof reads O(log n) of them.
-- proof_tree        one row: how many leaves, and the root over them.
-- proof_checkpoints signed notes (C2SP tlog-checkpoint) of the tree at some sizes;
--                   `published` once a copy is on NATS (<namespace>.checkpoints).
CREATE TABLE proof_leaves
(
    idx      bigint PRIMARY KEY,
    position bigint NOT NULL UNIQUE,
    hash     bytea  NOT NULL
);

CREATE TABLE proof_nodes
(
    level smallint NOT NULL,
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
