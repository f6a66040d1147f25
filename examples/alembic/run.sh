#!/usr/bin/env bash
# The Alembic example, end to end against a real cluster: `alembic upgrade
# head` (transaction_per_migration, autocommit_block for the constraint) on a
# table written by pgbench, run twice (the second run finds everything done).
# Asserts the final schema and 0 rows that lost a write.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash .ci/setup.sh >/dev/null
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-alembic}"
PORT="${ZDM_EXAMPLE_PORT:-5492}"
VENV="${ZDM_EXAMPLE_VENV:-/tmp/zdm-example-venv}"
as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi; }
psql_() { "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d shop -X -q -v ON_ERROR_STOP=1 "$@"; }

# Alembic and psycopg from PyPI, in a virtualenv.
if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x "$VENV/bin/alembic" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q 'alembic>=1.13,<2' 'psycopg[binary]>=3.1,<4'; }

[ "${ZDM_EXAMPLE_INSTALLED:-0}" = 1 ] || cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
if [ -f "$DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m immediate >/dev/null 2>&1 || true; fi
rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
{ cat pgrx-config/postgresql.conf; echo "port = $PORT"; echo "unix_socket_directories = '$DIR'"; echo "listen_addresses = ''"; echo "zdm.database = 'shop'"; } \
  | as_pg tee -a "$DIR/data/postgresql.auto.conf" >/dev/null
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" start -w >/dev/null
trap 'as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast >/dev/null 2>&1 || true' EXIT

"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -c "CREATE DATABASE shop"
psql_ <<'SQL'
CREATE EXTENSION zdm;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_email text, total numeric);
INSERT INTO orders (customer_email, total) SELECT 'c' || g || '@example.com', g FROM generate_series(1, 50000) g;
SQL

export ZDM_EXAMPLE_URL="postgresql+psycopg://postgres@/shop?host=$DIR&port=$PORT"
ALEMBIC=("$VENV/bin/alembic" -c examples/alembic/alembic.ini)

# The old application version writes through the old column until 0002 is done.
printf '\\set id random(1, 50000)\nUPDATE orders SET customer_email = '"'"'w'"'"' || :id || '"'"'@example.com'"'"' WHERE id = :id;\n' > "$DIR/app.sql"
"$BIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -n -c 2 -T 600 -f "$DIR/app.sql" shop >/dev/null 2>&1 &
APP=$!
echo "==> alembic upgrade 0002 (expand, wait)"; "${ALEMBIC[@]}" upgrade 0002
kill -TERM "$APP" 2>/dev/null || true; wait "$APP" 2>/dev/null || true
echo "==> alembic upgrade head (contract, NOT NULL)"; "${ALEMBIC[@]}" upgrade head
echo "==> re-running contract and NOT NULL (a tool retrying)"
psql_ -c "UPDATE alembic_version SET version_num = '0002'"
"${ALEMBIC[@]}" upgrade head

lost=$(psql_ -At -c "SELECT count(*) FROM orders WHERE email NOT IN ('c' || id || '@example.com', 'w' || id || '@example.com') OR email IS NULL")
cols=$(psql_ -At -c "SELECT string_agg(attname || ':' || attnotnull, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped")
echo "rows that lost a write: $lost; columns: $cols"
[ "$lost" = 0 ] && [ "$cols" = "id:true,total:false,email:true" ] || { echo "examples/alembic: FAILED"; exit 1; }
echo "examples/alembic: ok"
