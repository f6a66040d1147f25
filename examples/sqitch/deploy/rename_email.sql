-- Deploy zdm_example:rename_email
-- Expand takes ACCESS EXCLUSIVE briefly and holds it until COMMIT: keep it
-- alone in its change. The backfill starts in a worker once this commits.
-- Re-deploying (a retry) returns the same migration's id with a NOTICE.
BEGIN;
SELECT zdm.expand_rename('orders', 'customer_email', 'email');
COMMIT;
