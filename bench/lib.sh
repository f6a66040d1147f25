# Shared helpers for the benchmarks: one PostgreSQL 15 cluster with zdm
# (release build) preloaded, settings from pgrx-config/postgresql.conf.
# Sourced by the bench scripts; `bench_cluster` boots it once per run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
BIN="$("$PG_CONFIG" --bindir)"
BENCH_DIR="${ZDM_BENCH_DIR:-/tmp/zdm-bench}"
PORT="${ZDM_BENCH_PORT:-5477}"
DB=bench

as_pg() { if [ "$(id -u)" = 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi; }
q() { "$BIN/psql" -h "$BENCH_DIR" -p "$PORT" -U postgres -d "${QDB:-$DB}" -X -q -v ON_ERROR_STOP=1 "$@"; }
val() { q -At -c "$1"; }
now_ms() { date +%s%3N; }
lsn() { val "SELECT pg_current_wal_lsn()"; }
wal_since() { val "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$1')"; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.2f", a / b }'; }
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { if (ms <= 0) ms = 1; printf "%.0f", n * 1000 / ms }'; }
# The median of numbers separated by spaces or newlines (the lower middle one
# of an even count, so always one of the values); "-" when there are none.
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

# Background writers for the lock benchmarks: 4 pgbench clients running
# script $2 (in $BENCH_DIR) at $3 transactions/s in total, logging each
# transaction under prefix $1, until stop_writers.
writers() { # log prefix, script, rate
  rm -f "$BENCH_DIR/$1".*
  (cd "$BENCH_DIR" && exec "$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 4 -j 2 -T 3600 -R "$3" \
     -f "$2" --log --log-prefix="$1" "$DB" >/dev/null 2>&1) &
  WRITERS=$!
  sleep 1
}
stop_writers() { kill -INT "$WRITERS" 2>/dev/null || true; wait "$WRITERS" 2>/dev/null || true; }
epoch() { date +%s.%N; }

# TPS and p99 (ms) of the transactions that ended within [from, to] (epoch
# seconds; empty = the whole run). pgbench log: client tx latency_us script epoch_s us.
window_stats() { # prefix from to
  local sel="$BENCH_DIR/window-$1.txt" n span p99   # not matched by the $1.* glob below
  cat "$BENCH_DIR/$1".* | awk -v from="${2:-0}" -v to="${3:-0}" \
    '{ t = $5 + $6 / 1e6; if (from > 0 && (t < from || t > to)) next; printf "%.6f %d\n", t, $3 }' > "$sel"
  n=$(wc -l < "$sel")
  if [ "$n" -eq 0 ]; then echo "0 0"; return; fi
  # the span: the window clipped to pgbench's own run (first to last transaction)
  span=$(cat "$BENCH_DIR/$1".* | awk -v from="${2:-0}" -v to="${3:-0}" '
    { t = $5 + $6 / 1e6; if (f == 0 || t < f) f = t; if (t > l) l = t }
    END { a = f; b = l; if (from > 0 && from > a) a = from; if (to > 0 && to < b) b = to; printf "%.3f", b - a }')
  p99=$(awk '{ print $2 }' "$sel" | sort -n | awk -v n="$n" 'BEGIN { i = int(n * 0.99); if (i < 1) i = 1 } NR == i { printf "%.1f", $1 / 1000 }')
  awk -v n="$n" -v s="$span" -v p="$p99" 'BEGIN { if (s <= 0) s = 1; printf "%d %s\n", n / s, p }'
}

bench_running() { [ -f "$BENCH_DIR/data/postmaster.pid" ] && val "SELECT 1" >/dev/null 2>&1; }

# Build and install zdm (release) and boot a fresh cluster, unless this run
# already did (ZDM_BENCH_READY=1).
bench_cluster() {
  if [ "${ZDM_BENCH_READY:-0}" = 1 ] && bench_running; then return; fi
  bash "$ROOT/.ci/setup.sh" >/dev/null
  (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null 2>&1)
  if [ -f "$BENCH_DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" stop -m immediate >/dev/null 2>&1 || true; fi
  rm -rf "$BENCH_DIR"; mkdir -p "$BENCH_DIR"; [ "$(id -u)" = 0 ] && chown postgres "$BENCH_DIR"
  as_pg "$BIN/initdb" -D "$BENCH_DIR/data" -A trust -U postgres >/dev/null
  { cat "$ROOT/pgrx-config/postgresql.conf"
    echo "port = $PORT"; echo "unix_socket_directories = '$BENCH_DIR'"; echo "listen_addresses = '127.0.0.1'"
    echo "zdm.database = '$DB'"; echo "autovacuum = off"   # no background noise between the methods compared
  } | as_pg tee -a "$BENCH_DIR/data/postgresql.auto.conf" >/dev/null
  as_pg "$BIN/pg_ctl" -D "$BENCH_DIR/data" -l "$BENCH_DIR/server.log" start -w >/dev/null
  QDB=postgres q -c "CREATE DATABASE $DB"
  q -c "CREATE EXTENSION zdm"
  export ZDM_BENCH_READY=1
}

# Drop a bench table. zdm's guard refuses to drop a table with a migration in
# flight, so abort those first (benchmarks leave them backfilled, not contracted).
drop_bench_table() { # name
  q -c "SELECT zdm.abort(id) FROM zdm.migrations WHERE relid = to_regclass('$1') AND phase IN ('expanded', 'backfilling', 'backfilled') ORDER BY id" >/dev/null
  q -c "DROP TABLE IF EXISTS $1 CASCADE"
}

# A table for the backfill benchmarks: id bigint PK, the column being renamed
# (a ~30-byte text), a few other columns.
make_bench_table() { # name rows
  drop_bench_table "$1"
  q <<SQL
CREATE TABLE $1 (id bigint PRIMARY KEY, a text, qty int, created timestamptz, pad text);
INSERT INTO $1 SELECT g, 'customer-' || lpad(g::text, 9, '0') || '@example.com', g % 100, now(), repeat('x', 40)
  FROM generate_series(1, $2) g;
SQL
  q -c "VACUUM ANALYZE $1"
  q -c "CHECKPOINT"
}

machine() { echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m), PostgreSQL $("$BIN/postgres" --version | awk '{print $3}')"; }

# The live workload (live.sh, cap.sh): pgbench's TPC-B-like transactions
# plus single-row reads and writes on a bench table, SECS seconds a run.
live_table() { # name rows: the table and its pgbench script
  make_bench_table "$1" "$2"
  cat > "$BENCH_DIR/mig-$1.sql" <<SQL
\set id random(1, $2)
UPDATE $1 SET qty = qty + 1 WHERE id = :id;
SELECT a FROM $1 WHERE id = :id;
SQL
}
workload() { # table [log prefix, default the table] [rate]; runs pgbench, leaves the per-transaction log
  local prefix="${2:-$1}"
  rm -f "$BENCH_DIR/$prefix".[0-9]*
  (cd "$BENCH_DIR" && "$BIN/pgbench" -h "$BENCH_DIR" -p "$PORT" -U postgres -n -c 4 -j 2 -T "$SECS" ${3:+-R "$3"} \
     -b tpcb-like@1 -f "mig-$1.sql@1" --log --log-prefix="$prefix" "$DB" >/dev/null 2>&1)
}
# Each run starts from the same state: pgbench's tables vacuumed (its history
# table grows and its accounts bloat run after run), a checkpoint, and `sync`
# to flush what the last run left dirty in the page cache (its writeback
# would stall the next run's commits).
settle() { q -c "VACUUM pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history" -c "CHECKPOINT"; sync; sleep 2; }
# Each second of a pgbench log's [from, to] (all of it when from is 0),
# counted from t0: "second transactions p99_ms".
seconds() { # prefix from to t0
  cat "$BENCH_DIR/$1".[0-9]* | awk -v f="${2:-0}" -v t="${3:-0}" -v t0="${4:-0}" '{ x = $5 + $6 / 1e6; if (f > 0 && (x < f || x > t)) next; print int(x - t0), $3 }' \
    | sort -k1,1n -k2,2n \
    | awk 'function flush() { i = int(k * 0.99); if (i < 1) i = 1; printf "%d %d %.1f\n", cur, k, v[i] / 1000; k = 0; delete v }
        { if ($1 != cur && k > 0) flush(); cur = $1; v[++k] = $2 } END { if (k) flush() }'
}
# The median over the seconds of [from, to] of each second's p99 (ms): the
# workload's typical tail, which one stall of this VM's disk (p99 up to
# ~0.7 s without any migration) does not decide.
second_p99() { seconds "$1" "${2:-0}" "${3:-0}" | awk '{ print $3 }' | median; }
zdm_run() { # key table [start_backfill options]: zdm's backfill of the table during the workload
  # at RATE_LIMIT; its figures go to ID, RATE, STATE, BUSY, TPS, P99, SP99[key]
  local t="$2" end from to
  settle
  if [ -n "${3:-}" ]; then
    ID[$1]=$(val "SELECT zdm.expand_rename('$t', 'a', 'b', background => false)")
    val "SELECT zdm.start_backfill(${ID[$1]}, $3)" >/dev/null
  else
    ID[$1]=$(val "SELECT zdm.expand_rename('$t', 'a', 'b')")
  fi
  workload "$t" "$t" "$RATE_LIMIT"
  # rows/s while pgbench ran: progress when it stopped (or at the end of the backfill)
  RATE[$1]=$(val "SELECT round(rows_done / greatest(extract(epoch FROM coalesce(backfilled_at, clock_timestamp()) - backfill_started_at), 0.001))::bigint FROM zdm.migrations WHERE id = ${ID[$1]}")
  STATE[$1]=$(val "SELECT phase || ' ' || percent || '%' FROM zdm.status WHERE id = ${ID[$1]}")
  end=$(epoch)
  # (a cap has done its part: the rest at full speed)
  val "SELECT zdm.set_options(${ID[$1]}, max_rows_per_second => 0)" >/dev/null 2>&1 || true
  val "SELECT zdm.wait(${ID[$1]}, '10 minutes')" >/dev/null 2>&1 || true
  read -r from to BUSY[$1] < <(val "SELECT extract(epoch FROM backfill_started_at), extract(epoch FROM least(backfilled_at, to_timestamp($end))), round(extract(epoch FROM backfilled_at - backfill_started_at)::numeric, 1) FROM zdm.migrations WHERE id = ${ID[$1]}" | tr '|' ' ')
  read -r TPS[$1] P99[$1] < <(window_stats "$t" "$from" "$to")
  SP99[$1]=$(second_p99 "$t" "$from" "$to")
}
span() { sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "–" hi }'; }
