#!/usr/bin/env bash
# int → bigint on a serial primary key, with single-row writes (updates and
# inserts taking new ids) throughout: zdm end to end (expand → background
# backfill at default throttling → concurrent build of the new key's index →
# contract) against ALTER TABLE … ALTER COLUMN id TYPE bigint, which rewrites
# the table and its indexes under ACCESS EXCLUSIVE. Reports wall time, how
# long the table was locked against writes, and the writers' worst latency.
# Usage: bench/change_type.sh ROWS
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
bench_cluster

make_table() {
  drop_bench_table ct
  q <<SQL
CREATE TABLE ct (id serial PRIMARY KEY, a text, qty int, pad text);
INSERT INTO ct (a, qty, pad) SELECT 'customer-' || g, g % 100, repeat('x', 40) FROM generate_series(1, $ROWS) g;
SQL
  q -c "VACUUM ANALYZE ct" -c "CHECKPOINT"
}
printf '\\set id random(1, %s)\nUPDATE ct SET qty = qty + 1 WHERE id = :id;\nINSERT INTO ct (a, qty, pad) VALUES (:id, 1, :id);\n' "$ROWS" > "$BENCH_DIR/ct.sql"
worst() { cat "$BENCH_DIR/$1".* | awk '$3 > m { m = $3 } END { printf "%.0f", m / 1000 }'; }

# ALTER TABLE: the whole rewrite holds ACCESS EXCLUSIVE.
make_table
writers log_alter ct.sql 500
t0=$(epoch); q -c "ALTER TABLE ct ALTER COLUMN id TYPE bigint"; t1=$(epoch)
stop_writers
alter_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
read -r _ alter_p99 < <(window_stats log_alter "$t0" "$t1")
alter_worst=$(worst log_alter)

# zdm: expand and contract hold ACCESS EXCLUSIVE briefly; the rest runs beside the writers.
make_table
writers log_zdm ct.sql 500
t2=$(epoch)
ID=$(val "SELECT zdm.expand_change_type('ct', 'id', 'bigint')")
val "SELECT zdm.wait($ID, '60 minutes')" >/dev/null 2>&1
val "SELECT zdm.contract($ID)" >/dev/null
t3=$(epoch)
stop_writers
total_s=$(awk -v a="$t2" -v b="$t3" 'BEGIN { printf "%.1f", b - a }')
read -r _ zdm_p99 < <(window_stats log_zdm "$t2" "$t3")
zdm_worst=$(worst log_zdm)
read -r expand_ms contract_ms bf_s < <(val "SELECT
    (SELECT round((duration_ms - coalesce(lock_wait_ms, 0))::numeric, 1) FROM zdm.events WHERE migration_id = $ID AND step = 'expand'),
    (SELECT substring(detail FROM 'held ([0-9.]+) ms') FROM zdm.events WHERE migration_id = $ID AND step = 'contract'),
    round(extract(epoch FROM backfilled_at - backfill_started_at)::numeric, 1)
  FROM zdm.migrations WHERE id = $ID" | tr '|' ' ')
type=$(val "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'ct'::regclass AND attname = 'id'")
drop_bench_table ct

echo "### int → bigint on a serial primary key: $ROWS rows ($(machine))"
echo
echo "4 clients update and insert single rows throughout (pgbench, 500 tx/s, new ids from the sequence)."
echo
echo "| | wall time s | table locked against writes | writers' p99 ms | writers' worst ms |"
echo "|---|---:|---:|---:|---:|"
echo "| ALTER TABLE … TYPE bigint | $alter_s | ${alter_s} s (the whole rewrite) | $alter_p99 | $alter_worst |"
echo "| zdm (expand → backfill ${bf_s}s → key index build → contract) | $total_s | ${expand_ms} ms at expand + ${contract_ms} ms at contract | $zdm_p99 | $zdm_worst |"
echo
echo "id is now $type."
echo
echo "int → bigint: ALTER TABLE locks writes for ${alter_s}s (worst write ${alter_worst} ms); zdm for ${expand_ms} + ${contract_ms} ms (worst write ${zdm_worst} ms), ${total_s}s end to end"
