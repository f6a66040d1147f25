#!/usr/bin/env bash
# Runs every test: the in-database #[pg_test]s and the host-side tests in
# tests/*.rs (real clusters, real concurrent sessions, real workers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup.sh

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
PGDATA_DIR="${ZDM_TEST_PGDATA:-/tmp/zdm-pgrx-test}"
rm -rf "$PGDATA_DIR"; mkdir -p "$PGDATA_DIR"
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"

# Host-side tests boot their own clusters from the installed extension.
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
# Lib tests (#[pg_test]) first, then tests/*.rs (each boots its own cluster).
RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_DIR/data"
