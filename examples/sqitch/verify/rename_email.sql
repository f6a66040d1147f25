-- Verify zdm_example:rename_email: orders.email exists and its migration was
-- not aborted (customer_email is there until contract_email drops it).
BEGIN;
SELECT email FROM orders WHERE false;
SELECT 1 / count(*) FROM zdm.status
 WHERE id = zdm.migration_id('orders', 'customer_email') AND phase <> 'aborted';
ROLLBACK;
