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

-- Bulk redrives: one row per run, so that an interrupted run resumes where it stopped
-- and a redone one redrives nothing twice.
CREATE TABLE redrive_runs
(
    id         uuid PRIMARY KEY,
    filter     jsonb       NOT NULL,
    total      integer     NOT NULL,
    done       integer     NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL,
    started_by text        NOT NULL,
    finished_at timestamptz
);
