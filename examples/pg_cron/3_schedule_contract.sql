-- Release 2 (contract) at a quiet hour, then NOT NULL — scheduled, once no
-- application version reads customer_email. The job waits for the backfill
-- (a run before it is complete does nothing), contracts (brief ACCESS
-- EXCLUSIVE, released by the COMMIT right after), runs validate_not_null
-- outside a transaction block (its steps run now, each its own transaction),
-- and unschedules itself. A NULL in email (23502) or an aborted migration
-- also unschedules it, with a WARNING in cron.job_run_details' log: retrying
-- every minute would only scan the table again. Every call is safe to
-- repeat if a run fails halfway.
SELECT cron.schedule('zdm-contract-orders', '* * * * *', $job$
DO $$
DECLARE
  m bigint := zdm.migration_id('orders', 'customer_email');
BEGIN
  IF (SELECT phase FROM zdm.status WHERE id = m) = 'aborted' THEN
    PERFORM cron.unschedule('zdm-contract-orders');
    RAISE WARNING 'zdm migration % was aborted: nothing to contract', m;
    RETURN;
  END IF;
  IF (SELECT phase FROM zdm.status WHERE id = m) <> ALL (ARRAY['backfilled', 'contracted']) THEN
    RETURN;   -- the backfill is not complete yet: next time
  END IF;
  PERFORM zdm.contract(m);
  COMMIT;
  BEGIN
    PERFORM zdm.validate_not_null('orders', 'email');
  EXCEPTION WHEN not_null_violation THEN
    PERFORM cron.unschedule('zdm-contract-orders');
    RAISE WARNING 'orders.email has NULLs (%); fix them, then run zdm.validate_not_null(''orders'', ''email'')', SQLERRM;
    RETURN;
  END;
  PERFORM cron.unschedule('zdm-contract-orders');
END $$
$job$);
