#!/usr/bin/env bash
# Side by side: the rename sync trigger vs the type change convert trigger
# (text -> varchar, a plain cast), 7 interleaved rounds of 500k-row bulk
# INSERT and UPDATE on a fresh table each. Prints "variant insert_ms update_ms".
source "$(dirname "$0")/lib.sh"
bench_cluster
fresh() {
  drop_bench_table trg >/dev/null 2>&1
  q -c "CREATE TABLE trg (id bigserial PRIMARY KEY, a text, qty int, pad text)" >/dev/null
  if [ "$1" = zdm ]; then val "SELECT zdm.expand_rename('trg', 'a', 'b', background => false)" >/dev/null
  else val "SELECT zdm.expand_change_type('trg', 'a', 'varchar', background => false)" >/dev/null; fi
}
timed() { q -c CHECKPOINT; local s; s=$(now_ms); q -c "$1"; echo $(( $(now_ms) - s )); }
for r in 1 2 3 4 5 6 7; do
  for v in zdm ct; do
    fresh $v
    i=$(timed "INSERT INTO trg (a, qty, pad) SELECT 'c-' || g || '@example.com', g % 100, repeat('x', 40) FROM generate_series(1, 500000) g")
    q -c "VACUUM ANALYZE trg" >/dev/null
    u=$(timed "UPDATE trg SET a = a || '.'")
    echo "$v $i $u"
  done
done
