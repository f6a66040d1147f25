#!/usr/bin/env bash
# Where a backfill worker's CPU goes, counted in instructions (issue 26):
# the same rows updated by a single UPDATE, by the UPDATE in committed
# TID-range batches, by the UPDATE with a do-nothing BEFORE ROW trigger, and
# by zdm's batches (zdm.backfill_batch in a loop, what a worker runs per
# batch) — each once in a single-user backend under callgrind, so the counts
# do not move between runs the way wall times do here (±15–30%). They do not
# see waits (a commit's WAL flush, the disk): the timed runs of backfill.sh
# do.
#   total       instructions per row of the whole backend run, less a run of
#               `SELECT 1` (start-up, shutdown)
#   vs update   that, against the single UPDATE's
#   zdm's own   zdm's batches less the batched UPDATE (the same TID ranges
#               and commits): per row, what zdm itself adds — its catalog
#               SQL, checks, cursor, history — and its share of zdm's total
# Usage: bench/batch_instructions.sh ROWS [BATCH]   (100000 and 20000 in `run full`)
source "$(dirname "$0")/lib.sh"
ROWS="${1:-100000}"
BATCH="${2:-20000}"
bench_cluster
if ! command -v valgrind >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 || { echo "valgrind is not installed: skipped"; exit 0; }
fi
stop_cluster() { as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" stop -m fast -w >/dev/null; }
start_cluster() { as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" start -w >/dev/null; }

# Instructions of one single-user backend running statement $1.
counted() { # statement
  local out="$BENCH_DIR/callgrind.out"
  rm -f "$out" "$out.txt"
  stop_cluster
  echo "$1" | as_pg valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN/postgres" --single -D "$BENCH_DIR/data" "$DB" >"$BENCH_DIR/single.log" 2>"$BENCH_DIR/valgrind.log"
  start_cluster
  # a single-user backend reports a failed statement and exits 0
  if grep -q "ERROR:" "$BENCH_DIR/single.log" "$BENCH_DIR/valgrind.log"; then
    echo "batch_instructions: the statement failed: $(grep -h -m1 "ERROR:" "$BENCH_DIR/single.log" "$BENCH_DIR/valgrind.log")" >&2
    exit 1
  fi
  local total
  total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out")
  echo "${total:-0}"
}
per_row() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.0f", (a - b) / n }'; }

declare -A TOTAL
base=$(counted "SELECT 1;")
methods="update update-batched update-trigger zdm"
for m in $methods; do
  t="bi_${m//-/_}"
  make_bench_table "$t" "$ROWS"
  case $m in
    zdm) id=$(val "SELECT zdm.expand_rename('$t', 'a', 'b', background => false)") ;;
    *) q -c "ALTER TABLE $t ADD COLUMN b text" ;;
  esac
  [ "$m" = update-trigger ] && q -c "CREATE TRIGGER noop BEFORE UPDATE ON $t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
  q -c CHECKPOINT
  case $m in
    update|update-trigger) stmt="UPDATE $t SET b = a;" ;;
    update-batched)
      n=$(val "SELECT pg_relation_size('$t') / current_setting('block_size')::int")
      step=$(( (BATCH * n + ROWS - 1) / ROWS ))
      # up to the heap's end before the first batch: row versions the
      # batches move past it must not be updated again
      stmt="DO \$\$ BEGIN FOR lo IN 0..$((n - 1)) BY $step LOOP EXECUTE format('UPDATE $t SET b = a WHERE ctid >= %L::tid AND ctid < %L::tid', format('(%s,0)', lo), format('(%s,0)', least(lo + $step, $n))); COMMIT; END LOOP; END \$\$;" ;;
    zdm) stmt="DO \$\$ BEGIN LOOP EXIT WHEN zdm.backfill_batch($id, $BATCH) = 0; COMMIT; END LOOP; END \$\$;" ;;
  esac
  TOTAL[$m]=$(counted "$stmt")
  left=$(val "SELECT count(*) FROM $t WHERE b IS DISTINCT FROM a")
  [ "$left" = 0 ] || echo "warning: $m left $left rows not updated" >&2
  drop_bench_table "$t"
done

echo
echo "Instructions per row, $ROWS rows, batches of $BATCH, one single-user run each under callgrind ($(machine)):"
echo
echo "| method | instructions/row | vs single UPDATE | zdm's own (beyond the batched UPDATE) |"
echo "|---|---:|---:|---:|"
for m in $methods; do
  r=$(per_row "${TOTAL[$m]}" "$base" "$ROWS")
  own=-
  if [ "$m" = zdm ]; then
    extra=$(per_row "${TOTAL[zdm]}" "${TOTAL[update-batched]}" "$ROWS")
    own="$extra ($(awk -v e="$extra" -v r="$r" 'BEGIN { printf "%.1f%%", 100 * e / r }'))"
  fi
  echo "| $m | $r | $(ratio "$r" "$(per_row "${TOTAL[update]}" "$base" "$ROWS")")× | $own |"
done
echo
echo "zdm's batches: $(ratio "$(per_row "${TOTAL[zdm]}" "$base" "$ROWS")" "$(per_row "${TOTAL[update]}" "$base" "$ROWS")")× the single UPDATE's instructions per row, $(ratio "$(per_row "${TOTAL[zdm]}" "$base" "$ROWS")" "$(per_row "${TOTAL[update-batched]}" "$base" "$ROWS")")× the batched UPDATE's"
