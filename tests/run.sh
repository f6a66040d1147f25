#!/usr/bin/env bash
# Runs every test on every PostgreSQL major zdm is built for (15 and 18;
# ZDM_PG_MAJORS="15" for one): the in-database #[pg_test]s, the host-side
# tests in tests/*.rs (real clusters, real concurrent sessions, real
# workers), the examples and the upgrade test. tests/README.md is the
# catalogue. The last line is the total: "zdm: N passed, M failed".
set -euo pipefail
# (pipefail: a failing cargo in `cargo ... | tee` still fails the script)
cd "$(dirname "$0")/.."
bash .ci/setup.sh
bash .ci/check-docs.sh
source .ci/pg.sh

PGDATA_DIR="${ZDM_TEST_PGDATA:-/tmp/zdm-pgrx-test}"
status=0; passed=0; failed=0; skipped=""

for major in $ZDM_PG_MAJORS; do
  export PG_CONFIG; PG_CONFIG="$(pg_config_for "$major")"
  echo "==> PostgreSQL $major ($PG_CONFIG)"
  rm -rf "$PGDATA_DIR"; mkdir -p "$PGDATA_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$PGDATA_DIR"

  # Host-side tests boot their own clusters from the installed extension.
  cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
  # Lib tests (#[pg_test]) first, then tests/*.rs (each boots its own cluster).
  LOG="$(mktemp)"
  major_status=0
  RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo pgrx test "pg$major" --runas postgres --pgdata "$PGDATA_DIR/data" 2>&1 | tee "$LOG" || major_status=$?

  # The examples (migration-tool projects), each its own cluster; each counts
  # as one test. pg_cron is packaged for PostgreSQL 15 only here.
  examples_passed=0; examples_failed=0
  for ex in examples/*/run.sh; do
    if [ "$ex" = examples/pg_cron/run.sh ] && [ "$major" != 15 ]; then
      skipped="$skipped examples/pg_cron(pg$major: no pg_cron package for it here)"; continue
    fi
    if ZDM_EXAMPLE_INSTALLED=1 bash "$ex"; then examples_passed=$((examples_passed + 1))
    else examples_failed=$((examples_failed + 1)); major_status=1; fi
  done

  # The upgrade from the last release with migrations in flight (swaps the
  # installed zdm.so while its own cluster runs, and puts it back): last, when
  # no other cluster is running. 0.1.0 was built for PostgreSQL 15 only, so
  # there is nothing to upgrade from on 18.
  if [ "$major" = 15 ]; then
    if ZDM_EXAMPLE_INSTALLED=1 bash tests/upgrade/run.sh; then examples_passed=$((examples_passed + 1))
    else examples_failed=$((examples_failed + 1)); major_status=1; fi
  else
    skipped="$skipped tests/upgrade(pg$major: zdm 0.1.0 never ran there)"
  fi

  p=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$LOG" | awk '{s+=$4} END {print s+0}')
  f=$(grep -Eo '[0-9]+ failed;' "$LOG" | awk '{s+=$1} END {print s+0}')
  p=$((p + examples_passed)); f=$((f + examples_failed))
  rm -f "$LOG"
  if [ "$major_status" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  echo "zdm on PostgreSQL $major: $p passed, $f failed"
  passed=$((passed + p)); failed=$((failed + f))
  [ "$major_status" -eq 0 ] || status=1
done

[ -z "$skipped" ] || echo "not run:$skipped"
# One closing line for every major together.
echo "zdm: $passed passed, $failed failed"
exit "$status"
