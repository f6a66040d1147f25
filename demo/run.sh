#!/usr/bin/env bash
# The demo: sets everything up on a fresh machine, boots a PostgreSQL 15
# cluster with zdm preloaded (settings from pgrx-config/postgresql.conf),
# loads a 1M-row table and renames a column online:
# expand → background backfill with live progress → contract.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
DIR="${ZDM_DEMO_DIR:-/tmp/zdm-demo}"
PORT="${ZDM_DEMO_PORT:-5488}"
ROWS="${ZDM_DEMO_ROWS:-1000000}"
as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi; }

echo "==> building and installing zdm (release)"
cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null

echo "==> fresh cluster in $DIR on port $PORT"
if [ -f "$DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast >/dev/null || true; fi
rm -rf "$DIR"; mkdir -p "$DIR"; [ "$(id -u)" = 0 ] && chown postgres "$DIR"
as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >/dev/null
{ cat pgrx-config/postgresql.conf; echo "port = $PORT"; echo "unix_socket_directories = '$DIR'"; echo "listen_addresses = ''"; } \
  | as_pg tee -a "$DIR/data/postgresql.auto.conf" >/dev/null
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" start -w >/dev/null

echo "==> running demo/demo.sql"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -v rows="$ROWS" -X -f demo/demo.sql

echo
echo "The cluster is still running. Connect:  psql -h $DIR -p $PORT -U postgres"
echo "Stop it:  sudo -u postgres $BIN/pg_ctl -D $DIR/data stop"
