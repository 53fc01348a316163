-- Where each projection has got to in the event feed: (txid, position) of the last
-- event it applied.
CREATE TABLE projection_checkpoints
(
    name       text PRIMARY KEY,
    txid       xid8        NOT NULL DEFAULT '0'::xid8,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The search document of an email. Punctuation becomes spaces first, so
-- `ann@example.com` is found by `ann`, `example` or `ann example com`, and a query is
-- split the same way (see src/query/search.rs). Subject weighs most, then addresses,
-- then the body (its first 256 KiB: a tsvector is limited to 1 MiB).
CREATE FUNCTION mailledger_email_search(subject text, from_name text, from_address text, recipients text[], body text)
    RETURNS tsvector
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS
$$
SELECT setweight(to_tsvector('simple', regexp_replace(subject, '[^[:alnum:]]+', ' ', 'g')), 'A') ||
       setweight(to_tsvector('simple', regexp_replace(coalesce(from_name, '') || ' ' || from_address || ' ' ||
                                                      array_to_string(recipients, ' '), '[^[:alnum:]]+', ' ', 'g')), 'B') ||
       setweight(to_tsvector('simple', regexp_replace(left(body, 262144), '[^[:alnum:]]+', ' ', 'g')), 'C')
$$;

-- The `emails` read model: one row per email, rebuilt from the events at any time.
CREATE TABLE emails
(
    id              uuid PRIMARY KEY,
    from_address    text        NOT NULL,
    from_name       text,
    to_addresses    text[]      NOT NULL,
    cc_addresses    text[]      NOT NULL DEFAULT '{}',
    bcc_addresses   text[]      NOT NULL DEFAULT '{}',
    -- every recipient (to, cc, bcc): what the `to` filter matches
    recipients      text[]      NOT NULL,
    subject         text        NOT NULL,
    body            text        NOT NULL,
    html            text,
    status          text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    message_id      text,
    source          text        NOT NULL,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    next_attempt_at timestamptz,
    last_sequence   bigint      NOT NULL,
    -- Full text over from, recipients, subject and (the first 256 KiB of) the body:
    -- see mailledger_email_search below.
    search          tsvector GENERATED ALWAYS AS (
        mailledger_email_search(subject, from_name, from_address, recipients, body)
    ) STORED
);

CREATE INDEX emails_search ON emails USING gin (search);
-- Newest first, with the id as a tie-breaker: the order of every listing.
CREATE INDEX emails_created ON emails (created_at DESC, id DESC);
CREATE INDEX emails_status_created ON emails (status, created_at DESC, id DESC);
CREATE INDEX emails_from_created ON emails (from_address, created_at DESC, id DESC);
CREATE INDEX emails_recipients ON emails USING gin (recipients);
