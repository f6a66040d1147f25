#!/usr/bin/env bash
# Write-path cost of the sync trigger: no trigger vs zdm's Rust trigger vs the
# equivalent PL/pgSQL trigger (same semantics), on
#   bulk writes (INSERT … SELECT of N rows, UPDATE of every row through the old column), and
#   pgbench single-row INSERTs and UPDATEs (2 clients).
# Overhead = time / no-trigger time − 1. Target: zdm's overhead ≤ 1/3 of PL/pgSQL's.
# Usage: bench/trigger.sh BULK_ROWS PGBENCH_SECONDS
source "$(dirname "$0")/lib.sh"
BULK="${1:-500000}"
SECS="${2:-10}"
bench_cluster

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

setup_variant() { # variant table
  q -c "DROP TABLE IF EXISTS $2" -c "CREATE TABLE $2 (id bigserial PRIMARY KEY, a text, qty int, pad text)"
  case $1 in
    none)    q -c "ALTER TABLE $2 ADD COLUMN b text" ;;
    zdm)     val "SELECT zdm.expand_rename('$2', 'a', 'b', background => false)" >/dev/null ;;
    plpgsql) q -c "ALTER TABLE $2 ADD COLUMN b text" \
               -c "CREATE TRIGGER sync BEFORE INSERT OR UPDATE ON $2 FOR EACH ROW EXECUTE FUNCTION public.plpgsql_sync()" ;;
  esac
}

best_ms() { # sql, best of 3
  local best=999999999 i s e
  for i in 1 2 3; do
    s=$(now_ms); q -c "$1"; e=$(( $(now_ms) - s ))
    [ "$e" -lt "$best" ] && best=$e
  done
  echo "$best"
}

declare -A INS UPD TPS_I TPS_U
for v in none zdm plpgsql; do
  t="trg_$v"
  setup_variant "$v" "$t"
  INS[$v]=$(best_ms "TRUNCATE $t; INSERT INTO $t (a, qty, pad) SELECT 'customer-' || g || '@example.com', g % 100, repeat('x', 40) FROM generate_series(1, $BULK) g")
  q -c "VACUUM ANALYZE $t"
  UPD[$v]=$(best_ms "UPDATE $t SET a = a || '.'")
  q -c "VACUUM $t"
  # single-row pgbench: INSERTs, then UPDATEs of random rows through the old column
  echo "INSERT INTO $t (a, qty, pad) VALUES ('new-' || random(), 1, 'p');" > "$BENCH_DIR/ins.sql"
  printf '\\set id random(1, %s)\nUPDATE %s SET a = md5(:id::text || random()) WHERE id = :id;\n' "$BULK" "$t" > "$BENCH_DIR/upd.sql"
  TPS_I[$v]=$("$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 2 -j 2 -T "$SECS" -f "$BENCH_DIR/ins.sql" "$DB" 2>/dev/null | awk '/^tps/ {print int($3)}')
  TPS_U[$v]=$("$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 2 -j 2 -T "$SECS" -f "$BENCH_DIR/upd.sql" "$DB" 2>/dev/null | awk '/^tps/ {print int($3)}')
  q -c "DROP TABLE $t"
done

ovh() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f%%", (a / b - 1) * 100 }'; }
tovh() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.0f%%", (b / a - 1) * 100 }'; }  # TPS: slower = higher overhead
echo "### Sync trigger write cost ($(machine))"
echo
echo "| workload | no trigger | zdm trigger | PL/pgSQL trigger | zdm overhead | PL/pgSQL overhead |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| bulk INSERT … SELECT $BULK rows (ms, best of 3) | ${INS[none]} | ${INS[zdm]} | ${INS[plpgsql]} | $(ovh "${INS[zdm]}" "${INS[none]}") | $(ovh "${INS[plpgsql]}" "${INS[none]}") |"
echo "| bulk UPDATE of $BULK rows via old column (ms, best of 3) | ${UPD[none]} | ${UPD[zdm]} | ${UPD[plpgsql]} | $(ovh "${UPD[zdm]}" "${UPD[none]}") | $(ovh "${UPD[plpgsql]}" "${UPD[none]}") |"
echo "| pgbench single-row INSERT, 2 clients, ${SECS}s (TPS) | ${TPS_I[none]} | ${TPS_I[zdm]} | ${TPS_I[plpgsql]} | $(tovh "${TPS_I[zdm]}" "${TPS_I[none]}") | $(tovh "${TPS_I[plpgsql]}" "${TPS_I[none]}") |"
echo "| pgbench single-row UPDATE, 2 clients, ${SECS}s (TPS) | ${TPS_U[none]} | ${TPS_U[zdm]} | ${TPS_U[plpgsql]} | $(tovh "${TPS_U[zdm]}" "${TPS_U[none]}") | $(tovh "${TPS_U[plpgsql]}" "${TPS_U[none]}") |"
echo
z=$(awk -v a="${INS[zdm]}" -v b="${UPD[zdm]}" -v n1="${INS[none]}" -v n2="${UPD[none]}" 'BEGIN { print (a + b) / (n1 + n2) - 1 }')
p=$(awk -v a="${INS[plpgsql]}" -v b="${UPD[plpgsql]}" -v n1="${INS[none]}" -v n2="${UPD[none]}" 'BEGIN { print (a + b) / (n1 + n2) - 1 }')
echo "trigger bulk-write overhead: zdm $(awk -v z="$z" 'BEGIN{printf "%+.0f%%", z*100}') vs PL/pgSQL $(awk -v p="$p" 'BEGIN{printf "%+.0f%%", p*100}') (zdm/PL/pgSQL = $(awk -v z="$z" -v p="$p" 'BEGIN{ if (p <= 0) print "-"; else printf "%.2f", z/p}'))"
