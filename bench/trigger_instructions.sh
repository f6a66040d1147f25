#!/usr/bin/env bash
# The sync trigger against the floor, counted in instructions (issue 12):
# the statements of trigger_shapes.sh, each run once in a single-user
# backend under callgrind. Instruction counts do not move between runs, so
# they resolve differences of a fraction of a percent that wall times (±10–25%
# here) and perf's timer samples (±1.5 points) cannot; they do not see cache
# misses, so they complement the timed and profiled figures, not replace them.
#   statement  instructions per row of the whole statement (the executor's
#              run, or COPY's), trigger included
#   trigger    instructions per row inside the trigger function, what it
#              calls included, and its share of the statement
# Variants as in trigger_shapes.sh: none (no trigger; the statement writes
# both columns), floor (no-op C trigger), set (C trigger copying the value),
# zdm (the sync trigger), ct (a type change's convert trigger).
# Usage: bench/trigger_instructions.sh ROWS   (50000 in `run full`)
# ZDM_SHAPES_KINDS and ZDM_SHAPES_VARIANTS narrow a run down.
source "$(dirname "$0")/lib.sh"
ROWS="${1:-50000}"
bench_cluster
source "$(dirname "$0")/shapes.sh"
floor_functions
if ! command -v valgrind >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 || { echo "valgrind is not installed: skipped"; exit 0; }
fi
stop_cluster() { as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" stop -m fast -w >/dev/null; }
start_cluster() { as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" start -w >/dev/null; }

# Instructions of statement $1 (whole, and inside function $2 — "-" for
# none), counted in a single-user backend on the stopped cluster: "total trigger".
counted() { # statement symbol
  local out="$BENCH_DIR/callgrind.out" total inside
  rm -f "$out" "$out.txt"
  stop_cluster
  echo "$1;" | as_pg valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN/postgres" --single -D "$BENCH_DIR/data" "$DB" >/dev/null 2>"$BENCH_DIR/valgrind.log"
  start_cluster
  callgrind_annotate --threshold=100 --inclusive=yes "$out" 2>/dev/null > "$out.txt"
  # an entry reads "COST (PCT)  FILE:FUNCTION [OBJECT]" ("[OBJECT]" left out
  # for a function listed under several source files); the largest of a
  # function's entries is its inclusive cost (the others are parts of it)
  largest() { awk -v f="$1" '$0 ~ ":" f "( \\[|$)" { c = $1; gsub(",", "", c); if (c + 0 > m) m = c + 0 } END { printf "%.0f", m }' "$out.txt"; }
  # the statement: the executor's run, or COPY FROM's (whose own executor
  # runs are only its defaults' and the like)
  total=$(largest standard_ExecutorRun); copy=$(largest CopyFrom)
  [ "$copy" -gt "$total" ] && total=$copy
  inside=0
  [ "$2" = - ] || inside=$(largest "$2")
  echo "${total:-0} ${inside:-0}"
}
per_row() { awk -v a="$1" -v n="$2" 'BEGIN { printf "%.0f", a / n }'; }
share() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", 100 * a / b }'; }

SHAPES="upd-other upd-old upd-new insert copy"
KINDS="${ZDM_SHAPES_KINDS:-narrow wide}"
VARIANTS="${ZDM_SHAPES_VARIANTS:-none floor set zdm ct}"
declare -A S T
for kind in $KINDS; do
  n=$(rows_for "$kind")
  q -c "COPY (SELECT g + 2 * $n, $(vals "$kind"), $(aval "$kind"), $(aval "$kind") FROM generate_series(1, $n) g) TO '$BENCH_DIR/copy-$kind-both.csv'"
  q -c "COPY (SELECT g + 2 * $n, $(vals "$kind"), $(aval "$kind") FROM generate_series(1, $n) g) TO '$BENCH_DIR/copy-$kind-one.csv'"
  for v in $VARIANTS; do
    for shape in $SHAPES; do
      skipped "$v" "$shape" && continue
      setup "$kind" "$v" "$shape"
      q -c CHECKPOINT
      read -r total inside <<< "$(counted "$(statement "$kind" "$shape" "$v")" "$(trigger_symbol "$v")")"
      S[$kind,$shape,$v]=$(per_row "$total" "$n")
      [ "$v" != none ] && T[$kind,$shape,$v]="$(per_row "$inside" "$n") $(share "$inside" "$total")"
    done
  done
  drop_bench_table ts
done

ratio_of() { [ -z "$1" ] || [ -z "$2" ] && echo - || echo "$(ratio "$1" "$2")×"; }
trig() { [ -z "$1" ] && echo - || echo "$1" | awk '{ printf "%s (%s%%)", $1, $2 }'; }
echo
echo "Trigger instructions, $ROWS rows, one run each under callgrind ($(machine)):"
echo
echo "| table | shape | statement instr/row: none | floor | set | zdm | ct | zdm statement vs floor | trigger instr/row (% of statement): floor | set | zdm | ct |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
worst=0
for kind in $KINDS; do
  for shape in $SHAPES; do
    k="$kind,$shape"
    echo "| $kind | $shape | ${S[$k,none]:--} | ${S[$k,floor]:--} | ${S[$k,set]:--} | ${S[$k,zdm]:--} | ${S[$k,ct]:--} | $(ratio_of "${S[$k,zdm]:-}" "${S[$k,floor]:-}") | $(trig "${T[$k,floor]:-}") | $(trig "${T[$k,set]:-}") | $(trig "${T[$k,zdm]:-}") | $(trig "${T[$k,ct]:-}") |"
    z=$(echo "${T[$k,zdm]:-0 0}" | awk '{ print $2 }')
    worst=$(awk -v a="$worst" -v b="$z" 'BEGIN { print (b > a) ? b : a }')
  done
done
echo
echo "zdm's sync trigger: at most ${worst}% of a statement's instructions on any shape measured"
