-- Revert zdm_example:rename_email
-- Undoes the expand: cancels the backfill, drops the trigger and orders.email.
-- customer_email is untouched. Reverting twice is a NOTICE no-op.
BEGIN;
SELECT zdm.abort('orders', 'customer_email');
COMMIT;
