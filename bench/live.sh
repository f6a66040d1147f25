#!/usr/bin/env bash
# Impact on a live workload: pgbench's TPC-B-like transactions on its own
# tables plus single-row reads and writes on the table being migrated —
# without a migration, and while zdm renames a column of such a table with
# a background backfill at DEFAULT settings, once with the fixed throttle
# (zdm.adaptive_throttle = off) and once with the adaptive one (the
# default), in ZDM_LIVE_ROUNDS rounds (3); and, to tell the two costs apart,
# with the column expanded (sync trigger) but no backfill. Reports TPS and p99 latency of
# the transactions that ended while the backfill ran, the backfill's rate,
# their medians, and a plot of round 1 (bench/results/live.png).
# Bar (issue 12): ≥ 0.95× TPS and p99 ≤ 1.5× at default settings.
# Then the same workload rate-limited (pgbench -R) to half of the saturated
# TPS measured in round 1 — a server at half load — without a migration and
# during an adaptive backfill, beside a backfill on the idle server: how much
# of the capacity the workload leaves the backfill takes (issue 29's goal:
# ≥ 50% of its idle-server speed, the workload's p99 ≤ 1.2×); plotted in
# bench/results/live_rate.png. Beside it, what a user would write by hand:
# the same rename's UPDATE in committed TID-range batches of zdm's size,
# paced to zdm's speed in that round, and paced to a tenth of zdm's idle-server speed —
# where the workload's p99 lies for any backfill at those speeds — and zdm
# held to that tenth by its own cap (max_rows_per_second), the latency-first
# choice.
# Usage: [ZDM_LIVE_ROUNDS=N] bench/live.sh ROWS SECONDS
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
SECS="${2:-20}"
bench_cluster

SCALE=$(( ROWS >= 1000000 ? 10 : 2 ))
# Rounds: no migration, fixed, adaptive, …, and no migration once more at
# the end; each run with a migration is compared with the mean of the runs
# without one just before and just after it, and the summary is the median
# over the rounds. This machine's disk makes single runs differ by up to 1.8×.
ROUNDS="${ZDM_LIVE_ROUNDS:-3}"
"$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -i -q -s "$SCALE" "$DB" >/dev/null 2>&1
tables="live_base"
for r in $(seq 1 "$ROUNDS"); do tables+=" live_trigger_$r live_fixed_$r live_adaptive_$r live_rate_$r live_capped_$r live_paced_$r live_tenth_$r"; done
for t in $tables; do live_table "$t" "$ROWS"; done

set_adaptive() { q -c "ALTER SYSTEM SET zdm.adaptive_throttle = $1" -c "SELECT pg_reload_conf()" >/dev/null; sleep 1; }
# The hand-written backfill: SET b = a in committed batches of PAGES heap
# pages up to the heap's end as it was, sleeping to hold ROWS_PER_S.
q >/dev/null <<'SQL'
-- the loop's own count (the sync trigger fills b on the workload's writes too)
CREATE TABLE IF NOT EXISTS bench_paced_progress (tbl text PRIMARY KEY, rows_done bigint NOT NULL);
CREATE OR REPLACE PROCEDURE bench_paced_update(t regclass, rows_per_s int, pages int) LANGUAGE plpgsql AS $$
DECLARE
  n bigint := pg_relation_size(t) / 8192; s bigint := 0; done bigint := 0; k bigint; ahead float8;
  t0 timestamptz := clock_timestamp();
BEGIN
  WHILE s < n LOOP
    EXECUTE format('UPDATE %s SET b = a WHERE ctid >= $1 AND ctid < $2', t)
      USING format('(%s,0)', s)::tid, format('(%s,0)', least(s + pages, n))::tid;
    GET DIAGNOSTICS k = ROW_COUNT;
    done := done + k; s := s + pages;
    INSERT INTO bench_paced_progress VALUES (t::text, done) ON CONFLICT (tbl) DO UPDATE SET rows_done = excluded.rows_done;
    COMMIT;
    ahead := done::float8 / rows_per_s - extract(epoch FROM clock_timestamp() - t0);
    IF ahead > 0 THEN PERFORM pg_sleep(ahead); END IF;
  END LOOP;
END $$;
SQL
paced_run() { # kind round rows/s pages: the hand-written backfill during the half-load workload
  local t="live_$1_$2" start stop pid end="$BENCH_DIR/end-live_$1_$2.txt" log="$BENCH_DIR/paced-live_$1_$2.log"
  settle
  # zdm's sync trigger, as on zdm's runs: the loop differs from zdm's backfill only in its batches
  val "SELECT zdm.expand_rename('$t', 'a', 'b', background => false)" >/dev/null
  q -c "DELETE FROM bench_paced_progress WHERE tbl = '$t'" >/dev/null
  rm -f "$end"
  start=$(epoch)
  ( q -c "CALL bench_paced_update('$t', $(( ${3:-0} > 100 ? ${3:-0} : 100 )), ${4:-20})" >/dev/null 2>"$log"; epoch > "$end" ) &
  pid=$!
  workload "$t" "$t" "$RATE_LIMIT"
  stop=$(epoch)
  # a loop still running when pgbench stops is cancelled (its batches so far stay)
  cancel_paced
  wait "$pid" || true
  if grep -v "canceling statement due to user request" "$log" | grep -q ERROR; then cat "$log" >&2; exit 1; fi
  [ -s "$end" ] && stop=$(awk -v a="$stop" -v b="$(cat "$end")" 'BEGIN { print (a < b ? a : b) }')
  RATE[$1,$2]=$(awk -v n="$(val "SELECT coalesce((SELECT rows_done FROM bench_paced_progress WHERE tbl = '$t'), 0)")" -v a="$start" -v b="$stop" 'BEGIN { printf "%d", n / (b - a) }')
  read -r TPS[$1,$2] P99[$1,$2] < <(window_stats "$t" "$start" "$stop")
  SP99[$1,$2]=$(second_p99 "$t" "$start" "$stop")
}
cancel_paced() { val "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE 'CALL bench_paced_update%' AND pid <> pg_backend_pid()" >/dev/null 2>&1 || true; }
trap cancel_paced EXIT

declare -A TPS P99 SP99 BUSY RATE STATE ID
base_run() { # round
  settle
  workload live_base "live_base_$1"
  read -r TPS[base,$1] P99[base,$1] < <(window_stats "live_base_$1")
}
# The reference for half load: the same backfill on the idle server.
make_bench_table live_idle "$ROWS"
set_adaptive on
settle
ID[idle]=$(val "SELECT zdm.expand_rename('live_idle', 'a', 'b')")
val "SELECT zdm.wait(${ID[idle]}, '10 minutes')" >/dev/null 2>&1 || true
RATE[idle]=$(val "SELECT round(rows_done / greatest(extract(epoch FROM backfilled_at - backfill_started_at), 0.001))::bigint FROM zdm.migrations WHERE id = ${ID[idle]}")
base_run 1
for r in $(seq 1 "$ROUNDS"); do
  # "trigger": expanded, no backfill — what the sync trigger alone costs
  # the workload, which no throttle can take back.
  settle
  val "SELECT zdm.expand_rename('live_trigger_$r', 'a', 'b', background => false)" >/dev/null
  workload "live_trigger_$r"
  read -r TPS[trigger,$r] P99[trigger,$r] < <(window_stats "live_trigger_$r")
  for mode in fixed adaptive; do
    [ "$mode" = fixed ] && set_adaptive off || set_adaptive on
    settle
    t="live_${mode}_$r"
    ID[$mode,$r]=$(val "SELECT zdm.expand_rename('$t', 'a', 'b')")
    workload "$t"
    STATE[$mode,$r]=$(val "SELECT phase || ' ' || percent || '%' FROM zdm.status WHERE id = ${ID[$mode,$r]}")
    val "SELECT zdm.wait(${ID[$mode,$r]}, '10 minutes')" >/dev/null 2>&1 || true
    read -r from to BUSY[$mode,$r] < <(val "SELECT extract(epoch FROM backfill_started_at), extract(epoch FROM least(backfilled_at, clock_timestamp())), round(extract(epoch FROM backfilled_at - backfill_started_at)::numeric, 1) FROM zdm.migrations WHERE id = ${ID[$mode,$r]}" | tr '|' ' ')
    read -r TPS[$mode,$r] P99[$mode,$r] < <(window_stats "$t" "$from" "$to")
    RATE[$mode,$r]=$(val "SELECT round(rows_done / greatest(extract(epoch FROM backfilled_at - backfill_started_at), 0.001))::bigint FROM zdm.migrations WHERE id = ${ID[$mode,$r]}")
  done
  set_adaptive on
  base_run $((r + 1))
  # Half load: the same workload at half of round 1's saturated TPS, alone
  # (latency includes pgbench's schedule lag) and during an adaptive backfill.
  RATE_LIMIT=$(( TPS[base,1] / 2 ))
  settle
  workload live_base "live_rbase_$r" "$RATE_LIMIT"
  read -r TPS[rbase,$r] P99[rbase,$r] < <(window_stats "live_rbase_$r")
  SP99[rbase,$r]=$(second_p99 "live_rbase_$r")
  zdm_run "rate,$r" "live_rate_$r"
  zdm_run "capped,$r" "live_capped_$r" "max_rows_per_second => $(( ${RATE[idle]:-0} / 10 > 1 ? ${RATE[idle]:-0} / 10 : 1 ))"
  # By hand, in batches of zdm's average size in this run, at zdm's speed
  # and at a tenth of its idle-server speed.
  pages=$(val "SELECT coalesce(greatest(1, round(avg(blocks)))::int, 20) FROM zdm.batches WHERE migration_id = ${ID[rate,$r]}")
  paced_run paced "$r" "${RATE[rate,$r]:-0}" "$pages"
  paced_run tenth "$r" "$(( ${RATE[idle]:-0} / 10 ))" "$pages"
done
defaults=$(val "SELECT format('batch %s adaptive to %s ms, %s ms pause', batch_size, target_batch_ms, pause_ms) FROM zdm.jobs WHERE migration_id = ${ID[adaptive,1]}")
ids=$(for r in $(seq 1 "$ROUNDS"); do printf '%s,' "${ID[adaptive,$r]}"; done)
# why batches waited, by kind (figures left out: every pause differs)
why() { val "SELECT string_agg(r || ' ×' || n, '; ' ORDER BY n DESC) FROM (SELECT regexp_replace(wait_reason, '[0-9][0-9.]*', 'N', 'g') AS r, count(*) AS n FROM zdm.batches WHERE migration_id IN ($1) AND wait_reason IS NOT NULL GROUP BY 1) x"; }
reasons=$(why "${ids%,}")

echo "### Live workload during a background backfill of $ROWS rows ($(machine))"
echo
echo "pgbench: 4 clients, ${SECS}s per run, TPC-B-like (scale $SCALE) + single-row UPDATE/SELECT on the migrating table. The backfill runs at default settings ($defaults); figures \"during\" count only transactions that ended while it ran. $ROUNDS rounds; each run with a migration is compared with the mean of the runs without one just before and after it."
echo
echo "| round | run | TPS | p99 latency ms | vs no migration (mean of the runs before and after) | backfill | backfill rows/s |"
echo "|---|---|---:|---:|---|---|---:|"
declare -A RT RP
RI=""
for r in $(seq 1 "$ROUNDS"); do
  echo "| $r | no migration | ${TPS[base,$r]} | ${P99[base,$r]} | | | |"
  ref_tps=$(( (TPS[base,$r] + TPS[base,$((r + 1))]) / 2 ))
  ref_p99=$(awk -v a="${P99[base,$r]}" -v b="${P99[base,$((r + 1))]}" 'BEGIN { printf "%.1f", (a + b) / 2 }')
  RT[trigger]+="$(ratio "${TPS[trigger,$r]}" "$ref_tps") "; RP[trigger]+="$(ratio "${P99[trigger,$r]}" "$ref_p99") "
  echo "| $r | sync trigger only (expanded, no backfill) | ${TPS[trigger,$r]} | ${P99[trigger,$r]} | $(ratio "${TPS[trigger,$r]}" "$ref_tps")× TPS, $(ratio "${P99[trigger,$r]}" "$ref_p99")× p99 | | |"
  for mode in fixed adaptive; do
    RT[$mode]+="$(ratio "${TPS[$mode,$r]}" "$ref_tps") "; RP[$mode]+="$(ratio "${P99[$mode,$r]}" "$ref_p99") "
    echo "| $r | $mode throttle | ${TPS[$mode,$r]} | ${P99[$mode,$r]} | $(ratio "${TPS[$mode,$r]}" "$ref_tps")× TPS, $(ratio "${P99[$mode,$r]}" "$ref_p99")× p99 | ${BUSY[$mode,$r]}s (${STATE[$mode,$r]} when pgbench stopped) | ${RATE[$mode,$r]} |"
  done
done
echo "| $((ROUNDS + 1)) | no migration | ${TPS[base,$((ROUNDS + 1))]} | ${P99[base,$((ROUNDS + 1))]} | | | |"
echo
echo "Adaptive throttle, why batches waited: ${reasons:-no adjustment}."
echo
med_span() { # label; ratios on stdin → "median× label (lowest–highest)"
  local v; v=$(tr ' ' '\n' | grep .)
  echo "$(echo "$v" | median)× $1 ($(echo "$v" | span))"
}
summary() { echo "$(med_span TPS <<< "${RT[$1]}"), $(med_span p99 <<< "${RP[$1]}")"; } # mode
echo "Sync trigger alone (expanded, no backfill), median of $ROUNDS rounds (range): $(summary trigger)."
echo
echo "live workload during backfill, median of $ROUNDS rounds (range): adaptive (the default) $(summary adaptive); fixed $(summary fixed)"
echo
echo "#### Half load: pgbench -R $RATE_LIMIT (half of round 1's saturated TPS)"
echo
echo "The same workload rate-limited; its latency counts from each transaction's scheduled start (pgbench -R), so a stall delays the transactions queued behind it too. The backfill's speed is its rows/s while pgbench ran, against the same backfill on the idle server: ${RATE[idle]} rows/s."
echo
echo "| round | run | TPS | p99 ms | per-second p99 ms (median) | vs no migration | backfill | backfill rows/s while pgbench ran | vs idle server |"
echo "|---|---|---:|---:|---:|---|---|---:|---:|"
declare -A RS
declare -A label=([rate]="zdm, adaptive throttle" [capped]="zdm, capped at a tenth of its idle speed (max_rows_per_second)" [paced]="by hand, paced to zdm's speed" [tenth]="by hand, paced to a tenth of zdm's idle speed")
for r in $(seq 1 "$ROUNDS"); do
  echo "| $r | no migration | ${TPS[rbase,$r]} | ${P99[rbase,$r]} | ${SP99[rbase,$r]} | | | | |"
  RI+="$(ratio "${RATE[rate,$r]}" "${RATE[idle]}") "
  for k in rate capped paced tenth; do
    RT[$k]+="$(ratio "${TPS[$k,$r]}" "${TPS[rbase,$r]}") "; RP[$k]+="$(ratio "${P99[$k,$r]}" "${P99[rbase,$r]}") "
    RS[$k]+="$(ratio "${SP99[$k,$r]}" "${SP99[rbase,$r]}") "
    what=""; [ -n "${BUSY[$k,$r]:-}" ] && what="${BUSY[$k,$r]}s (${STATE[$k,$r]} when pgbench stopped)"
    echo "| $r | ${label[$k]} | ${TPS[$k,$r]} | ${P99[$k,$r]} | ${SP99[$k,$r]} | $(ratio "${TPS[$k,$r]}" "${TPS[rbase,$r]}")× TPS, $(ratio "${P99[$k,$r]}" "${P99[rbase,$r]}")× p99, $(ratio "${SP99[$k,$r]}" "${SP99[rbase,$r]}")× per-second p99 | $what | ${RATE[$k,$r]} | $(ratio "${RATE[$k,$r]}" "${RATE[idle]}")× |"
  done
done
rids=$(for r in $(seq 1 "$ROUNDS"); do printf '%s,' "${ID[rate,$r]}"; done)
rshape=$(val "SELECT format('%s rows in %s ms, %s ms waited', round(avg(rows)), round(avg(duration_ms)::numeric, 1), round(avg(wait_ms)::numeric, 1)) FROM zdm.batches WHERE migration_id IN (${rids%,})")
echo
echo "Batches at half load, on average: $rshape. Why they waited: $(why "${rids%,}")."
echo
sp() { med_span "per-second p99" <<< "${RS[$1]}"; } # mode
echo "half load, median of $ROUNDS rounds (range): backfill $(med_span "its idle-server speed" <<< "$RI"); workload $(summary rate), $(sp rate)"
echo
echo "half load, zdm capped at a tenth of its idle speed (max_rows_per_second): workload $(summary capped), $(sp capped)"
echo
echo "half load, by hand at zdm's speed: workload $(summary paced), $(sp paced); by hand at a tenth of zdm's idle speed: $(summary tenth), $(sp tenth)"

# The picture: TPS and p99 per second of the three runs laid end to end, and
# each backfill's rows/s on a second axis.
PLOT="${ZDM_LIVE_PLOT:-$ROOT/bench/results/live.png}"
command -v gnuplot >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null 2>&1 || true
if command -v gnuplot >/dev/null; then
  first_t() { cat "$BENCH_DIR/$1".[0-9]* | awk '{ t = $5 + $6 / 1e6; if (m == "" || t < m) m = t } END { printf "%.3f", m }'; }
  per_second() { # log prefix, offset seconds → "t tps p99_ms" per second
    seconds "$1" 0 0 "$(first_t "$1")" | awk -v off="$2" '{ print $1 + off, $2, $3 }'
  }
  rows_per_second() { # mode, offset
    local t0; t0=$(first_t "live_$1_1")
    val "SELECT extract(epoch FROM at) - $t0 + $2, rows FROM zdm.batches WHERE migration_id = ${ID[$1,1]} ORDER BY at" | tr '|' ' ' \
      | awk '{ s = int($1); r[s] += $2; if (s > mx) mx = s; if (mn == "" || s < mn) mn = s } END { if (mn != "") for (s = mn; s <= mx; s++) print s, r[s] + 0 }'
  }
  gap=$((SECS + 2))
  axes() { # both plots: TPS and p99 on the left, rows/s on the right, a line where each run begins
    cat <<GP
set xlabel "seconds"
set ylabel "TPS; p99 latency (ms) x100"
set y2label "backfill rows/s"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set key outside bottom center horizontal
set style data lines
set arrow from $((gap - 1)), graph 0 to $((gap - 1)), graph 1 nohead dt 2
GP
  }
  per_second live_base_1 0 > "$BENCH_DIR/plot-base.dat"
  per_second live_fixed_1 "$gap" > "$BENCH_DIR/plot-fixed.dat"
  per_second live_adaptive_1 "$((2 * gap))" > "$BENCH_DIR/plot-adaptive.dat"
  { rows_per_second fixed "$gap"; echo; echo; rows_per_second adaptive "$((2 * gap))"; } > "$BENCH_DIR/plot-rows.dat"
  mkdir -p "$(dirname "$PLOT")"
  gnuplot <<GP
set terminal pngcairo size 1200,560 font ",10"
set output "$PLOT"
set title "pgbench (4 clients, 2 cores): no migration | zdm backfill of $ROWS rows, fixed throttle | same, adaptive throttle (default)"
$(axes)
set arrow from $((2 * gap - 1)), graph 0 to $((2 * gap - 1)), graph 1 nohead dt 2
plot "$BENCH_DIR/plot-base.dat" using 1:2 title "TPS" lw 2 lc rgb "#1f77b4", \
     "$BENCH_DIR/plot-fixed.dat" using 1:2 notitle lw 2 lc rgb "#1f77b4", \
     "$BENCH_DIR/plot-adaptive.dat" using 1:2 notitle lw 2 lc rgb "#1f77b4", \
     "$BENCH_DIR/plot-base.dat" using 1:(\$3*100) title "p99 ms x100" lc rgb "#ff7f0e", \
     "$BENCH_DIR/plot-fixed.dat" using 1:(\$3*100) notitle lc rgb "#ff7f0e", \
     "$BENCH_DIR/plot-adaptive.dat" using 1:(\$3*100) notitle lc rgb "#ff7f0e", \
     "$BENCH_DIR/plot-rows.dat" index 0 using 1:2 axes x1y2 title "backfill rows/s" with steps lw 2 lc rgb "#d62728", \
     "$BENCH_DIR/plot-rows.dat" index 1 using 1:2 axes x1y2 notitle with steps lw 2 lc rgb "#d62728"
GP
  # Half load, round 1: no migration | adaptive backfill.
  per_second live_rbase_1 0 > "$BENCH_DIR/plot-rbase.dat"
  per_second live_rate_1 "$gap" > "$BENCH_DIR/plot-rate.dat"
  rows_per_second rate "$gap" > "$BENCH_DIR/plot-rrows.dat"
  gnuplot <<GP
set terminal pngcairo size 1000,520 font ",10"
set output "$(dirname "$PLOT")/live_rate.png"
set title "pgbench -R $RATE_LIMIT (half load, $(nproc) cores): no migration | zdm backfill of $ROWS rows, adaptive throttle; idle-server backfill ${RATE[idle]} rows/s"
$(axes)
plot "$BENCH_DIR/plot-rbase.dat" using 1:2 title "TPS" lw 2 lc rgb "#1f77b4", \
     "$BENCH_DIR/plot-rate.dat" using 1:2 notitle lw 2 lc rgb "#1f77b4", \
     "$BENCH_DIR/plot-rbase.dat" using 1:(\$3*100) title "p99 ms x100" lc rgb "#ff7f0e", \
     "$BENCH_DIR/plot-rate.dat" using 1:(\$3*100) notitle lc rgb "#ff7f0e", \
     "$BENCH_DIR/plot-rrows.dat" using 1:2 axes x1y2 title "backfill rows/s" with steps lw 2 lc rgb "#d62728", \
     $((RATE[idle])) axes x1y2 title "idle-server backfill rows/s" dt 3 lc rgb "#d62728"
GP
  echo
  echo "Plot: [live.png](live.png) — round 1: TPS and p99 per second, each backfill's rows/s on the right axis (written to bench/results/live.png; \`bench/run full\` copies it to bench/live.png). Half load: [live_rate.png](live_rate.png), round 1 (bench/results/live_rate.png, copied likewise)."
fi
