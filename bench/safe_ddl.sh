#!/usr/bin/env bash
# What zdm.safe_ddl's ProcessUtility hook costs.
#   1. No DDL: pgbench select-only (-S: queries never reach ProcessUtility)
#      and tpcb-like (BEGIN/END do) on the cluster without zdm preloaded (no
#      hook in any session) and with it (the hook in every session).
#   2. DDL-heavy: one client running ALTER TABLE SET/DROP DEFAULT, ADD/DROP
#      CONSTRAINT and CREATE/DROP INDEX on a small table, in a database without zdm (no
#      guard, no hook), with zdm and safe_ddl = off (its guard; the hook
#      returns at its first test), and with safe_ddl = warn (the analysis and
#      the lock taken under zdm's policy before each statement).
# Rounds alternate between the variants; the medians are compared.
# Usage: bench/safe_ddl.sh SECONDS ROUNDS
source "$(dirname "$0")/lib.sh"
SECS="${1:-10}"
ROUNDS="${2:-3}"
bench_cluster

restart_with() { # shared_preload_libraries value
  as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" restart -w -m fast -o "-c shared_preload_libraries='$1'" >/dev/null
}
tps_of() { awk '/^tps = / { printf "%.0f", $3; exit }'; }
pgb() { # db, extra args...
  local db="$1"; shift
  (cd "$BENCH_DIR" && "$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n "$@" "$db" 2>/dev/null)
}

QDB=postgres q -c "DROP DATABASE IF EXISTS nozdm" -c "CREATE DATABASE nozdm"
"$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -i -q -s 10 "$DB" >/dev/null 2>&1
for d in "$DB" nozdm; do
  QDB=$d q -c "DROP TABLE IF EXISTS ddl_t" -c "CREATE TABLE ddl_t (id int PRIMARY KEY, a int)" \
    -c "INSERT INTO ddl_t SELECT g, g FROM generate_series(1, 1000) g" -c "VACUUM ANALYZE ddl_t"
done
cat > "$BENCH_DIR/ddl.sql" <<'SQL'
ALTER TABLE ddl_t ALTER COLUMN a SET DEFAULT 1;
ALTER TABLE ddl_t ALTER COLUMN a DROP DEFAULT;
ALTER TABLE ddl_t ADD CONSTRAINT ddl_c CHECK (a > 0) NOT VALID;
ALTER TABLE ddl_t DROP CONSTRAINT ddl_c;
CREATE INDEX ddl_i ON ddl_t (a);
DROP INDEX ddl_i;
SQL
chmod 644 "$BENCH_DIR/ddl.sql"

declare -A R
for round in $(seq 1 "$ROUNDS"); do
  restart_with ''
  R[sel_off]+=" $(pgb "$DB" -S -c 2 -j 2 -T "$SECS" | tps_of)"
  R[tpcb_off]+=" $(pgb "$DB" -c 2 -j 2 -T "$SECS" | tps_of)"
  R[ddl_none]+=" $(pgb nozdm -f ddl.sql -c 1 -T "$SECS" | tps_of)"
  restart_with 'zdm'
  R[sel_on]+=" $(pgb "$DB" -S -c 2 -j 2 -T "$SECS" | tps_of)"
  R[tpcb_on]+=" $(pgb "$DB" -c 2 -j 2 -T "$SECS" | tps_of)"
  R[ddl_zdm_off]+=" $(PGOPTIONS='-c zdm.safe_ddl=off' pgb "$DB" -f ddl.sql -c 1 -T "$SECS" | tps_of)"
  R[ddl_zdm_warn]+=" $(PGOPTIONS='-c zdm.safe_ddl=warn' pgb "$DB" -f ddl.sql -c 1 -T "$SECS" | tps_of)"
done
m() { echo "${R[$1]}" | median; }

echo "### zdm.safe_ddl: what the hook costs ($ROUNDS rounds of $SECS s, medians)"
echo
echo "| workload | without the hook (TPS) | with the hook (TPS) | ratio |"
echo "|---|---:|---:|---:|"
echo "| pgbench -S (select only), 2 clients | $(m sel_off) | $(m sel_on) | $(ratio "$(m sel_on)" "$(m sel_off)") |"
echo "| pgbench tpcb-like (BEGIN … END), 2 clients | $(m tpcb_off) | $(m tpcb_on) | $(ratio "$(m tpcb_on)" "$(m tpcb_off)") |"
echo
echo "| DDL-heavy (SET/DROP DEFAULT, ADD/DROP CONSTRAINT, CREATE/DROP INDEX on 1000 rows: 6 statements per transaction), 1 client | TPS | vs no zdm |"
echo "|---|---:|---:|"
echo "| database without zdm (no guard, no hook) | $(m ddl_none) | 1.00 |"
echo "| zdm, safe_ddl = off (the guard; the hook returns at once) | $(m ddl_zdm_off) | $(ratio "$(m ddl_zdm_off)" "$(m ddl_none)") |"
echo "| zdm, safe_ddl = warn (guard + analysis + locks under zdm's policy) | $(m ddl_zdm_warn) | $(ratio "$(m ddl_zdm_warn)" "$(m ddl_none)") |"
echo
echo "All rounds (TPS): $(for k in sel_off sel_on tpcb_off tpcb_on ddl_none ddl_zdm_off ddl_zdm_warn; do printf '%s:%s; ' "$k" "${R[$k]# }"; done)"
restart_with 'zdm'
