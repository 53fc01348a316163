-- API keys and tenants.
--
-- `api_keys` is the current state of every key, written in the same transaction as the
-- key's events (`KeyCreated`, `KeyRevoked`, aggregate type `ApiKey`, in `events`): the
-- events are the audit record, this table is what authentication reads. Only a hash of
-- a key is kept (SHA-256 of the whole key); the key itself is shown once, at creation.
CREATE TABLE api_keys
(
    id            uuid PRIMARY KEY,
    name          text        NOT NULL,
    tenant        text        NOT NULL,
    scopes        text[]      NOT NULL,
    from_domains  text[]      NOT NULL DEFAULT '{}',
    hash          bytea       NOT NULL UNIQUE,
    -- requests per second and burst; NULL: the configured default
    rate_per_s    double precision,
    burst         integer,
    -- emails a day; NULL: the configured default (0 there: no quota)
    daily_quota   bigint,
    created_at    timestamptz NOT NULL,
    created_by    text        NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    revoked_by    text,
    last_used_at  timestamptz
);

-- Sends per key and day, for daily quotas (flushed by every instance about once a second).
CREATE TABLE api_key_usage
(
    key_id uuid   NOT NULL,
    day    date   NOT NULL,
    sends  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);

-- Every email belongs to the tenant of the key that created it.
ALTER TABLE emails ADD COLUMN tenant text NOT NULL DEFAULT 'default';
CREATE INDEX emails_tenant_created ON emails (tenant, created_at DESC, id DESC);
