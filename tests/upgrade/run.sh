#!/usr/bin/env bash
# Upgrade from the last release (0.1.0) with migrations in flight, the way a
# DBA does it: the 0.1.0 library runs a rename (half backfilled) and a
# constraint migration (queued behind it, zdm.max_workers = 1) on a table an
# application keeps writing; the server stops; the new library is installed;
# the server starts; only then ALTER EXTENSION zdm UPDATE. Asserts that in
# between zdm refuses (55000) and waits while the sync trigger keeps writes in
# sync, that both migrations finish after the update, 0 rows lost a write,
# and that the upgraded schema equals a fresh install's.
#
# The 0.1.0 library is built from git history (commit $OLD_COMMIT) under
# another crate name, so it shares target/'s dependencies without touching
# the current build; its SQL is the release's, kept in sql/releases/.
DIR="${ZDM_UPGRADE_DIR:-/tmp/zdm-upgrade}"
PORT="${ZDM_UPGRADE_PORT:-5495}"
OLD_VERSION=0.1.0
OLD_COMMIT=44bb91f4a7b20ae43c4c117327030deec7657883
source "$(dirname "$0")/../../examples/lib.sh"
REPO=$PWD
LIBDIR=$("$PG_CONFIG" --pkglibdir)
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"
fail() { echo "tests/upgrade: FAILED: $*"; exit 1; }

echo "==> building the $OLD_VERSION library (commit ${OLD_COMMIT:0:7})"
git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null || fail "commit $OLD_COMMIT is not in this clone (a shallow clone? fetch the history)"
OLD_SRC="$REPO/target/zdm-$OLD_VERSION-src"
rm -rf "$OLD_SRC" && mkdir -p "$OLD_SRC"
git archive "$OLD_COMMIT" | tar -x -C "$OLD_SRC"
sed -i 's/^\[lib\]$/[lib]\nname = "zdm_v0_1_0"/' "$OLD_SRC/Cargo.toml"
(cd "$OLD_SRC" && CARGO_TARGET_DIR="$REPO/target" cargo build --lib --quiet)
OLD_LIB="$REPO/target/debug/libzdm_v0_1_0.so"

# The current library (installed by the caller), kept to put back.
[ "${ZDM_EXAMPLE_INSTALLED:-0}" = 1 ] || cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
NEW_LIB="$REPO/target/zdm-upgrade-current.so"
cp "$LIBDIR/zdm.so" "$NEW_LIB"
# Replaced by rename, never overwritten in place: a running server keeps
# the file it mapped.
put_library() { cp "$1" "$LIBDIR/.zdm.so.upgrade-test" && mv -f "$LIBDIR/.zdm.so.upgrade-test" "$LIBDIR/zdm.so"; }
cp sql/releases/zdm--$OLD_VERSION.sql "$EXTDIR/"
put_library "$OLD_LIB"

ZDM_EXAMPLE_INSTALLED=1 ZDM_EXTENSION_VERSION=$OLD_VERSION boot_shop "zdm.max_workers = 1"
trap 'stop_app; as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast >/dev/null 2>&1 || true; put_library "$NEW_LIB"' EXIT
version() { psql_ -At -c "SELECT extversion FROM pg_extension WHERE extname = 'zdm'"; }
echo "extension: $(version)"

echo "==> $OLD_VERSION: a rename backfilling slowly, a constraint migration queued behind it"
start_app 200
RENAME=$(psql_ -At -c "SELECT zdm.expand_rename('orders', 'customer_email', 'email', background => false)")
psql_ -At -c "SELECT zdm.start_backfill($RENAME, batch_size => 500, pause_ms => 300, target_batch_ms => 0)" >/dev/null
CHECK=$(psql_ -At -c "BEGIN" -c "SELECT zdm.add_check('orders', 'orders_total_nonnegative', 'total >= 0')" -c "COMMIT" 2>/dev/null | grep -E '^[0-9]+$')
for _ in $(seq 1 60); do
  done_rows=$(psql_ -At -c "SELECT rows_done FROM zdm.migrations WHERE id = $RENAME")
  [ "$done_rows" -ge 3000 ] && break; sleep 0.5
done
psql_ -At -c "SELECT '  ' || id || ' ' || kind || ': ' || phase || ', job ' || coalesce(job_state, '-') || ', ' || rows_done || ' rows' || coalesce(' (' || throttle_reason || ')', '') FROM zdm.status ORDER BY id"
[ "$(psql_ -At -c "SELECT phase || '/' || job_state FROM zdm.status WHERE id = $RENAME")" = backfilling/running ] || fail "the rename is not half-way"
[ "$(psql_ -At -c "SELECT job_state FROM zdm.status WHERE id = $CHECK")" = queued ] || fail "the constraint migration is not queued"

echo "==> stop the server, install the new library, start it"
stop_app
as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast -w >/dev/null
put_library "$NEW_LIB"
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" start -w >/dev/null
start_app 200
sleep 3
echo "extension: $(version)"
before=$(psql_ -At -c "SELECT rows_done || '/' || cursor_block FROM zdm.migrations WHERE id = $RENAME")
out=$(psql_ -c "SELECT zdm.wait($RENAME)" 2>&1 || true); echo "  zdm.wait before the update: $out" | head -2
echo "$out" | grep -q "is at version $OLD_VERSION" || fail "zdm.wait did not refuse clearly"
code=$(psql_ -At -c "\\set VERBOSITY sqlstate" -c "SELECT zdm.pause($RENAME)" 2>&1 | tail -1 | sed 's/^ERROR: *//' || true)
echo "  zdm.pause before the update: SQLSTATE $code"
[ "$code" = 55000 ] || fail "expected 55000, got $code"
sleep 2
after=$(psql_ -At -c "SELECT rows_done || '/' || cursor_block FROM zdm.migrations WHERE id = $RENAME")
[ "$before" = "$after" ] || fail "a worker ran against the old catalog ($before -> $after)"
grep -q "jobs wait until ALTER EXTENSION zdm UPDATE" "$DIR/server.log" || fail "the launcher did not say why it waits"
echo "  the launcher waits (rows_done/cursor $after unchanged), writes go on through the sync trigger"

echo "==> ALTER EXTENSION zdm UPDATE"
psql_ -c "ALTER EXTENSION zdm UPDATE"
echo "extension: $(version)"
echo "  rename: $(psql_ -At -c "SELECT zdm.wait($RENAME, '5 minutes')" 2>/dev/null)"
echo "  check:  $(psql_ -At -c "SELECT zdm.wait($CHECK, '5 minutes')" 2>/dev/null)"
[ "$(psql_ -At -c "SELECT convalidated FROM pg_constraint WHERE conname = 'orders_total_nonnegative'")" = t ] || fail "the check is not validated"
stop_app
psql_ -At -c "SELECT zdm.contract('orders', 'email')" >/dev/null
psql_ -At -c "SELECT zdm.validate_not_null('orders', 'email')" >/dev/null
psql_ -At -c "SELECT '  ' || id || ' ' || kind || ': ' || phase || ', job ' || coalesce(job_state, '-') || ', started by ' || started_by || ', runs as ' || owner FROM zdm.status ORDER BY id"

echo "==> the upgraded schema equals a fresh install's"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -c "CREATE DATABASE fresh"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d fresh -X -q -c "CREATE EXTENSION zdm"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d shop -X -q -f tests/upgrade/schema.sql > "$DIR/schema-upgraded.txt"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d fresh -X -q -f tests/upgrade/schema.sql > "$DIR/schema-fresh.txt"
diff "$DIR/schema-fresh.txt" "$DIR/schema-upgraded.txt" || fail "the upgraded schema differs from a fresh one (diff above)"
echo "  $(wc -l < "$DIR/schema-fresh.txt") lines of schema description, equal"

check_shop upgrade | sed 's#examples/upgrade#tests/upgrade#'
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
