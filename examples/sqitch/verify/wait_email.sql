-- Verify zdm_example:wait_email: the backfill is complete.
BEGIN;
SELECT 1 / count(*) FROM zdm.status
 WHERE id = zdm.migration_id('orders', 'customer_email') AND phase IN ('backfilled', 'contracted');
ROLLBACK;
