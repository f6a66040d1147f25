#!/usr/bin/env bash
# Impact on a live workload: pgbench's TPC-B-like transactions on its own
# tables plus single-row reads and writes on the table being migrated, once
# without a migration and once while zdm renames a column of that table with
# a background backfill at DEFAULT throttling. Reports TPS and p99 latency.
# Targets: ≥ 90% of the TPS, p99 at most 2×.
# Usage: bench/live.sh ROWS SECONDS
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
SECS="${2:-20}"
bench_cluster

SCALE=$(( ROWS >= 1000000 ? 10 : 2 ))
"$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -i -q -s "$SCALE" "$DB" >/dev/null 2>&1
make_bench_table live_t "$ROWS"
cat > "$BENCH_DIR/mig.sql" <<SQL
\set id random(1, $ROWS)
UPDATE live_t SET qty = qty + 1 WHERE id = :id;
SELECT a FROM live_t WHERE id = :id;
SQL

workload() { # log prefix; runs pgbench, leaves the per-transaction log
  rm -f "$BENCH_DIR/$1".*
  (cd "$BENCH_DIR" && "$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 4 -j 2 -T "$SECS" \
     -b tpcb-like@1 -f mig.sql@1 --log --log-prefix="$1" "$DB" >/dev/null 2>&1)
}
q -c "CHECKPOINT"
workload log_base
read -r base_tps base_p99 < <(window_stats log_base)
q -c "CHECKPOINT"
ID=$(val "SELECT zdm.expand_rename('live_t', 'a', 'b')")
workload log_mig
state=$(val "SELECT phase || ' ' || percent || '%' FROM zdm.status WHERE id = $ID")
val "SELECT zdm.wait($ID, '10 minutes')" >/dev/null 2>&1 || true
read -r from to busy < <(val "SELECT extract(epoch FROM backfill_started_at), extract(epoch FROM least(backfilled_at, clock_timestamp())), round(extract(epoch FROM backfilled_at - backfill_started_at)::numeric, 1) FROM zdm.migrations WHERE id = $ID" | tr '|' ' ')
read -r mig_tps mig_p99 < <(window_stats log_mig "$from" "$to")
defaults=$(val "SELECT format('batch %s adaptive to %s ms, %s ms pause', batch_size, target_batch_ms, pause_ms) FROM zdm.jobs WHERE migration_id = $ID")

echo "### Live workload during a background backfill of $ROWS rows ($(machine))"
echo
echo "pgbench: 4 clients, ${SECS}s, TPC-B-like (scale $SCALE) + single-row UPDATE/SELECT on the migrating table. The backfill runs at default throttling ($defaults); figures \"during\" count only transactions that ended while it ran (${busy}s)."
echo
echo "| | TPS | p99 latency ms |"
echo "|---|---:|---:|"
echo "| no migration | $base_tps | $base_p99 |"
echo "| during zdm backfill | $mig_tps | $mig_p99 |"
echo "| ratio | $(ratio "$mig_tps" "$base_tps")× | $(ratio "$mig_p99" "$base_p99")× |"
echo
echo "When pgbench stopped the migration was: $state."
echo
echo "live workload during backfill: $(ratio "$mig_tps" "$base_tps")× TPS, $(ratio "$mig_p99" "$base_p99")× p99"
