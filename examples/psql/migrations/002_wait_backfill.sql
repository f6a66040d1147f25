-- Wait for the background backfill. Must run in its own transaction (after
-- 001 committed): run it without -1, or as a separate `psql -1` call.
-- The migration is found by what it changes, not by an id.
SELECT zdm.wait(zdm.migration_id('orders', 'customer_email'), '10 minutes');
