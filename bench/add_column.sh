#!/usr/bin/env bash
# zdm.add_column and zdm.update_in_batches against what a user would write.
#   1. A NOT NULL uuid column with a volatile default on ROWS rows:
#      ALTER TABLE … ADD COLUMN … DEFAULT gen_random_uuid() (a rewrite of the
#      table under ACCESS EXCLUSIVE), ADD COLUMN then one UPDATE (every row
#      locked by one long transaction), and zdm.add_column (expand, background
#      backfill, contract): wall time and how long ACCESS EXCLUSIVE was held.
#   2. A data migration (lower() of a text column) on ROWS rows: one UPDATE,
#      the hand-written DO loop of id-range batches committing each, and
#      zdm.update_in_batches (pause_ms => 0, workers 1).
# Usage: bench/add_column.sh ROWS
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
bench_cluster

make_table() {
  drop_bench_table ac
  q <<SQL
CREATE TABLE ac (id bigint PRIMARY KEY, a text, qty int, pad text);
INSERT INTO ac SELECT g, 'Customer-' || g, g % 100, repeat('x', 40) FROM generate_series(1, $ROWS) g;
SQL
  q -c "VACUUM ANALYZE ac" -c "CHECKPOINT"
}
ms_of() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

make_table
t0=$(epoch); q -c "ALTER TABLE ac ADD COLUMN u uuid NOT NULL DEFAULT gen_random_uuid()"; t1=$(epoch)
alter_ms=$(ms_of "$t0" "$t1")

make_table
t0=$(epoch); q -c "ALTER TABLE ac ADD COLUMN u uuid" -c "UPDATE ac SET u = gen_random_uuid()"; t1=$(epoch)
update_ms=$(ms_of "$t0" "$t1")

make_table
t0=$(epoch)
ID=$(val "SELECT zdm.add_column('ac', 'u', 'uuid', default_expr => 'gen_random_uuid()', not_null => true)")
val "SELECT zdm.set_options($ID, pause_ms => 0)" >/dev/null
val "SELECT zdm.wait($ID, '60 minutes')" >/dev/null 2>&1
val "SELECT zdm.contract($ID)" >/dev/null
t1=$(epoch)
zdm_ms=$(ms_of "$t0" "$t1")
expand_lock=$(val "SELECT round((duration_ms - coalesce(lock_wait_ms, 0))::numeric, 1) FROM zdm.events WHERE migration_id = $ID AND step = 'expand'")
contract_lock=$(val "SELECT substring(detail from 'ACCESS EXCLUSIVE held ([0-9.]+) ms') FROM zdm.events WHERE migration_id = $ID AND step = 'contract'")
bad=$(val "SELECT count(*) FILTER (WHERE u IS NULL) + count(*) - count(DISTINCT u) FROM ac")

echo "### add_column with a volatile default, $ROWS rows"
echo
echo "| method | wall ms | ACCESS EXCLUSIVE held ms | vs ALTER |"
echo "|---|---:|---:|---:|"
echo "| ALTER TABLE ADD COLUMN … NOT NULL DEFAULT gen_random_uuid() (rewrite) | $alter_ms | $alter_ms | 1.00 |"
echo "| ADD COLUMN, then one UPDATE (every row locked until it ends) | $update_ms | ~0 | $(ratio "$update_ms" "$alter_ms") |"
echo "| zdm.add_column (expand + backfill pause_ms 0 + contract) | $zdm_ms | $expand_lock + $contract_lock | $(ratio "$zdm_ms" "$alter_ms") |"
echo
echo "zdm: rows without their own value afterwards: $bad."
echo

make_table
t0=$(epoch); q -c "UPDATE ac SET a = lower(a) WHERE a <> lower(a)"; t1=$(epoch)
plain_ms=$(ms_of "$t0" "$t1")

make_table
t0=$(epoch)
q <<SQL
DO \$\$
DECLARE lo bigint := 0; hi bigint := (SELECT max(id) FROM ac);
BEGIN
  WHILE lo <= hi LOOP
    UPDATE ac SET a = lower(a) WHERE id > lo AND id <= lo + 2000 AND a <> lower(a);
    lo := lo + 2000;
    COMMIT;
  END LOOP;
END \$\$;
SQL
t1=$(epoch)
loop_ms=$(ms_of "$t0" "$t1")

make_table
t0=$(epoch)
ID=$(val "SELECT zdm.update_in_batches('ac', 'a = lower(a)', 'a <> lower(a)', pause_ms => 0)")
val "SELECT zdm.wait($ID, '60 minutes')" >/dev/null 2>&1
t1=$(epoch)
upd_ms=$(ms_of "$t0" "$t1")
left=$(val "SELECT count(*) FROM ac WHERE a <> lower(a)")

echo "### update_in_batches, $ROWS rows"
echo
echo "| method | wall ms | vs one UPDATE |"
echo "|---|---:|---:|"
echo "| one UPDATE | $plain_ms | 1.00 |"
echo "| DO loop, id ranges of 2000, COMMIT each | $loop_ms | $(ratio "$loop_ms" "$plain_ms") |"
echo "| zdm.update_in_batches (pause_ms 0, 1 worker) | $upd_ms | $(ratio "$upd_ms" "$plain_ms") |"
echo
echo "zdm: rows left unconverted: $left."
