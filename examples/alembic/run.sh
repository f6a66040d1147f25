#!/usr/bin/env bash
# The Alembic example, end to end against a real cluster: `alembic upgrade
# head` (transaction_per_migration, autocommit_block for the constraint) on a
# table written by pgbench, then the last revisions again (a tool retrying).
# Asserts the final schema and 0 rows that lost a write.
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-alembic}"
PORT="${ZDM_EXAMPLE_PORT:-5492}"
VENV="${ZDM_EXAMPLE_VENV:-/tmp/zdm-example-venv}"
source "$(dirname "$0")/../lib.sh"

# Alembic and psycopg from PyPI, in a virtualenv.
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$VENV/bin/alembic" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q 'alembic>=1.13,<2' 'psycopg[binary]>=3.1,<4'; }

boot_shop
export ZDM_EXAMPLE_URL="postgresql+psycopg://postgres@/shop?host=$DIR&port=$PORT"
ALEMBIC=("$VENV/bin/alembic" -c examples/alembic/alembic.ini)
start_app   # the old application version writes until 0002 is done
echo "==> alembic upgrade 0002 (expand, wait)"; "${ALEMBIC[@]}" upgrade 0002
stop_app
echo "==> alembic upgrade head (contract, NOT NULL)"; "${ALEMBIC[@]}" upgrade head
echo "==> re-running contract and NOT NULL (a tool retrying)"
psql_ -c "UPDATE alembic_version SET version_num = '0002'"
"${ALEMBIC[@]}" upgrade head
check_shop alembic
