#!/usr/bin/env bash
# The psql example, end to end against a real cluster: a live table written
# by pgbench while migrations 001-004 run as plain psql files (001 with -1,
# the way a tool wrapping each file in a transaction runs it). Asserts the
# final schema and 0 rows that lost a write.
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-psql}"
PORT="${ZDM_EXAMPLE_PORT:-5491}"
source "$(dirname "$0")/../lib.sh"
boot_shop
start_app
echo "==> 001 (psql -1)";               psql_ -1 -f examples/psql/migrations/001_expand_rename.sql
echo "==> 001 again (a re-run)";        psql_ -1 -f examples/psql/migrations/001_expand_rename.sql
echo "==> 002";                          psql_ -f examples/psql/migrations/002_wait_backfill.sql
stop_app   # the old application version is gone
echo "==> 003";                          psql_ -1 -f examples/psql/migrations/003_contract.sql
echo "==> 003 again (a re-run)";        psql_ -1 -f examples/psql/migrations/003_contract.sql
echo "==> 004";                          psql_ -f examples/psql/migrations/004_not_null.sql
check_shop psql
