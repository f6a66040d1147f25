-- Verify zdm_example:email_not_null.
BEGIN;
SELECT 1 / attnotnull::int FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'email';
ROLLBACK;
