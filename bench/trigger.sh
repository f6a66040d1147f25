#!/usr/bin/env bash
# Write-path cost of the sync trigger. Variants, each on a fresh identical table:
#   none     no trigger; the statement writes both columns itself (the same rows and bytes the triggers produce)
#   noop-c   PostgreSQL's built-in C trigger suppress_redundant_updates_trigger (BEFORE UPDATE):
#            the floor any BEFORE ROW trigger pays (old-tuple refetch, tuple materialisation)
#   zdm      zdm's Rust sync trigger (writes go through the old column)
#   zdm-sp   the same with SET search_path on the trigger function: every row then goes
#            through PostgreSQL's GUC save/restore. The function runs no SQL and resolves
#            no names, so zdm does not pin it; this variant shows what pinning would cost
#   plpgsql  the equivalent PL/pgSQL trigger, same semantics
#   zdm-ct   zdm's convert trigger of a type change (text → varchar, a plain cast):
#            the expression is evaluated by the executor per row; bar: ≤ zdm + 10 %
# Bulk: INSERT … SELECT of N rows and UPDATE of every row, CHECKPOINT before each
# statement, median of 3 rounds with the variants interleaved. pgbench:
# single-row INSERTs and UPDATEs, 2 clients. Overhead = time / none − 1.
# Target: zdm's overhead ≤ 1/3 of PL/pgSQL's.
# Usage: bench/trigger.sh BULK_ROWS PGBENCH_SECONDS
source "$(dirname "$0")/lib.sh"
BULK="${1:-500000}"
SECS="${2:-10}"
bench_cluster
VARIANTS="none noop-c zdm zdm-sp plpgsql zdm-ct"

q <<'SQL'
CREATE OR REPLACE FUNCTION public.plpgsql_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.b IS NOT NULL THEN NEW.a := NEW.b; ELSE NEW.b := NEW.a; END IF;
  ELSIF NEW.b IS DISTINCT FROM OLD.b THEN
    NEW.a := NEW.b;
  ELSIF NEW.a IS DISTINCT FROM OLD.a OR (NEW.b IS NULL AND NEW.a IS NOT NULL) THEN
    NEW.b := NEW.a;
  END IF;
  RETURN NEW;
END $$;
SQL

fresh() { # variant → a new table "trg" with that variant's trigger
  drop_bench_table trg
  q -c "CREATE TABLE trg (id bigserial PRIMARY KEY, a text, qty int, pad text)"
  q -c "ALTER FUNCTION zdm.sync_trigger() RESET search_path"
  case $1 in
    none)    q -c "ALTER TABLE trg ADD COLUMN b text" ;;
    noop-c)  q -c "ALTER TABLE trg ADD COLUMN b text" \
               -c "CREATE TRIGGER s BEFORE UPDATE ON trg FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()" ;;
    zdm)     val "SELECT zdm.expand_rename('trg', 'a', 'b', background => false)" >/dev/null ;;
    zdm-sp)  val "SELECT zdm.expand_rename('trg', 'a', 'b', background => false)" >/dev/null
             q -c "ALTER FUNCTION zdm.sync_trigger() SET search_path = pg_catalog, pg_temp" ;;
    zdm-ct)  val "SELECT zdm.expand_change_type('trg', 'a', 'varchar', background => false)" >/dev/null ;;
    plpgsql) q -c "ALTER TABLE trg ADD COLUMN b text" \
               -c "CREATE TRIGGER s BEFORE INSERT OR UPDATE ON trg FOR EACH ROW EXECUTE FUNCTION public.plpgsql_sync()" ;;
  esac
}
writes_both() { [ "$1" = none ] || [ "$1" = noop-c ]; }
timed() { q -c CHECKPOINT; local s; s=$(now_ms); q -c "$1"; echo $(( $(now_ms) - s )); }

declare -A INS UPD TPS_I TPS_U
for round in 1 2 3; do
  for v in $VARIANTS; do
    fresh "$v"
    if writes_both "$v"; then
      ins="INSERT INTO trg (a, b, qty, pad) SELECT 'c-' || g || '@example.com', 'c-' || g || '@example.com', g % 100, repeat('x', 40) FROM generate_series(1, $BULK) g"
      upd="UPDATE trg SET a = a || '.', b = a || '.'"
    else
      ins="INSERT INTO trg (a, qty, pad) SELECT 'c-' || g || '@example.com', g % 100, repeat('x', 40) FROM generate_series(1, $BULK) g"
      upd="UPDATE trg SET a = a || '.'"
    fi
    INS[$v]="${INS[$v]:-} $(timed "$ins")"
    q -c "VACUUM ANALYZE trg"
    UPD[$v]="${UPD[$v]:-} $(timed "$upd")"
  done
done
for v in $VARIANTS; do INS[$v]=$(echo "${INS[$v]}" | median); UPD[$v]=$(echo "${UPD[$v]}" | median); done

pgb() { "$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 2 -j 2 -T "$SECS" -f "$1" "$DB" 2>/dev/null | awk '/^tps/ {print int($3)}'; }
for v in $VARIANTS; do
  fresh "$v"
  if [ "$v" = zdm-ct ]; then  # no column b: the shadow column is filled by the trigger
    q -c "INSERT INTO trg (a, qty, pad) SELECT 'c-' || g, 1, 'p' FROM generate_series(1, 100000) g" -c "VACUUM ANALYZE trg"
  else
    q -c "INSERT INTO trg (a, b, qty, pad) SELECT 'c-' || g, 'c-' || g, 1, 'p' FROM generate_series(1, 100000) g" -c "VACUUM ANALYZE trg"
  fi
  if writes_both "$v"; then
    echo "INSERT INTO trg (a, b, qty, pad) VALUES ('new-' || :client_id, 'new-' || :client_id, 1, 'p');" > "$BENCH_DIR/ins.sql"
    printf '\\set id random(1, 100000)\nUPDATE trg SET a = md5(:id::text), b = md5(:id::text) WHERE id = :id;\n' > "$BENCH_DIR/upd.sql"
  else
    echo "INSERT INTO trg (a, qty, pad) VALUES ('new-' || :client_id, 1, 'p');" > "$BENCH_DIR/ins.sql"
    printf '\\set id random(1, 100000)\nUPDATE trg SET a = md5(:id::text) WHERE id = :id;\n' > "$BENCH_DIR/upd.sql"
  fi
  TPS_I[$v]=$(pgb "$BENCH_DIR/ins.sql"); TPS_U[$v]=$(pgb "$BENCH_DIR/upd.sql")
done
drop_bench_table trg
q -c "ALTER FUNCTION zdm.sync_trigger() RESET search_path"

ovh() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f%%", (a / b - 1) * 100 }'; }
tovh() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f%%", (b / a - 1) * 100 }'; }
share() { awk -v z="$1" -v p="$2" -v n="$3" 'BEGIN { if (p - n <= 0) print "-"; else printf "%.2f", (z - n) / (p - n) }'; }
echo "### Sync trigger write cost ($(machine))"
echo
echo "| workload | none | noop C trigger (floor) | zdm | PL/pgSQL | zdm overhead | PL/pgSQL overhead | zdm / PL/pgSQL overhead |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
echo "| bulk INSERT … SELECT $BULK rows, ms (median of 3) | ${INS[none]} | n/a (UPDATE only) | ${INS[zdm]} | ${INS[plpgsql]} | $(ovh "${INS[zdm]}" "${INS[none]}") | $(ovh "${INS[plpgsql]}" "${INS[none]}") | $(share "${INS[zdm]}" "${INS[plpgsql]}" "${INS[none]}") |"
echo "| bulk UPDATE of $BULK rows, ms (median of 3) | ${UPD[none]} | ${UPD[noop-c]} ($(ovh "${UPD[noop-c]}" "${UPD[none]}")) | ${UPD[zdm]} | ${UPD[plpgsql]} | $(ovh "${UPD[zdm]}" "${UPD[none]}") | $(ovh "${UPD[plpgsql]}" "${UPD[none]}") | $(share "${UPD[zdm]}" "${UPD[plpgsql]}" "${UPD[none]}") |"
echo "| pgbench single-row INSERT, TPS | ${TPS_I[none]} | ${TPS_I[noop-c]} | ${TPS_I[zdm]} | ${TPS_I[plpgsql]} | $(tovh "${TPS_I[zdm]}" "${TPS_I[none]}") | $(tovh "${TPS_I[plpgsql]}" "${TPS_I[none]}") | |"
echo "| pgbench single-row UPDATE, TPS | ${TPS_U[none]} | ${TPS_U[noop-c]} | ${TPS_U[zdm]} | ${TPS_U[plpgsql]} | $(tovh "${TPS_U[zdm]}" "${TPS_U[none]}") | $(tovh "${TPS_U[plpgsql]}" "${TPS_U[none]}") | |"
echo
echo "With SET search_path on the trigger function (variant zdm-sp): INSERT $(ovh "${INS[zdm-sp]}" "${INS[none]}"), UPDATE $(ovh "${UPD[zdm-sp]}" "${UPD[none]}") — why zdm does not pin it."
echo
echo "Above the floor every BEFORE ROW UPDATE trigger pays, zdm adds $(ovh "${UPD[zdm]}" "${UPD[noop-c]}") and PL/pgSQL $(ovh "${UPD[plpgsql]}" "${UPD[noop-c]}") to a bulk UPDATE."
echo
echo "Type change's convert trigger (text → varchar, plain cast): INSERT ${INS[zdm-ct]} ms ($(ovh "${INS[zdm-ct]}" "${INS[zdm]}") vs zdm's rename trigger), UPDATE ${UPD[zdm-ct]} ms ($(ovh "${UPD[zdm-ct]}" "${UPD[zdm]}")), pgbench INSERT ${TPS_I[zdm-ct]} TPS, UPDATE ${TPS_U[zdm-ct]} TPS. Bar: ≤ +10 %."
echo
echo "trigger overhead on bulk writes: INSERT zdm $(ovh "${INS[zdm]}" "${INS[none]}") vs PL/pgSQL $(ovh "${INS[plpgsql]}" "${INS[none]}"); UPDATE zdm $(ovh "${UPD[zdm]}" "${UPD[none]}") vs PL/pgSQL $(ovh "${UPD[plpgsql]}" "${UPD[none]}")"
