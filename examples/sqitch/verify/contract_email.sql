-- Verify zdm_example:contract_email: only orders.email is left.
BEGIN;
SELECT email FROM orders WHERE false;
SELECT 1 / (count(*) = 0)::int FROM pg_attribute
 WHERE attrelid = 'orders'::regclass AND attname = 'customer_email' AND NOT attisdropped;
ROLLBACK;
