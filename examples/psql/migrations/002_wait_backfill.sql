-- Release 1, still: wait for the background backfill (and its carried
-- indexes and checks). Must run in its own transaction (after 001
-- committed): run it without -1, or as a separate `psql -1` call. Code that
-- reads orders.email ships in the next release, after this has returned
-- (zdm.status.next_step says 'ready for new code').
-- The migration is found by what it changes, not by an id.
SELECT zdm.wait(zdm.migration_id('orders', 'customer_email'), '10 minutes');
