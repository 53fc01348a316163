-- A NOTIFY inside a transaction takes a cluster-wide lock that is held through the
-- commit's WAL flush, so every writing transaction would commit one after another
-- (measured: intake capped near 2,000 emails/s, a fifth of what plain INSERTs reach).
-- Writers now announce commits themselves, outside their transactions, at most once
-- per 20 ms per instance (src/projections/notify.rs); readers also poll.
DROP TRIGGER events_notify ON events;
DROP FUNCTION mailledger_events_notify();
