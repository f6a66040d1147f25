#!/usr/bin/env bash
# Runs every test: the in-database #[pg_test]s and the host-side tests in
# tests/*.rs (real clusters, real concurrent sessions, real workers).
set -euo pipefail
# (pipefail: a failing cargo in `cargo ... | tee` still fails the script)
cd "$(dirname "$0")/.."
bash .ci/setup.sh
bash .ci/check-docs.sh

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
PGDATA_DIR="${ZDM_TEST_PGDATA:-/tmp/zdm-pgrx-test}"
rm -rf "$PGDATA_DIR"; mkdir -p "$PGDATA_DIR"
[ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"

# Host-side tests boot their own clusters from the installed extension.
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
# Lib tests (#[pg_test]) first, then tests/*.rs (each boots its own cluster).
LOG="$(mktemp)"
status=0
RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_DIR/data" 2>&1 | tee "$LOG" || status=$?

# The examples (migration-tool projects), each its own cluster; each counts
# as one test.
examples_passed=0; examples_failed=0
for ex in examples/*/run.sh; do
  if ZDM_EXAMPLE_INSTALLED=1 bash "$ex"; then examples_passed=$((examples_passed + 1))
  else examples_failed=$((examples_failed + 1)); status=1; fi
done

# The upgrade from the last release with migrations in flight (swaps the
# installed zdm.so while its own cluster runs, and puts it back): last, when
# no other cluster is running.
if ZDM_EXAMPLE_INSTALLED=1 bash tests/upgrade/run.sh; then examples_passed=$((examples_passed + 1))
else examples_failed=$((examples_failed + 1)); status=1; fi

# One closing line for all test binaries together.
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOG" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$LOG" | awk '{s+=$1} END {print s+0}')
passed=$((passed + examples_passed)); failed=$((failed + examples_failed))
rm -f "$LOG"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "zdm: $passed passed, $failed failed"
exit "$status"
