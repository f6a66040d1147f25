#!/usr/bin/env bash
# The Sqitch example, end to end against a real cluster: deploy/revert/verify
# scripts (BEGIN … COMMIT per change) on a table written by pgbench. Deploys
# the expand, reverts it (zdm.abort) and re-deploys it while the old
# application writes, then deploys the rest (verify on), then runs the last
# two deploy scripts again the way a retried deploy would. Asserts the final
# schema and 0 rows that lost a write.
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-sqitch}"
PORT="${ZDM_EXAMPLE_PORT:-5493}"
source "$(dirname "$0")/../lib.sh"

# Sqitch and its PostgreSQL driver from Debian.
command -v sqitch >/dev/null && perl -MDBD::Pg -e1 2>/dev/null \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqitch libdbd-pg-perl >/dev/null

boot_shop
# Sqitch runs psql for the scripts and DBD::Pg for its registry (schema sqitch).
export PGHOST="$DIR" PGPORT="$PORT" PGUSER=postgres SQITCH_FULLNAME="zdm example" SQITCH_EMAIL="zdm@example.com"
SQITCH=(sqitch --chdir examples/sqitch --quiet)
TARGET="db:pg:shop"

start_app   # the old application version writes until wait_email is deployed
echo "==> deploy rename_email";                "${SQITCH[@]}" deploy "$TARGET" --to rename_email
echo "==> revert it (zdm.abort)";              "${SQITCH[@]}" revert "$TARGET" -y
psql_ -At -c "SELECT 'after revert: ' || string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped"
echo "==> deploy rename_email, wait_email";    "${SQITCH[@]}" deploy "$TARGET" --to wait_email
stop_app    # the old application version is gone
echo "==> deploy contract_email, email_not_null"; "${SQITCH[@]}" deploy "$TARGET"
# Sqitch records a change after its script ran; if it dies in between, the
# next deploy runs the script again. Both scripts must survive that:
echo "==> the last two scripts again (a deploy retried after a crash)"
psql_ -f examples/sqitch/deploy/contract_email.sql
psql_ -f examples/sqitch/deploy/email_not_null.sql
"${SQITCH[@]}" verify "$TARGET"
check_shop sqitch
