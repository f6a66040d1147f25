-- Release 2 (contract) at a quiet hour, then NOT NULL — scheduled, once no
-- application version reads customer_email. The job waits for the backfill
-- (a run before it is complete does nothing), contracts (brief ACCESS
-- EXCLUSIVE, released by the COMMIT right after), runs validate_not_null
-- outside a transaction block (its steps run now, each its own transaction;
-- a NULL raises 23502 and the job retries next time), and unschedules
-- itself. Every call is safe to repeat if a run fails halfway.
SELECT cron.schedule('zdm-contract-orders', '* * * * *', $job$
DO $$
DECLARE
  m bigint := zdm.migration_id('orders', 'customer_email');
BEGIN
  IF (SELECT phase FROM zdm.status WHERE id = m) NOT IN ('backfilled', 'contracted') THEN
    RETURN;
  END IF;
  PERFORM zdm.contract(m);
  COMMIT;
  PERFORM zdm.validate_not_null('orders', 'email');
  PERFORM cron.unschedule('zdm-contract-orders');
END $$
$job$);
