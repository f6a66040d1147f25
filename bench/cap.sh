#!/usr/bin/env bash
# What max_rows_per_second buys the workload at half load: live.sh's
# workload (pgbench TPC-B-like + single-row traffic on the migrating table)
# rate-limited to half of its saturated TPS, without a migration and during a
# zdm rename's background backfill capped at each of ZDM_CAPS rows/s (and
# uncapped, the adaptive throttle alone; "trigger": expanded, no backfill —
# the sync trigger's own cost, which no cap takes back), alternating: none,
# cap 1, none, cap 2, …, none. Each backfill run is compared with the mean of the runs
# without a migration just before and after it; ZDM_CAP_ROUNDS rounds (2),
# medians with their range. Reports the backfill's rows/s while pgbench ran,
# the workload's TPS and the median of its per-second p99s (its usual tail;
# this VM's disk stalls decide whole-run p99s, see bench/README.md).
# Usage: [ZDM_CAPS="trigger 2000 5000 … 0"] [ZDM_CAP_ROUNDS=N] bench/cap.sh ROWS SECONDS
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
SECS="${2:-20}"
CAPS="${ZDM_CAPS:-2500 5000 10000 20000 0}"   # 0: no cap
ROUNDS="${ZDM_CAP_ROUNDS:-2}"
bench_cluster

SCALE=$(( ROWS >= 1000000 ? 10 : 2 ))
"$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -i -q -s "$SCALE" "$DB" >/dev/null 2>&1
live_table cap_base "$ROWS"
q -c "ALTER SYSTEM SET zdm.adaptive_throttle = on" -c "SELECT pg_reload_conf()" >/dev/null

declare -A TPS P99 SP99 RATE STATE BUSY ID RT RS RR
n=0
base_run() { # index
  settle
  workload cap_base "cap_base_$1" "${RATE_LIMIT:-}"
  read -r TPS[base,$1] _ < <(window_stats "cap_base_$1")
  SP99[base,$1]=$(second_p99 "cap_base_$1")
}
# Half load: half of the saturated TPS (no rate limit, no migration).
compare() { # cap round table: the next run without a migration, and the ratios to the two around it
  drop_bench_table "$3"
  n=$((n + 1))
  base_run "$n"
  RT[$1]+="$(ratio "${TPS[$1,$2]}" "$(( (TPS[base,$((n - 1))] + TPS[base,$n]) / 2 ))") "
  RS[$1]+="$(ratio "${SP99[$1,$2]}" "$(awk -v a="${SP99[base,$((n - 1))]}" -v b="${SP99[base,$n]}" 'BEGIN { print (a + b) / 2 }')") "
  RR[$1]+="${RATE[$1,$2]} "
}
base_run sat
RATE_LIMIT=$(( TPS[base,sat] / 2 ))
base_run 0
for r in $(seq 1 "$ROUNDS"); do
  for cap in $CAPS; do
    t="cap_${cap}_$r"
    live_table "$t" "$ROWS"
    if [ "$cap" = trigger ]; then
      settle
      val "SELECT zdm.expand_rename('$t', 'a', 'b', background => false)" >/dev/null
      workload "$t" "$t" "$RATE_LIMIT"
      read -r TPS[$cap,$r] _ < <(window_stats "$t")
      SP99[$cap,$r]=$(second_p99 "$t")
      RATE[$cap,$r]=0
    else
      zdm_run "$cap,$r" "$t" "max_rows_per_second => $cap"
    fi
    compare "$cap" "$r" "$t"
  done
done

med() { local v; v=$(tr ' ' '\n' | grep .); echo "$(echo "$v" | median) ($(echo "$v" | span))"; }
echo "### max_rows_per_second at half load: pgbench -R $RATE_LIMIT, $ROWS rows ($(machine))"
echo
echo "pgbench: 4 clients, ${SECS}s per run, rate-limited to half of its saturated TPS (${TPS[base,sat]}); each backfill run against the mean of the runs without a migration just before and after it; $ROUNDS rounds, median (range). Per-second p99 without a migration: $(for i in $(seq 0 "$n"); do printf '%s ' "${SP99[base,$i]}"; done | med) ms."
echo
echo "| max_rows_per_second | backfill rows/s while pgbench ran | workload TPS | per-second p99 |"
echo "|---|---:|---:|---:|"
for cap in $CAPS; do
  label=$cap; [ "$cap" = 0 ] && label="none (adaptive throttle alone)"; [ "$cap" = trigger ] && label="sync trigger only (expanded, no backfill)"
  echo "| $label | $(med <<< "${RR[$cap]}") | $(med <<< "${RT[$cap]}")× | $(med <<< "${RS[$cap]}")× |"
done
