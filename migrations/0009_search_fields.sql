-- The fields of the search language (src/query/grammar.rs) that the earlier indexes do
-- not serve: a sender's domain (`from:example.org`), the recipients' domains
-- (`to:example.org`), and `has:html`, `is:bounced`, `is:suppressed` as partial indexes in
-- the newest-first order (the queries repeat these expressions and predicates exactly:
-- src/query/repository.rs, push_filter).

-- The domain of an address, lower case (after the last `@`).
CREATE FUNCTION mailledger_domain(address text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS
$$
SELECT lower(substring(address FROM '@([^@]*)$'))
$$;

-- Every distinct domain of a list of addresses.
CREATE FUNCTION mailledger_domains(addresses text[])
    RETURNS text[]
    LANGUAGE sql
    IMMUTABLE
    PARALLEL SAFE
AS
$$
SELECT ARRAY(SELECT DISTINCT mailledger_domain(a) FROM unnest(addresses) AS a WHERE a LIKE '%@%')
$$;

CREATE INDEX emails_from_domain_created ON emails (mailledger_domain(from_address), created_at DESC, id DESC);
CREATE INDEX emails_recipient_domains ON emails USING gin (mailledger_domains(recipients));
CREATE INDEX emails_html_created ON emails (created_at DESC, id DESC) WHERE html IS NOT NULL;
CREATE INDEX emails_bounced_created ON emails (created_at DESC, id DESC)
    WHERE deliveries @> '[{"status": "refused"}]';
CREATE INDEX emails_suppressed_created ON emails (created_at DESC, id DESC)
    WHERE deliveries @> '[{"status": "suppressed"}]';
