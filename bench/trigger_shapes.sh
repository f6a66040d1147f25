#!/usr/bin/env bash
# The sync trigger against the floor on every write shape (issue 12).
#   none   no trigger; where zdm would copy a value, the statement writes
#          both columns itself (the same row bytes the trigger produces)
#   floor  the same statements with a C BEFORE ROW trigger that returns the
#          row unchanged (bench/c/floor_triggers.c): what any BEFORE ROW
#          trigger pays — old-row refetch and lock, tuple materialisation
#   set    a C BEFORE ROW trigger that copies one column into the other on
#          every row, nothing else (bench/c/floor_triggers.c): what any
#          trigger that sets a value pays on top, forming the new tuple; the
#          statements write one column only, as for zdm (not for upd-other,
#          where there is nothing to set)
#   zdm    zdm's sync trigger; the statements write one column only
#   ct     a type change's convert trigger (a text → varchar, a plain cast
#          evaluated by the executor) on the same statements; not upd-new
#          (the application never writes the shadow column)
# Shapes: UPDATE of an unrelated column (rows in sync), UPDATE through the
# old column, UPDATE through the new one, INSERT … SELECT, COPY FROM.
# Tables: narrow (id, a text, pad text, n int), wide (30 columns, the two
# migration columns last), toast (narrow with ~3 KB incompressible values).
# Each statement on a vacuumed table after a CHECKPOINT; median of 3 rounds,
# variants interleaved. Usage: bench/trigger_shapes.sh ROWS
# ZDM_SHAPES_KINDS, ZDM_SHAPES_VARIANTS and ZDM_SHAPES_ROUNDS narrow a run down.
# ZDM_SHAPES_PROFILE=1 adds a profile (perf, installed if missing) of the
# floor and zdm statements of the first round: the trigger function's share
# of the backend's CPU samples, children included — the part of zdm's cost
# above the floor that wall times on this noisy machine cannot resolve.
source "$(dirname "$0")/lib.sh"
ROWS="${1:-200000}"
bench_cluster
source "$(dirname "$0")/shapes.sh"
floor_functions
timed() { q -c "VACUUM ts" -c CHECKPOINT; local s; s=$(now_ms); q -c "$1"; echo $(( $(now_ms) - s )); }
# The share (%) of the busiest backend's CPU samples spent in function $2 and
# what it calls, while statement $1 runs (whole-machine sampling, DWARF stacks).
profiled() { # statement symbol
  q -c "VACUUM ts" -c CHECKPOINT
  local data="$BENCH_DIR/perf.data" pid
  perf record -q -a -F 3999 --call-graph dwarf,16384 -o "$data" -- \
    "$BIN/psql" -h "$BENCH_DIR" -p "$PORT" -U postgres -d "$DB" -X -q -c "$1" >/dev/null 2>&1
  perf report -i "$data" --sort pid --stdio -q 2>/dev/null > "$data.pids" || true
  pid=$(grep -m1 -oE '[0-9]+:postgres' "$data.pids" | cut -d: -f1 || true)
  # sorted by object and symbol: by symbol alone perf lists one function
  # in several entries (the first of them undercounted zdm by ~2 points)
  perf report -i "$data" --pid "$pid" --children --percentage relative --sort dso,symbol --stdio -q -g none 2>/dev/null > "$data.txt" || true
  awk -v s="$2" '$4 == "[.]" && $5 == s { gsub("%", "", $1); t += $1; found = 1 } END { printf "%.2f\n", found ? t : 0 }' "$data.txt"
}
# a / b as a ratio, and a − b in percentage points; "-" when either is missing.
vs() { [ "$1" = - ] || [ "$2" = - ] && echo - || echo "$(ratio "$1" "$2")×"; }
above() { [ "$1" = - ] || [ "$2" = - ] && echo - || awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }
PROFILE="${ZDM_SHAPES_PROFILE:-0}"
if [ "$PROFILE" = 1 ] && ! command -v perf >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null 2>&1 || PROFILE=0
fi
declare -A P

SHAPES="upd-other upd-old upd-new insert copy"
KINDS="${ZDM_SHAPES_KINDS:-narrow wide toast}"
declare -A T
for kind in $KINDS; do
  n=$(rows_for "$kind")
  q -c "COPY (SELECT g + 2 * $n, $(vals "$kind"), $(aval "$kind"), $(aval "$kind") FROM generate_series(1, $n) g) TO '$BENCH_DIR/copy-$kind-both.csv'"
  q -c "COPY (SELECT g + 2 * $n, $(vals "$kind"), $(aval "$kind") FROM generate_series(1, $n) g) TO '$BENCH_DIR/copy-$kind-one.csv'"
  for round in $(seq 1 "${ZDM_SHAPES_ROUNDS:-3}"); do
    for v in ${ZDM_SHAPES_VARIANTS:-none floor set zdm ct}; do
      for shape in $SHAPES; do
        skipped "$v" "$shape" && continue
        setup "$kind" "$v" "$shape"
        T[$kind,$shape,$v]+="$(timed "$(statement "$kind" "$shape" "$v")") "
        if [ "$PROFILE" = 1 ] && [ "$round" = 1 ] && [ "$v" != none ]; then
          setup "$kind" "$v" "$shape"
          P[$kind,$shape,$v]=$(profiled "$(statement "$kind" "$shape" "$v")" "$(trigger_symbol "$v")")
        fi
      done
    done
  done
done
drop_bench_table ts

echo
echo "Sync trigger vs the floor, $ROWS rows (toast: $((ROWS / 10))), median of ${ZDM_SHAPES_ROUNDS:-3}, ms ($(machine)):"
echo
echo "| table | shape | none | floor (noop C trigger) | set (C trigger copying the value) | zdm | ct (type change) | zdm vs floor | zdm vs set | ct vs set | floor vs none |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for kind in $KINDS; do
  for shape in $SHAPES; do
    # "-" for a variant left out (ZDM_SHAPES_VARIANTS) or a shape it skips
    a=$(echo "${T[$kind,$shape,none]:-}" | median); f=$(echo "${T[$kind,$shape,floor]:-}" | median); z=$(echo "${T[$kind,$shape,zdm]:-}" | median)
    c=$(echo "${T[$kind,$shape,set]:-}" | median); t=$(echo "${T[$kind,$shape,ct]:-}" | median)
    echo "| $kind | $shape | $a | $f | $c | $z | $t | $(vs "$z" "$f") | $(vs "$z" "$c") | $(vs "$t" "$c") | $(vs "$f" "$a") |"
  done
done
if [ "$PROFILE" = 1 ]; then
  echo
  echo "Profile (perf, first round): the trigger function's share of the backend's CPU samples, what it calls included:"
  echo
  echo "| table | shape | floor: noop C trigger % | set: copying C trigger % | zdm: sync trigger % | ct: convert trigger % | zdm above the floor, % of the statement | zdm above set | ct above set (upd-other: above the floor) |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  for kind in $KINDS; do
    for shape in $SHAPES; do
      f=${P[$kind,$shape,floor]:--}; z=${P[$kind,$shape,zdm]:--}; c=${P[$kind,$shape,set]:--}; t=${P[$kind,$shape,ct]:--}
      echo "| $kind | $shape | $f | $c | $z | $t | $(above "$z" "$f") | $(above "$z" "$c") | $(above "$t" "$([ "$shape" = upd-other ] && echo "$f" || echo "$c")") |"
    done
  done
fi
