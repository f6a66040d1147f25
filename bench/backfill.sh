#!/usr/bin/env bash
# Backfill throughput, side by side on one cluster, each method on a fresh
# copy of the same table: copy column a into a new column b for every row.
#   update      a single UPDATE t SET b = a (the physical limit)
#   update-x2   two sessions at once, each one UPDATE of half the heap by TID range
#               (what two processes can do here at all: the ceiling for workers => 2)
#   update-trigger  the single UPDATE with a do-nothing C BEFORE ROW trigger (what any
#               such trigger costs: PostgreSQL locks each row before calling it)
#   update-x2-trigger  update-x2 with that trigger: the ceiling for workers => 2 of
#               anything that keeps a trigger on the table
#   update-batched  the UPDATE in TID ranges of zdm's batch size (20000 rows' blocks),
#               a COMMIT after each, no trigger
#   zdm-bg      zdm background worker, throttling off
#   zdm-bg-x2   the same job with workers => 2 (two processes on disjoint block ranges)
#   zdm-bg-x4   workers => 4
#   zdm-client  a client loop of zdm.backfill_batch (a procedure that COMMITs per call)
#   plpgsql     the common hand-written DO loop: 1000-row id ranges, COMMIT, 10 ms sleep
#   ctid-limit  UPDATE … WHERE ctid IN (SELECT ctid … WHERE b IS NULL LIMIT 1000), COMMIT, repeat
#   reshape-copy    Reshape 0.11 alter_column that also restates the type: Reshape backfills a
#                   new column in 1000-row primary-key batches (if reshape is installed)
#   reshape-rename  Reshape's own rename: views per schema version, no data copied at all
#                   (the application must select Reshape's schema); for reference
# Reports rows/s, ratio to the single UPDATE, WAL bytes, table size afterwards.
# ZDM_BACKFILL_ROUNDS=N (1) runs every method N times, interleaved (round 1
# runs each method once, then round 2 …): single runs here differ by up to a
# third (the disk's writeback), so the table reports each method's median,
# and every round's rate beside it.
# Usage: bench/backfill.sh ROWS [TIME_CAP_S]
source "$(dirname "$0")/lib.sh"
ROWS="${1:-1000000}"
CAP="${2:-120}"          # seconds; a method still running then is stopped and its rate reported
bench_cluster

declare -A MS WAL SIZE NOTE
run() { # method
  local m=$1 t="bf_${1//-/_}" start wal0 ms
  QDB=$DB
  if [[ $m == reshape* ]]; then
    # Reshape keeps its migration history per database: a fresh one per run
    QDB="rs_${m//-/_}_$ROWS"
    QDB=postgres q -c "DROP DATABASE IF EXISTS $QDB" -c "CREATE DATABASE $QDB"
  fi
  make_bench_table "$t" "$ROWS"
  case $m in
    update|update-x2|update-trigger|update-x2-trigger|update-batched) q -c "ALTER TABLE $t ADD COLUMN b text" ;;
    zdm-*)      ID=$(val "SELECT zdm.expand_rename('$t', 'a', 'b', background => false)") ;;
    plpgsql|ctid-limit) q -c "ALTER TABLE $t ADD COLUMN b text" ;;
    reshape*)   ;;
  esac
  wal0=$(lsn); start=$(now_ms)
  case $m in
    update) q -c "UPDATE $t SET b = a" ;;
    update-trigger)
      # What any BEFORE ROW trigger costs PostgreSQL (it locks each row before
      # calling it): a built-in C trigger that does next to nothing.
      q -c "CREATE TRIGGER noop BEFORE UPDATE ON $t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()" -c "UPDATE $t SET b = a" ;;
    update-batched)
      # What batching costs: the same UPDATE over TID ranges of the blocks
      # 20000 rows take (zdm's batch size below), a commit after each, no trigger.
      q <<SQL
DO \$\$ DECLARE n bigint := pg_relation_size('$t') / current_setting('block_size')::int; step int;
BEGIN
  step := greatest(1, 20000 * n / $ROWS);
  -- up to the heap's end before the first batch, like zdm's scan: row
  -- versions the batches move past it must not be updated again
  FOR lo IN 0..n - 1 BY step LOOP
    EXECUTE format('UPDATE $t SET b = a WHERE ctid >= %L::tid AND ctid < %L::tid', format('(%s,0)', lo), format('(%s,0)', least(lo + step, n)));
    COMMIT;
  END LOOP;
END \$\$;
SQL
      ;;
    update-x2|update-x2-trigger)
      # PostgreSQL's own two-way ceiling here: two sessions, each one UPDATE
      # of half the heap by TID range, at once.
      [[ $m == *-trigger ]] && q -c "CREATE TRIGGER noop BEFORE UPDATE ON $t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()"
      local half; half=$(( $(val "SELECT pg_relation_size('$t') / current_setting('block_size')::int") / 2 ))
      q -c "UPDATE $t SET b = a WHERE ctid < '($half,0)'" & local first=$!
      q -c "UPDATE $t SET b = a WHERE ctid >= '($half,0)'"
      wait "$first" ;;
    zdm-bg*)
      local workers=1; [[ $m == zdm-bg-x* ]] && workers=${m#zdm-bg-x}
      q -c "SELECT zdm.start_backfill($ID, batch_size => 20000, pause_ms => 0, target_batch_ms => 0, max_replica_lag => '0', workers => $workers)" >/dev/null
      q -c "SET client_min_messages = warning" -c "SELECT zdm.wait($ID, '${CAP} seconds')" >/dev/null ;;
    zdm-client)
      q <<SQL
CREATE OR REPLACE PROCEDURE pg_temp.loop(id bigint) LANGUAGE plpgsql AS \$\$
BEGIN LOOP EXIT WHEN zdm.backfill_batch(id, 20000) = 0; COMMIT; END LOOP; END \$\$;
CALL pg_temp.loop($ID);
SQL
      ;;
    plpgsql)
      q <<SQL
DO \$\$ DECLARE lo bigint := 0; hi bigint := (SELECT max(id) FROM $t); stop timestamptz := clock_timestamp() + interval '$CAP seconds';
BEGIN
  WHILE lo <= hi AND clock_timestamp() < stop LOOP
    UPDATE $t SET b = a WHERE id >= lo AND id < lo + 1000;
    COMMIT;
    PERFORM pg_sleep(0.01);
    lo := lo + 1000;
  END LOOP;
END \$\$;
SQL
      ;;
    ctid-limit)
      q <<SQL
DO \$\$ DECLARE n bigint; stop timestamptz := clock_timestamp() + interval '$CAP seconds';
BEGIN
  LOOP
    UPDATE $t SET b = a WHERE ctid IN (SELECT ctid FROM $t WHERE b IS NULL AND a IS NOT NULL LIMIT 1000);
    GET DIAGNOSTICS n = ROW_COUNT;
    COMMIT;
    EXIT WHEN n = 0 OR clock_timestamp() > stop;
  END LOOP;
END \$\$;
SQL
      ;;
    reshape*)
      local dir; dir=$(mktemp -d)
      mkdir -p "$dir/migrations"
      local type_line=""
      [ "$m" = reshape-copy ] && type_line='type = "TEXT"'   # any change besides the name makes Reshape copy the data
      cat > "$dir/migrations/1_rename.toml" <<TOML
[[actions]]
type = "alter_column"
table = "$t"
column = "a"
up = "a"
down = "a"
    [actions.changes]
    name = "b"
    $type_line
TOML
      if ! (cd "$dir" && reshape migration start --url "postgres://postgres@127.0.0.1:$PORT/$QDB" > "$dir/out.log" 2>&1); then
        NOTE[$m]="reshape failed: $(grep -m1 -iE 'error|invalid' "$dir/out.log" | cut -c1-120)"
      fi ;;
  esac
  ms=$(( $(now_ms) - start ))
  WAL[$m]=$(wal_since "$wal0")
  if [[ $m == reshape* ]]; then (cd "$dir" && reshape migration complete --url "postgres://postgres@127.0.0.1:$PORT/$QDB" >/dev/null 2>&1 || true); rm -rf "$dir"; fi
  SIZE[$m]=$(val "SELECT pg_table_size('$t')")
  local done
  if [[ $m == reshape* ]]; then
    done=$(val "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '$t'::regclass AND attname = 'b') THEN (SELECT count(*) FROM $t) ELSE 0 END")
  else done=$(val "SELECT count(*) FROM $t WHERE b IS NOT DISTINCT FROM a"); fi
  if [ "$done" -lt "$ROWS" ] && [ -z "${NOTE[$m]:-}" ]; then NOTE[$m]="stopped after ${CAP}s at $(( done * 100 / ROWS ))%"; fi
  MS[$m]=$ms; DONE[$m]=$done
  ALL_MS[$m]="${ALL_MS[$m]:-} $ms"; ALL_RATES[$m]="${ALL_RATES[$m]:-} $(rate "$done" "$ms")"
  drop_bench_table "$t"   # CASCADE: Reshape leaves a view schema on it
  if [[ $m == reshape* ]]; then QDB=postgres q -c "DROP DATABASE $QDB"; fi
  QDB=$DB
  if [ "$m" = reshape-rename ]; then
    NOTE[$m]="${NOTE[$m]:-views only: no rows copied (the app must SET search_path to the Reshape schema)}"
  fi
}

declare -A DONE ALL_MS ALL_RATES
ROUNDS="${ZDM_BACKFILL_ROUNDS:-1}"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ZDM_BACKFILL_ROUNDS must be a positive number of rounds, not '$ROUNDS'" >&2; exit 2; }
methods="${ZDM_BACKFILL_METHODS:-update update-x2 update-trigger update-batched zdm-bg zdm-bg-x2 zdm-bg-x4 zdm-client plpgsql ctid-limit}"
if [ -n "${ZDM_BACKFILL_METHODS:-}" ]; then :; elif command -v reshape >/dev/null 2>&1; then methods="$methods reshape-copy reshape-rename"; else NOTE[reshape]="skipped: reshape not installed (cargo install reshape --version 0.11.2 --locked)"; fi
# Throttling off: no pause, fixed batches, and no adaptive pauses either.
q -c "ALTER SYSTEM SET zdm.adaptive_throttle = off" -c "SELECT pg_reload_conf()" >/dev/null
for round in $(seq "$ROUNDS"); do
  for m in $methods; do run "$m"; done
done
# Each method's median round (all rounds moved the same rows).
for m in $methods; do MS[$m]=$(echo "${ALL_MS[$m]}" | median); done
q -c "ALTER SYSTEM RESET zdm.adaptive_throttle" -c "SELECT pg_reload_conf()" >/dev/null

echo "### Backfill of $ROWS rows ($(machine))"
echo
if [ "$ROUNDS" -gt 1 ]; then
  echo "$ROUNDS interleaved rounds; time and rows/s are each method's median round, the ratio is of the medians; WAL and size are the last round's."
  echo
  for m in $methods; do NOTE[$m]="${NOTE[$m]:-}${NOTE[$m]:+; }rounds: $(echo ${ALL_RATES[$m]} | sed 's/ /, /g') rows/s"; done
fi
echo "| method | time s | rows/s | vs single UPDATE | WAL MB | table MB after | note |"
echo "|---|---:|---:|---:|---:|---:|---|"
base=$(rate "$ROWS" "${MS[update]}")
for m in $methods; do
  r=$(rate "${DONE[$m]}" "${MS[$m]}")
  if [ "$m" = reshape-rename ]; then
    printf "| %s | %.1f | n/a | n/a | %s | %s | %s |\n" "$m" "$(awk -v ms="${MS[$m]}" 'BEGIN{print ms/1000}')" "$(mb "${WAL[$m]}")" "$(mb "${SIZE[$m]}")" "${NOTE[$m]:-}"
    continue
  fi
  printf "| %s | %.1f | %s | %s× | %s | %s | %s |\n" "$m" "$(awk -v ms="${MS[$m]}" 'BEGIN{print ms/1000}')" "$r" "$(ratio "$r" "$base")" "$(mb "${WAL[$m]}")" "$(mb "${SIZE[$m]}")" "${NOTE[$m]:-}"
done
[ -n "${NOTE[reshape]:-}" ] && [[ " $methods " != *" reshape "* ]] && echo "| reshape | | | | | | ${NOTE[reshape]} |"
echo
x() { ratio "$(rate "${DONE[$1]:-0}" "${MS[$1]:-0}")" "$base"; }
echo "backfill $ROWS rows: zdm background = $(x zdm-bg)× the single UPDATE with 1 worker, $(x zdm-bg-x2)× with 2, $(x zdm-bg-x4)× with 4 ($(rate "${DONE[zdm-bg]:-0}" "${MS[zdm-bg]:-0}"), $(rate "${DONE[zdm-bg-x2]:-0}" "${MS[zdm-bg-x2]:-0}"), $(rate "${DONE[zdm-bg-x4]:-0}" "${MS[zdm-bg-x4]:-0}") vs $base rows/s); two UPDATEs at once: $(x update-x2)×, with a do-nothing BEFORE ROW trigger: $(x update-trigger)× (two at once: $(x update-x2-trigger)×), in committed batches of 20000 rows: $(x update-batched)×"
if [ "$ROUNDS" -gt 1 ] && [ -n "${ALL_MS[update]:-}" ]; then
  # the ratio within each round (the methods of one round ran minutes apart, not hours)
  # (rates, not times: a method stopped at the time cap moved fewer rows)
  per_round() { paste <(echo ${ALL_RATES[update]} | tr ' ' '\n') <(echo ${ALL_RATES[$1]:-} | tr ' ' '\n') | awk '$1 > 0 { printf "%s%.2f", (n++ ? ", " : ""), $2 / $1 }'; }
  echo "per round, vs that round's single UPDATE: $(for m in $methods; do [ "$m" = update ] || [ "$m" = reshape-rename ] || printf '%s %s×; ' "$m" "$(per_round "$m")"; done)"
fi
