-- A scheduled backfill that stops itself. Every minute, pg_cron runs up to 100
-- batches of 2,000 rows, each committed on its own (short transactions, no
-- long-held snapshot); a run that sees 0 — the backfill is complete, or a
-- later release already contracted — unschedules the job. Shrink the slice to
-- spread the work over more minutes (or nights: '*/5 1-4 * * *').
-- Needs pg_cron >= 1.3 (unschedule by name). The COMMITs work because the
-- job's command is this one DO statement, which pg_cron runs at top level
-- (a command of several statements runs as one transaction). Expand with
-- background => false, or a zdm worker backfills too. The job runs as the
-- role that scheduled it; that role needs zdm's rights on the migration.
SELECT cron.schedule('zdm-backfill-orders', '* * * * *', $job$
DO $$
DECLARE
  m bigint := zdm.migration_id('orders', 'customer_email');
  n bigint;
BEGIN
  IF (SELECT phase FROM zdm.status WHERE id = m) = 'aborted' THEN
    PERFORM cron.unschedule('zdm-backfill-orders');   -- undone: nothing left to do
    RETURN;
  END IF;
  FOR i IN 1..100 LOOP
    n := zdm.backfill_batch(m, 2000);
    COMMIT;
    EXIT WHEN n = 0;
  END LOOP;
  IF n = 0 THEN
    PERFORM cron.unschedule('zdm-backfill-orders');
  END IF;
END $$
$job$);
