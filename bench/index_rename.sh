#!/usr/bin/env bash
# Renaming an indexed column — a unique key and a secondary expression index
# on it — on a table that takes single-row writes throughout: zdm end to end
# (expand → background backfill at default throttling → concurrent builds of
# the carried indexes by the worker → contract) against building the same two
# indexes by hand with CREATE INDEX CONCURRENTLY. Reports wall time and the
# writers' p99 during the index builds (and without any DDL, for reference).
# Usage: bench/index_rename.sh ROWS
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
bench_cluster

make_bench_table ir "$ROWS"
q -c "ALTER TABLE ir ADD CONSTRAINT ir_a_key UNIQUE (a)" -c "CREATE INDEX ir_a_lower ON ir (lower(a))" -c "VACUUM ANALYZE ir"
printf '\\set id random(1, %s)\nUPDATE ir SET qty = qty + 1 WHERE id = :id;\n' "$ROWS" > "$BENCH_DIR/ir.sql"

# Reference: writers alone.
writers log_ref ir.sql 2000; sleep 3; stop_writers
read -r _ ref_p99 < <(window_stats log_ref)

# By hand: the two builds with CREATE INDEX CONCURRENTLY.
writers log_hand ir.sql 2000
t0=$(epoch)
q -c "CREATE UNIQUE INDEX CONCURRENTLY ir_hand_u ON ir (a)" -c "CREATE INDEX CONCURRENTLY ir_hand_l ON ir (lower(a))"
t1=$(epoch)
stop_writers
read -r _ hand_p99 < <(window_stats log_hand "$t0" "$t1")
hand_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
q -c "DROP INDEX ir_hand_u" -c "DROP INDEX ir_hand_l"

# zdm: the whole rename; p99 measured while the worker builds the indexes.
writers log_zdm ir.sql 2000
t2=$(epoch)
ID=$(val "SELECT zdm.expand_rename('ir', 'a', 'b')")
val "SELECT zdm.wait($ID, '30 minutes')" >/dev/null 2>&1
val "SELECT zdm.contract($ID)" >/dev/null
t3=$(epoch)
stop_writers
read -r bf_s from to < <(val "SELECT round(extract(epoch FROM backfilled_at - backfill_started_at)::numeric, 1),
    (SELECT extract(epoch FROM min(at - duration_ms * interval '1 ms')) FROM zdm.events WHERE migration_id = $ID AND step = 'index built'),
    (SELECT extract(epoch FROM max(at)) FROM zdm.events WHERE migration_id = $ID AND step = 'index built')
  FROM zdm.migrations WHERE id = $ID" | tr '|' ' ')
read -r _ zdm_p99 < <(window_stats log_zdm "$from" "$to")
build_s=$(awk -v a="$from" -v b="$to" 'BEGIN { printf "%.1f", b - a }')
total_s=$(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.1f", b - a }')
lock_ms=$(val "SELECT round(max(duration_ms)::numeric, 1) FROM zdm.events WHERE migration_id = $ID AND step = 'contract'")

echo "### Renaming an indexed column: $ROWS rows, a unique key + an expression index ($(machine))"
echo
echo "4 clients write single rows of the table throughout (pgbench, 2000 tx/s). p99 is measured over the index builds only."
echo
echo "| | time s | writers' p99 ms during index builds |"
echo "|---|---:|---:|"
echo "| writers alone (reference) | | $ref_p99 |"
echo "| CREATE INDEX CONCURRENTLY by hand, both indexes | $hand_s | $hand_p99 |"
echo "| zdm: index builds by the worker | $build_s | $zdm_p99 |"
echo "| zdm: whole rename (expand → backfill ${bf_s}s at default throttling → builds → contract) | $total_s | |"
echo
echo "contract took ${lock_ms} ms in total (its ACCESS EXCLUSIVE step is a part of that)."
echo
echo "indexed rename: builds ${build_s}s (by hand ${hand_s}s), p99 during builds ${zdm_p99} ms (by hand ${hand_p99} ms, reference ${ref_p99} ms)"
