#!/usr/bin/env bash
# The Django example, end to end against a real cluster, release by release
# the way a team ships it: release 1 (migrations 0002 expand and 0003 wait)
# while release-1 code saves orders through the ORM and pgbench writes too;
# release 2's code (the model's field renamed, 0004) saving beside release 1;
# release 3 (0005 contract, 0006 NOT NULL) once release 1 is gone. Then
# `manage.py test` (zdm in template1). Asserts the final schema and 0 rows
# that lost a write.
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-django}"
PORT="${ZDM_EXAMPLE_PORT:-5496}"
VENV="${ZDM_EXAMPLE_VENV:-/tmp/zdm-example-venv}"
source "$(dirname "$0")/../lib.sh"

if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c "import django, psycopg" 2>/dev/null || "$VENV/bin/pip" install -q 'django>=5.2,<5.3' 'psycopg[binary]>=3.1,<4'

boot_shop
export ZDM_EXAMPLE_HOST="$DIR" ZDM_EXAMPLE_PORT="$PORT"
cd examples/django
PY="$VENV/bin/python"
writer() { touch "$DIR/running-$1"; "$PY" writer.py "$1" "$DIR/running-$1" & eval "WRITER_$1=$!"; }
stop_writer() { rm -f "$DIR/running-$1"; local pid; eval "pid=\$WRITER_$1"; wait "$pid"; }

echo "==> the table exists: record 0001 as applied"
"$PY" manage.py migrate orders 0001 --fake-initial
start_app; writer old
echo "==> release 1: expand and wait (0002, 0003)"
"$PY" manage.py migrate orders 0003
next=$(psql_ -At -c "SELECT next_step FROM zdm.status WHERE kind = 'rename'")
echo "zdm.status.next_step: $next"
case "$next" in "ready for new code"*) ;; *) echo "examples/django: FAILED (not ready for new code after 0003)"; exit 1;; esac
echo "==> release 2: the renamed field (0004); its code saves beside release 1's"
"$PY" manage.py migrate orders 0004
writer new; sleep 5
stop_writer old; stop_app
echo "==> release 3: contract and NOT NULL (0005, 0006), release 1 gone"
"$PY" manage.py migrate orders
stop_writer new
cd ../..
check_shop django
echo "==> manage.py test (its database is made from template1, where zdm is)"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d template1 -X -q -c "CREATE EXTENSION zdm"
(cd examples/django && "$PY" manage.py test orders -v 1)
