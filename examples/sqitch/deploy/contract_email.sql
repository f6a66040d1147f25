-- Deploy zdm_example:contract_email
-- Deploy once no application version reads customer_email. Contract takes
-- ACCESS EXCLUSIVE briefly (held until COMMIT: keep it alone in its change).
-- Re-deploying a contracted migration is a NOTICE no-op.
BEGIN;
SELECT zdm.contract('orders', 'email');
COMMIT;
