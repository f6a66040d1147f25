#!/usr/bin/env bash
# The psql example, end to end against a real cluster: a live table written
# by pgbench while migrations 001-004 run as plain psql files (001 with -1,
# the way a tool wrapping each file in a transaction runs it). Asserts the
# final schema and 0 rows that lost a write.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash .ci/setup.sh >/dev/null
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
DIR="${ZDM_EXAMPLE_DIR:-/tmp/zdm-example-psql}"
PORT="${ZDM_EXAMPLE_PORT:-5491}"
as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi; }
psql_() { "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d shop -X -q -v ON_ERROR_STOP=1 "$@"; }

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

# The application (old version): updates emails through the old column. Its
# value depends only on the row, so the check below needs no ledger.
printf '\\set id random(1, 50000)\nUPDATE orders SET customer_email = '"'"'w'"'"' || :id || '"'"'@example.com'"'"' WHERE id = :id;\n' > "$DIR/app.sql"
"$BIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -n -c 2 -T 600 -f "$DIR/app.sql" shop >/dev/null 2>&1 &
APP=$!

echo "==> 001 (psql -1)";               psql_ -1 -f examples/psql/migrations/001_expand_rename.sql
echo "==> 001 again (a re-run)";        psql_ -1 -f examples/psql/migrations/001_expand_rename.sql
echo "==> 002";                          psql_ -f examples/psql/migrations/002_wait_backfill.sql
kill -TERM "$APP" 2>/dev/null || true; wait "$APP" 2>/dev/null || true   # the old application version is gone
echo "==> 003";                          psql_ -1 -f examples/psql/migrations/003_contract.sql
echo "==> 003 again (a re-run)";        psql_ -1 -f examples/psql/migrations/003_contract.sql
echo "==> 004";                          psql_ -f examples/psql/migrations/004_not_null.sql

# every row holds its original or its updated address; the schema is final
lost=$(psql_ -At -c "SELECT count(*) FROM orders WHERE email NOT IN ('c' || id || '@example.com', 'w' || id || '@example.com') OR email IS NULL")
cols=$(psql_ -At -c "SELECT string_agg(attname || ':' || attnotnull, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped")
echo "rows that lost a write: $lost; columns: $cols"
[ "$lost" = 0 ] && [ "$cols" = "id:true,total:false,email:true" ] || { echo "examples/psql: FAILED"; exit 1; }
echo "examples/psql: ok"
