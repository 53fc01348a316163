-- no-transaction
-- After 0010 rebuilt `emails`: its visibility map, so index-only scans and the first
-- searches do not visit every row to learn it is visible (VACUUM cannot run inside the
-- transaction a migration usually runs in, hence a migration of its own).
VACUUM (ANALYZE) emails;
