-- The event store: postgres-es's `events` and `snapshots`, plus what a reader needs to
-- tail the store in commit order without skipping a late commit:
--   position  a global, gap-tolerant insertion order (bigserial);
--   txid      the writing transaction's id (xid8). A reader reads only rows whose txid
--             is below pg_snapshot_xmin(pg_current_snapshot()) — every transaction that
--             could still commit below that point has finished — and keeps its checkpoint
--             as (txid, position).
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        jsonb                        NOT NULL,
    metadata       jsonb                        NOT NULL,
    position       bigserial                    NOT NULL,
    txid           xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_position ON events (position);
-- Tailing in commit order: WHERE (txid, position) > checkpoint AND txid < xmin ORDER BY txid, position.
CREATE INDEX events_feed ON events (txid, position);
-- Replay of a time window.
CREATE INDEX events_recorded_at ON events (recorded_at);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          jsonb                                NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Wake feed readers: one notification per inserting statement, delivered at commit.
CREATE FUNCTION mailledger_events_notify() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('mailledger_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT
EXECUTE FUNCTION mailledger_events_notify();
