-- Per-recipient delivery state in the read model, and the delivery schedule's domain
-- (for shaping by recipient domain).
ALTER TABLE emails ADD COLUMN deliveries jsonb NOT NULL DEFAULT '[]';

ALTER TABLE deliveries ADD COLUMN domain text NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN tenant text NOT NULL DEFAULT 'default';
UPDATE deliveries d SET domain = lower(split_part(e.recipients[1], '@', 2)), tenant = e.tenant
FROM emails e WHERE e.id = d.email_id;
CREATE INDEX deliveries_domain ON deliveries (domain, lease_until);

-- The suppression list: recipients not attempted again, per tenant. Filled by the
-- sender from permanent refusals, and by operators (add / remove, each recorded as an
-- event of aggregate `Suppression`).
CREATE TABLE suppressions
(
    tenant     text        NOT NULL,
    address    text        NOT NULL,
    domain     text        NOT NULL,
    reason     text        NOT NULL,
    code       integer,
    source     text        NOT NULL, -- 'bounce' (a permanent refusal) or 'manual'
    email_id   uuid,
    created_at timestamptz NOT NULL,
    created_by text        NOT NULL,
    PRIMARY KEY (tenant, address)
);
CREATE INDEX suppressions_domain ON suppressions (tenant, domain, created_at);
CREATE INDEX suppressions_created ON suppressions (tenant, created_at);
-- The feed of suppression-list changes (published on NATS) reads only these events.
CREATE INDEX events_suppressions ON events (txid, position) WHERE aggregate_type = 'Suppression';

-- Per-domain pacing shared by every instance: how many deliveries to a domain were
-- started in the current one-second window, and until when a domain is held back after
-- it throttled us (421 / "too many").
CREATE TABLE domain_pacing
(
    domain       text PRIMARY KEY,
    window_start timestamptz NOT NULL DEFAULT now(),
    started      integer     NOT NULL DEFAULT 0,
    minute_start timestamptz NOT NULL DEFAULT now(),
    minute_count integer     NOT NULL DEFAULT 0,
    held_until   timestamptz,
    backoff_s    double precision NOT NULL DEFAULT 0
);

-- Bulk redrives: a run is the dead letters its filter matched when it started (its
-- items); each is redriven once, however often the run is resumed (the item remembers,
-- and the email's aggregate refuses a second redrive by the same run). One worker at a
-- time holds a run (heartbeat), so two cannot run it at once.
CREATE TABLE redrive_runs
(
    id             uuid PRIMARY KEY,
    tenant         text,                 -- NULL: every tenant (an admin's run)
    filter         jsonb            NOT NULL,
    rate_per_second double precision NOT NULL, -- 0: no limit
    total          integer          NOT NULL,
    done           integer          NOT NULL DEFAULT 0,
    redriven       integer          NOT NULL DEFAULT 0,
    started_at     timestamptz      NOT NULL,
    started_by     text             NOT NULL,
    worker         text,
    heartbeat      timestamptz,
    finished_at    timestamptz,
    last_error     text
);
CREATE INDEX redrive_runs_started ON redrive_runs (started_at DESC);

CREATE TABLE redrive_run_items
(
    run_id   uuid NOT NULL REFERENCES redrive_runs (id) ON DELETE CASCADE,
    email_id uuid NOT NULL,
    position integer NOT NULL,
    done_at  timestamptz,
    outcome  text,
    PRIMARY KEY (run_id, email_id)
);
CREATE INDEX redrive_run_items_todo ON redrive_run_items (run_id, position) WHERE done_at IS NULL;
