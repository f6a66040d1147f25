# Shared by the examples' run.sh: a fresh cluster with zdm, the `orders`
# table, an old application version writing through the old column, and the
# final check. Set DIR and PORT before sourcing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash .ci/setup.sh >/dev/null
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi; }
psql_() { "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d shop -X -q -v ON_ERROR_STOP=1 "$@"; }

# A cluster with zdm (installed unless the caller did; at version
# $ZDM_EXTENSION_VERSION if set), database `shop` holding 50,000 orders;
# stopped when the script exits. Arguments are extra postgresql.conf lines.
boot_shop() {
  [ "${ZDM_EXAMPLE_INSTALLED:-0}" = 1 ] || cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
  if [ -f "$DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m immediate >/dev/null 2>&1 || true; fi
  rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" = 0 ] && chown postgres "$DIR"
  as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
  { cat pgrx-config/postgresql.conf; echo "port = $PORT"; echo "unix_socket_directories = '$DIR'"; echo "listen_addresses = ''"; echo "zdm.database = 'shop'"; printf '%s\n' "$@"; } \
    | as_pg tee -a "$DIR/data/postgresql.auto.conf" >/dev/null
  as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" start -w >/dev/null
  trap 'as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast >/dev/null 2>&1 || true' EXIT
  "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -c "CREATE DATABASE shop"
  psql_ -c "CREATE EXTENSION zdm${ZDM_EXTENSION_VERSION:+ VERSION '$ZDM_EXTENSION_VERSION'}"
  psql_ <<'SQL'
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_email text, total numeric);
INSERT INTO orders (customer_email, total) SELECT 'c' || g || '@example.com', g FROM generate_series(1, 50000) g;
SQL
}

# The old application version: updates emails through the old column. Its
# value depends only on the row, so the final check needs no ledger. An
# optional argument limits it to that many updates per second.
start_app() {
  printf '\\set id random(1, 50000)\nUPDATE orders SET customer_email = '"'"'w'"'"' || :id || '"'"'@example.com'"'"' WHERE id = :id;\n' > "$DIR/app.sql"
  "$BIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -n -c 2 -T 600 ${1:+-R "$1"} -f "$DIR/app.sql" shop >/dev/null 2>&1 &
  APP=$!
}
stop_app() { kill -TERM "$APP" 2>/dev/null || true; wait "$APP" 2>/dev/null || true; }

# Every row holds its original or its updated address; the schema is final.
check_shop() { # example name
  local lost cols
  lost=$(psql_ -At -c "SELECT count(*) FROM orders WHERE email NOT IN ('c' || id || '@example.com', 'w' || id || '@example.com') OR email IS NULL")
  cols=$(psql_ -At -c "SELECT string_agg(attname || ':' || attnotnull, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped")
  echo "rows that lost a write: $lost; columns: $cols"
  [ "$lost" = 0 ] && [ "$cols" = "id:true,total:false,email:true" ] || { echo "examples/$1: FAILED"; exit 1; }
  echo "examples/$1: ok"
}
