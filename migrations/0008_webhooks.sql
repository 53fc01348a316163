-- Signed status webhooks (see the README's "Webhooks").
--
-- `webhook_endpoints`: where a tenant wants to hear of its emails' outcomes. The secret
-- signs every delivery, so it is kept as it is (it cannot be a hash); it is shown once,
-- when made or rotated, and never returned, logged or written to the ledger after that.
-- After a rotation the previous secret still signs until `previous_until`.
CREATE TABLE webhook_endpoints
(
    id                   uuid PRIMARY KEY,
    tenant               text        NOT NULL,
    url                  text        NOT NULL,
    kinds                text[]      NOT NULL,
    description          text        NOT NULL DEFAULT '',
    enabled              boolean     NOT NULL DEFAULT true,
    secret               text        NOT NULL,
    previous_secret      text,
    previous_until       timestamptz,
    -- set when the endpoint failed `webhooks.pause_after` attempts in a row
    paused_at            timestamptz,
    -- why it was disabled by mailledger (an answer 410), when it was
    disabled_reason      text,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL,
    created_by           text        NOT NULL,
    updated_at           timestamptz NOT NULL,
    updated_by           text        NOT NULL,
    UNIQUE (tenant, url)
);

-- One row per endpoint and event, queued by the `webhooks` projection in the
-- transaction of its checkpoint (idempotent on (endpoint, event)), sent by the
-- dispatcher: claimed with SKIP LOCKED under a lease, in sequence order per email and
-- endpoint. `body` is the JSON sent, fixed when queued (a replay sends the same bytes).
CREATE TABLE webhook_deliveries
(
    id              bigserial PRIMARY KEY,
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id        text        NOT NULL,
    email_id        uuid        NOT NULL,
    sequence        bigint      NOT NULL,
    kind            text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    body            text        NOT NULL,
    -- 'pending' (to send, or being sent), 'delivered', 'failed' (given up after
    -- webhooks.retry_for)
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    -- retried until queued_at + webhooks.retry_for (a replay queues it again)
    queued_at       timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    lease_until     timestamptz,
    delivered_at    timestamptz,
    last_status     integer,
    last_error      text,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (endpoint_id, email_id, sequence) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, occurred_at);
-- what webhooks.keep_log prunes
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (occurred_at) WHERE status <> 'pending';

-- Every attempt: what the endpoint answered, and how fast.
CREATE TABLE webhook_attempts
(
    id          bigserial PRIMARY KEY,
    delivery_id bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id uuid        NOT NULL,
    attempt     integer     NOT NULL,
    at          timestamptz NOT NULL,
    -- the answer's status; NULL: none (refused, timed out, connection failed)
    status_code integer,
    latency_ms  integer     NOT NULL,
    -- 'delivered', 'retry', 'gone' (410: endpoint disabled), 'gave_up'
    outcome     text        NOT NULL,
    error       text,
    -- the answer's first 1 KiB (text, control characters replaced)
    excerpt     text        NOT NULL DEFAULT ''
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
