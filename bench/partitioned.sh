#!/usr/bin/env bash
# Partitioned tables, side by side on one cluster, each method on a fresh
# copy of the same range-partitioned table (PARTS leaves):
#   backfill of a new column b from a:
#     update     a single UPDATE pt SET b = a through the parent (the physical limit)
#     zdm-x1     zdm background worker, one range per leaf, throttling off
#     zdm-x2     the same job with workers => 2 (leaves spread across two processes)
#   an index on a, which PostgreSQL cannot build CONCURRENTLY on a partitioned table:
#     manual     what a careful DBA types: CREATE INDEX … ON ONLY pt, then per leaf
#                CREATE INDEX CONCURRENTLY + ALTER INDEX … ATTACH PARTITION
#     zdm        zdm.create_index('CREATE INDEX … ON pt (a)'): the same procedure in a worker
#     blocking   CREATE INDEX ON pt (a): one statement, writers blocked throughout (reference)
#   contract on a tree of CONTRACT_PARTS leaves: how long its ACCESS EXCLUSIVE is held.
# Usage: bench/partitioned.sh ROWS PARTS [CONTRACT_PARTS]
source "$(dirname "$0")/lib.sh"
ROWS="${1:-10000000}"
PARTS="${2:-20}"
CONTRACT_PARTS="${3:-50}"
bench_cluster

make_tree() { # name rows parts
  local t=$1 rows=$2 parts=$3 per sql i
  per=$(( (rows + parts - 1) / parts ))
  drop_bench_table "$t"
  sql="CREATE TABLE $t (id bigint NOT NULL, a text, pad text) PARTITION BY RANGE (id);"
  for ((i = 0; i < parts; i++)); do
    sql+="CREATE TABLE ${t}_$i PARTITION OF $t FOR VALUES FROM ($(( i * per + 1 ))) TO ($(( (i + 1) * per + 1 )));"
  done
  q -c "$sql"
  q -c "INSERT INTO $t SELECT g, 'orig-' || g, repeat('x', 40) FROM generate_series(1, $rows) g"
  q -c "VACUUM ANALYZE $t"
}

declare -A MS
q -c "ALTER SYSTEM SET zdm.adaptive_throttle = off" -c "SELECT pg_reload_conf()" >/dev/null
for m in update zdm-x1 zdm-x2; do
  make_tree pt "$ROWS" "$PARTS"
  case $m in
    update) q -c "ALTER TABLE pt ADD COLUMN b text" ;;
    zdm-*)  ID=$(val "SELECT zdm.expand_rename('pt', 'a', 'b', background => false)") ;;
  esac
  start=$(now_ms)
  case $m in
    update) q -c "UPDATE pt SET b = a" ;;
    zdm-*)
      q -c "SELECT zdm.start_backfill($ID, batch_size => 20000, pause_ms => 0, target_batch_ms => 0, max_replica_lag => '0', workers => ${m#zdm-x})" >/dev/null
      q -c "SET client_min_messages = warning" -c "SELECT zdm.wait($ID, '30 minutes')" >/dev/null ;;
  esac
  MS[$m]=$(( $(now_ms) - start ))
  done_rows=$(val "SELECT count(*) FROM pt WHERE b IS NOT DISTINCT FROM a")
  [ "$done_rows" = "$ROWS" ] || { echo "$m: only $done_rows of $ROWS rows filled" >&2; exit 1; }
done
q -c "ALTER SYSTEM RESET zdm.adaptive_throttle" -c "SELECT pg_reload_conf()" >/dev/null

# Indexes on the last table (its rows backfilled; the migration aborted so the
# index is on a plain column).
q -c "SELECT zdm.abort(id) FROM zdm.migrations WHERE relid = 'pt'::regclass AND phase = 'backfilled'" >/dev/null
for m in manual zdm blocking; do
  q -c "DROP INDEX IF EXISTS pt_a_idx"
  start=$(now_ms)
  case $m in
    manual)
      q -c "CREATE INDEX pt_a_idx ON ONLY pt (a)"
      for leaf in $(val "SELECT relid::regclass FROM pg_partition_tree('pt') WHERE isleaf ORDER BY 1"); do
        q -c "CREATE INDEX CONCURRENTLY ${leaf}_a_idx ON $leaf (a)"
        q -c "ALTER INDEX pt_a_idx ATTACH PARTITION ${leaf}_a_idx"
      done ;;
    zdm)
      IDX=$(val "SELECT zdm.create_index('CREATE INDEX pt_a_idx ON pt (a)')" 2>/dev/null)
      q -c "SET client_min_messages = warning" -c "SELECT zdm.wait($IDX, '30 minutes')" >/dev/null ;;
    blocking) q -c "CREATE INDEX pt_a_idx ON pt (a)" ;;
  esac
  MS[idx-$m]=$(( $(now_ms) - start ))
  [ "$(val "SELECT indisvalid FROM pg_index WHERE indexrelid = 'pt_a_idx'::regclass")" = t ] || { echo "index $m not valid" >&2; exit 1; }
done
drop_bench_table pt

# Contract on a tree of CONTRACT_PARTS leaves.
make_tree pc $(( CONTRACT_PARTS * 10000 )) "$CONTRACT_PARTS"
ID=$(val "SELECT zdm.expand_rename('pc', 'a', 'b', background => false)")
q -c "SELECT zdm.start_backfill($ID, pause_ms => 0)" >/dev/null
q -c "SET client_min_messages = warning" -c "SELECT zdm.wait($ID, '10 minutes')" >/dev/null
q -c "SELECT zdm.contract($ID)" >/dev/null
held=$(val "SELECT substring(detail from 'ACCESS EXCLUSIVE held ([0-9.]+) ms') FROM zdm.events WHERE migration_id = $ID AND step = 'contract'")
verify=$(val "SELECT round(duration_ms) FROM zdm.events WHERE migration_id = $ID AND step = 'contract: verify'")
drop_bench_table pc

s() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
base=$(rate "$ROWS" "${MS[update]}")
echo "### Partitioned table: $ROWS rows in $PARTS partitions ($(machine))"
echo
echo "| backfill | time s | rows/s | vs single UPDATE |"
echo "|---|---:|---:|---:|"
for m in update zdm-x1 zdm-x2; do
  r=$(rate "$ROWS" "${MS[$m]}")
  echo "| $m | $(s "${MS[$m]}") | $r | $(ratio "$r" "$base")× |"
done
echo
echo "| index on a | time s | vs manual | writers |"
echo "|---|---:|---:|---|"
for m in manual zdm blocking; do
  w="never blocked by the builds"; [ "$m" = blocking ] && w="blocked throughout"
  echo "| $m | $(s "${MS[idx-$m]}") | $(ratio "${MS[idx-$m]}" "${MS[idx-manual]}")× | $w |"
done
echo
echo "contract on $CONTRACT_PARTS partitions ($(( CONTRACT_PARTS * 10000 )) rows): ACCESS EXCLUSIVE on the tree held ${held} ms (the verify scan before it, under SHARE UPDATE EXCLUSIVE: ${verify} ms)"
echo
echo "partitioned $ROWS rows / $PARTS partitions: zdm backfill = $(ratio "$(rate "$ROWS" "${MS[zdm-x1]}")" "$base")× the single UPDATE with 1 worker, $(ratio "$(rate "$ROWS" "${MS[zdm-x2]}")" "$base")× with 2; zdm.create_index = $(ratio "${MS[idx-zdm]}" "${MS[idx-manual]}")× the manual procedure's time"
