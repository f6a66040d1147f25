# The tables, variants and statements of the trigger benchmarks
# (trigger_shapes.sh times and profiles them, trigger_instructions.sh counts
# their instructions). Sourced after lib.sh; ROWS is the table size and the
# floor functions exist (floor_functions).

# The floor triggers (bench/c/floor_triggers.c), built and created in the
# database `q` talks to.
floor_functions() {
  [ -f "$BENCH_DIR/floor_triggers.so" ] || \
    gcc -O2 -fPIC -shared -I"$("$PG_CONFIG" --includedir-server)" -o "$BENCH_DIR/floor_triggers.so" "$ROOT/bench/c/floor_triggers.c"
  q -c "CREATE OR REPLACE FUNCTION public.bench_noop() RETURNS trigger LANGUAGE c AS '$BENCH_DIR/floor_triggers.so', 'bench_noop_trigger'" \
    -c "CREATE OR REPLACE FUNCTION public.bench_set() RETURNS trigger LANGUAGE c AS '$BENCH_DIR/floor_triggers.so', 'bench_set_trigger'"
}

# The trigger function each variant installs ("-" for none).
trigger_symbol() { case $1 in zdm) echo zdm_sync_trigger ;; ct) echo zdm_convert_trigger ;; set) echo bench_set_trigger ;; floor) echo bench_noop_trigger ;; *) echo - ;; esac; }
# Shapes a variant skips: set has nothing to set on upd-other; the
# application never writes a type change's shadow column.
skipped() { { [ "$1" = set ] && [ "$2" = upd-other ]; } || { [ "$1" = ct ] && [ "$2" = upd-new ]; }; }

cols() { # table kind → the column list before a (besides id)
  case $1 in
    wide) for i in $(seq -w 1 14); do printf 'c%s int, ' "$i"; done; for i in $(seq 15 28); do printf 'c%s text, ' "$i"; done; echo "n int" ;;
    *)    echo "pad text, n int" ;;
  esac
}
vals() { # table kind → SELECT list for row g (without id and a)
  case $1 in
    wide) for i in $(seq 1 14); do printf 'g + %s, ' "$i"; done; for i in $(seq 15 28); do printf "'v%s-' || g, " "$i"; done; echo "g % 100" ;;
    *)    echo "repeat('x', 40), g % 100" ;;
  esac
}
aval() { # table kind → the value of a for row g
  case $1 in
    toast) echo "(SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i)" ;;
    *)     echo "'customer-' || lpad(g::text, 9, '0') || '@example.com'" ;;
  esac
}
rows_for() { [ "$1" = toast ] && echo $((ROWS / 10)) || echo "$ROWS"; }

# A table in the state a migration leaves it: b added after a, filled from a.
setup() { # kind variant shape
  local n; n=$(rows_for "$1")
  drop_bench_table ts
  q -c "CREATE TABLE ts (id bigint PRIMARY KEY, $(cols "$1"), a text)"
  q -c "INSERT INTO ts SELECT g, $(vals "$1"), $(aval "$1") FROM generate_series(1, $n) g"
  if [ "$2" = zdm ] || [ "$2" = ct ]; then
    local id
    if [ "$2" = zdm ]; then id=$(val "SELECT zdm.expand_rename('ts', 'a', 'b', background => false)")
    else id=$(val "SELECT zdm.expand_change_type('ts', 'a', 'varchar', background => false)"); fi
    while [ "$(val "SELECT zdm.backfill_batch($id, 1000000)")" != 0 ]; do :; done
  else
    q -c "ALTER TABLE ts ADD COLUMN b text" -c "UPDATE ts SET b = a"
    [ "$2" = floor ] && q -c "CREATE TRIGGER s BEFORE INSERT OR UPDATE ON ts FOR EACH ROW EXECUTE FUNCTION public.bench_noop()"
    [ "$2" = set ] && q -c "CREATE TRIGGER s BEFORE INSERT OR UPDATE ON ts FOR EACH ROW EXECUTE FUNCTION public.bench_set($([ "$3" = upd-new ] && echo "'b', 'a'" || echo "'a', 'b'"))"
  fi
  q -c "VACUUM ANALYZE ts"
}
statement() { # kind shape variant
  local both=1 n; case $3 in zdm|set|ct) both=0 ;; esac; n=$(rows_for "$1")
  case $2 in
    upd-other) echo "UPDATE ts SET n = n + 1" ;;
    upd-old)   [ $both = 1 ] && echo "UPDATE ts SET a = a || 'x', b = b || 'x'" || echo "UPDATE ts SET a = a || 'x'" ;;
    upd-new)   [ $both = 1 ] && echo "UPDATE ts SET a = b || 'y', b = b || 'y'" || echo "UPDATE ts SET b = b || 'y'" ;;
    insert)    [ $both = 1 ] && echo "INSERT INTO ts SELECT g + $n, $(vals "$1"), $(aval "$1"), $(aval "$1") FROM generate_series(1, $n) g" \
                             || echo "INSERT INTO ts SELECT g + $n, $(vals "$1"), $(aval "$1") FROM generate_series(1, $n) g" ;;
    copy)      [ $both = 1 ] && echo "COPY ts FROM '$BENCH_DIR/copy-$1-both.csv'" || echo "COPY ts (id, $(cols "$1" | sed -E 's/ (int|text)//g'), a) FROM '$BENCH_DIR/copy-$1-one.csv'" ;;
  esac
}
