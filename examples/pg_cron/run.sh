#!/usr/bin/env bash
# The pg_cron example, end to end against a real cluster: expand on a table
# written by pgbench, a scheduled backfill that unschedules itself (pg_cron's
# background-worker mode), a restart into pg_cron's libpq mode, and a
# scheduled contract + NOT NULL that unschedules itself. Asserts the final
# schema and 0 rows that lost a write. pg_cron fires on minute boundaries:
# about two minutes of waiting.
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-pg_cron}"
PORT="${ZDM_EXAMPLE_PORT:-5494}"
source "$(dirname "$0")/../lib.sh"

# pg_cron from Debian (the PGDG package has the same name).
MAJOR=$("$PG_CONFIG" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')
[ -f "$("$PG_CONFIG" --pkglibdir)/pg_cron.so" ] \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$MAJOR-cron" >/dev/null

boot_shop "shared_preload_libraries = 'zdm,pg_cron'" "cron.database_name = 'shop'" \
          "cron.use_background_workers = on" "cron.host = '$DIR'"
psql_ -c "CREATE EXTENSION pg_cron"

# Poll until the named job unscheduled itself; show every run's outcome.
wait_unscheduled() { # job name
  local left
  for _ in $(seq 1 200); do
    left=$(psql_ -At -c "SELECT count(*) FROM cron.job WHERE jobname = '$1'")
    [ "$left" = 0 ] && break
    sleep 1
  done
  psql_ -At -c "SELECT '  run ' || d.runid || ': ' || d.status || coalesce(' ' || nullif(d.return_message, ''), '') FROM cron.job_run_details d ORDER BY d.runid"
  [ "$left" = 0 ] || { echo "examples/pg_cron: job $1 did not finish"; exit 1; }
}

start_app 50   # a slow writer: at full speed it rewrites every row (through
               # the sync trigger) before the job's first minute comes
echo "==> expand";                            psql_ -f examples/pg_cron/1_expand.sql
echo "==> schedule the backfill (pg_cron background-worker mode)"
psql_ -f examples/pg_cron/2_schedule_backfill.sql
wait_unscheduled zdm-backfill-orders
psql_ -At -c "SELECT 'phase: ' || phase || ', rows backfilled: ' || rows_done FROM zdm.status WHERE id = zdm.migration_id('orders', 'customer_email')"
stop_app   # the old application version is gone

echo "==> restart into pg_cron's libpq mode (jobs run over a connection)"
psql_ -c "ALTER SYSTEM SET cron.use_background_workers = off"
as_pg "$BIN/pg_ctl" -D "$DIR/data" restart -w -m fast >/dev/null
echo "==> schedule the contract and NOT NULL"
psql_ -f examples/pg_cron/3_schedule_contract.sql
wait_unscheduled zdm-contract-orders
check_shop pg_cron
