-- The delivery schedule (a projection of the events): one row per email waiting for a
-- delivery attempt. Senders claim due rows with FOR UPDATE SKIP LOCKED and hold them
-- with a lease while they send.
CREATE TABLE deliveries
(
    email_id      uuid PRIMARY KEY,
    due_at        timestamptz NOT NULL,
    lease_owner   text,
    lease_until   timestamptz,
    last_sequence bigint      NOT NULL
);

CREATE INDEX deliveries_due ON deliveries (due_at);

-- Wake senders when something becomes due.
CREATE FUNCTION mailledger_deliveries_notify() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('mailledger_deliveries', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_notify
    AFTER INSERT OR UPDATE OF due_at ON deliveries
    FOR EACH STATEMENT
EXECUTE FUNCTION mailledger_deliveries_notify();
