-- Deploy zdm_example:wait_email
-- zdm.wait must run in a later transaction than the expand (in the same one it
-- fails with 25001: the worker starts only after that commit). Sqitch runs each
-- change's script in its own psql session, so this change may wait.
BEGIN;
SELECT zdm.wait(zdm.migration_id('orders', 'customer_email'), '10 minutes');
COMMIT;
