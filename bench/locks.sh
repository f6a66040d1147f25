#!/usr/bin/env bash
# Lock footprint: a session holds ACCESS SHARE on the table (an open
# transaction that read it) for 3 s while DDL runs and pgbench reads the table
# at a fixed rate. zdm's expand_rename and contract wait at most
# zdm.lock_timeout per attempt, then step aside, so no reader waits longer
# than that (+ ~100 ms); a plain ALTER TABLE … ADD COLUMN queues behind the
# blocker and every reader queues behind it.
source "$(dirname "$0")/lib.sh"
bench_cluster
LOCK_TIMEOUT_MS=200
BLOCK_S=3

drop_bench_table lk
q -c "CREATE TABLE lk (id int PRIMARY KEY, a text)" \
  -c "INSERT INTO lk SELECT g, 'v' || g FROM generate_series(1, 10000) g" -c "VACUUM ANALYZE lk"
printf '\\set id random(1, 10000)\nSELECT * FROM lk WHERE id = :id;\n' > "$BENCH_DIR/read.sql"

# Runs pgbench for 8 s at 200 tx/s; 1 s in, a blocker holds ACCESS SHARE for
# BLOCK_S; 0.5 s later the DDL ($1) starts. Prints "max_latency_ms ddl_ms".
scenario() {
  rm -f "$BENCH_DIR"/lk.*
  (cd "$BENCH_DIR" && "$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 4 -j 2 -T 8 -R 200 \
     -f read.sql --log --log-prefix=lk "$DB" >/dev/null 2>&1) &
  local bench=$!
  sleep 1
  q -c "BEGIN" -c "SELECT count(*) FROM lk" -c "SELECT pg_sleep($BLOCK_S)" -c "COMMIT" >/dev/null &
  local blocker=$!
  sleep 0.5
  local s; s=$(now_ms)
  q -c "SET zdm.lock_timeout = '${LOCK_TIMEOUT_MS}ms'" -c "SET zdm.lock_retries = 100" -c "$1" >/dev/null
  local ddl=$(( $(now_ms) - s ))
  wait "$blocker"; wait "$bench" || true
  local max; max=$(cat "$BENCH_DIR"/lk.* | awk 'BEGIN{m=0} {if ($3>m) m=$3} END {printf "%.0f", m/1000}')
  echo "$max $ddl"
}

read -r zmax zddl < <(scenario "SELECT zdm.expand_rename('lk', 'a', 'b', background => false)")
ID=$(val "SELECT max(id) FROM zdm.migrations")
val "SELECT zdm.backfill_batch($ID, 100000)" >/dev/null; val "SELECT zdm.backfill_batch($ID, 100000)" >/dev/null
read -r cmax cddl < <(scenario "SELECT zdm.contract($ID)")
read -r amax addl < <(scenario "ALTER TABLE lk ADD COLUMN c text")

bound=$(( LOCK_TIMEOUT_MS + 100 ))
verdict() { if [ "$1" -le "$bound" ]; then echo "within ${bound} ms"; else echo "over ${bound} ms"; fi; }
echo "### Lock footprint behind a ${BLOCK_S}s ACCESS SHARE holder ($(machine))"
echo
echo "pgbench reads the table at 200 tx/s (4 clients) while the DDL runs; zdm.lock_timeout = ${LOCK_TIMEOUT_MS}ms."
echo
echo "| DDL | longest pgbench transaction ms | DDL took ms | |"
echo "|---|---:|---:|---|"
echo "| zdm.expand_rename | $zmax | $zddl | $(verdict "$zmax") |"
echo "| zdm.contract | $cmax | $cddl | $(verdict "$cmax") |"
echo "| plain ALTER TABLE ADD COLUMN | $amax | $addl | readers queue behind it |"
echo
echo "lock footprint: longest reader wait ${zmax} ms (expand), ${cmax} ms (contract) vs ${amax} ms for plain ALTER TABLE"
