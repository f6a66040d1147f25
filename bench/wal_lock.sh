#!/usr/bin/env bash
# Where the backfill's extra WAL comes from (issue 12, item 4): the same
# UPDATE of 100,000 rows on identical tables — without a trigger, with a
# BEFORE UPDATE ROW trigger (PostgreSQL's own C no-op-like
# suppress_redundant_updates_trigger), with that trigger DISABLED, and with
# it enabled but session_replication_role = replica (so it does not fire).
# Reports WAL bytes and the Heap/LOCK records pg_waldump counts.
# Usage: bench/wal_lock.sh [ROWS]
source "$(dirname "$0")/lib.sh"
ROWS="${1:-100000}"
bench_cluster
run() { # label setup-sql update-sql
  drop_bench_table wl
  q -c "CREATE TABLE wl (id bigint PRIMARY KEY, a text, b text)" \
    -c "INSERT INTO wl SELECT g, 'customer-' || g || '@example.com', NULL FROM generate_series(1, $ROWS) g" \
    -c "VACUUM ANALYZE wl" ${2:+-c "$2"} -c CHECKPOINT
  local start end
  start=$(lsn); q -c "$3"; end=$(lsn)
  local locks
  locks=$(as_pg "$BIN/pg_waldump" -p "$BENCH_DIR/data/pg_wal" -s "$start" -e "$end" --stats=record 2>/dev/null \
          | awk '$1 == "Heap/LOCK" { print $2 }')
  printf '| %s | %s | %s |\n' "$1" "$(mb "$(wal_since "$start")") MB" "${locks:-0}"
}
TRG="CREATE TRIGGER s BEFORE UPDATE ON wl FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
echo "UPDATE wl SET b = a on $ROWS rows ($(machine)):"
echo
echo "| table | WAL | Heap/LOCK records |"
echo "|---|---:|---:|"
run "no trigger" "" "UPDATE wl SET b = a"
run "BEFORE UPDATE ROW trigger" "$TRG" "UPDATE wl SET b = a"
run "the same trigger, DISABLED" "$TRG; ALTER TABLE wl DISABLE TRIGGER s" "UPDATE wl SET b = a"
run "enabled, session_replication_role = replica" "$TRG" "SET session_replication_role = replica; UPDATE wl SET b = a"
drop_bench_table wl
