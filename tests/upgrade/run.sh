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
MAJOR=$("$PG_CONFIG" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')
OLD_SRC="$REPO/target/zdm-$OLD_VERSION-src"
rm -rf "$OLD_SRC" && mkdir -p "$OLD_SRC"
git archive "$OLD_COMMIT" | tar -x -C "$OLD_SRC"
sed -i 's/^\[lib\]$/[lib]\nname = "zdm_v0_1_0"/' "$OLD_SRC/Cargo.toml"
(cd "$OLD_SRC" && CARGO_TARGET_DIR="$REPO/target" cargo build --lib --quiet --no-default-features --features "pg$MAJOR")
OLD_LIB="$REPO/target/debug/libzdm_v0_1_0.so"

# The current library (installed by the caller), kept to put back.
[ "${ZDM_EXAMPLE_INSTALLED:-0}" = 1 ] || cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
NEW_LIB="$REPO/target/zdm-upgrade-current.so"
cp "$LIBDIR/zdm.so" "$NEW_LIB"
# Replaced by rename, never overwritten in place: a running server keeps
# the file it mapped. Whatever happens, the current library goes back.
put_library() { cp "$1" "$LIBDIR/.zdm.so.upgrade-test" && mv -f "$LIBDIR/.zdm.so.upgrade-test" "$LIBDIR/zdm.so"; }
restore() {
  [ -n "${APP:-}" ] && stop_app
  [ -f "$DIR/data/postmaster.pid" ] && as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast >/dev/null 2>&1
  put_library "$NEW_LIB"; rm -f "$EXTDIR/zdm--$OLD_VERSION.sql"
}
trap restore EXIT
cp sql/releases/zdm--$OLD_VERSION.sql "$EXTDIR/"
put_library "$OLD_LIB"

ZDM_EXAMPLE_INSTALLED=1 ZDM_EXTENSION_VERSION=$OLD_VERSION boot_shop "zdm.max_workers = 1"
trap restore EXIT   # boot_shop set its own
version() { psql_ -At -c "SELECT extversion FROM pg_extension WHERE extname = 'zdm'"; }
echo "extension: $(version)"

# orders belongs to shop_owner, who starts the rename; its e-mail CHECK has a
# 61-byte name (0.1.0 cut its copy's suffix). notes belongs to alice, who
# queues a NOT NULL on it and then gives the table to bob: 0.2.0 would run
# that job as bob, so the upgrade must pause it.
LONG=orders_customer_email_must_contain_an_at_sign_or_be_rejected_
psql_ <<SQL
CREATE ROLE shop_owner; CREATE ROLE alice; CREATE ROLE bob;
GRANT USAGE ON SCHEMA zdm TO shop_owner, alice, bob;   -- 0.1.0 did not grant it to PUBLIC
ALTER TABLE orders OWNER TO shop_owner;
ALTER TABLE orders ADD CONSTRAINT $LONG CHECK (customer_email LIKE '%@%');
CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 100) g;
ALTER TABLE notes OWNER TO alice;
SQL

echo "==> $OLD_VERSION: a rename backfilling slowly, constraint migrations queued behind it"
start_app 200
RENAME=$(psql_ -At -c "SET ROLE shop_owner" -c "SELECT zdm.expand_rename('orders', 'customer_email', 'email', background => false)")
psql_ -At -c "SET ROLE shop_owner" -c "SELECT zdm.start_backfill($RENAME, batch_size => 500, pause_ms => 300, target_batch_ms => 0)" >/dev/null
CHECK=$(psql_ -At -c "BEGIN" -c "SELECT zdm.add_check('orders', 'orders_total_nonnegative', 'total >= 0')" -c "COMMIT" 2>/dev/null | grep -E '^[0-9]+$')
NOTES=$(psql_ -At -c "SET ROLE alice" -c "BEGIN" -c "SELECT zdm.validate_not_null('notes', 'body')" -c "COMMIT" 2>/dev/null | grep -E '^[0-9]+$')
psql_ -c "ALTER TABLE notes OWNER TO bob"
for _ in $(seq 1 60); do
  done_rows=$(psql_ -At -c "SELECT rows_done FROM zdm.migrations WHERE id = $RENAME")
  [ "$done_rows" -ge 3000 ] && break; sleep 0.5
done
psql_ -At -c "SELECT '  ' || id || ' ' || kind || ': ' || phase || ', job ' || coalesce(job_state, '-') || ', ' || rows_done || ' rows' || coalesce(' (' || throttle_reason || ')', '') FROM zdm.status ORDER BY id"
[ "$(psql_ -At -c "SELECT phase || '/' || job_state FROM zdm.status WHERE id = $RENAME")" = backfilling/running ] || fail "the rename is not half-way"
[ "$(psql_ -At -c "SELECT string_agg(job_state, ',' ORDER BY id) FROM zdm.status WHERE id IN ($CHECK, $NOTES)")" = queued,queued ] || fail "the constraint migrations are not queued"
CURSOR_BEFORE=$(psql_ -At -c "SELECT cursor_block FROM zdm.migrations WHERE id = $RENAME")

echo "==> stop the server, install the new library, start it"
stop_app
as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m fast -w >/dev/null
put_library "$NEW_LIB"
as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" start -w >/dev/null
start_app 200
sleep 3
echo "extension: $(version)"
before=$(psql_ -At -c "SELECT rows_done || '/' || cursor_block FROM zdm.migrations WHERE id = $RENAME")
[ "${before#*/}" = "$CURSOR_BEFORE" ] || fail "the cursor moved across the restart ($CURSOR_BEFORE -> ${before#*/})"
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
[ "$(psql_ -At -c "SELECT job_state FROM zdm.status WHERE id = $NOTES")" = paused ] || fail "the job whose table changed owner was not paused"
echo "  notes: $(psql_ -At -c "SELECT last_error FROM zdm.status WHERE id = $NOTES")"
[ "$(psql_ -At -c "SELECT tgenabled FROM pg_trigger WHERE tgname = 'zdm_sync_$RENAME'")" = A ] || fail "the sync trigger is not ENABLE ALWAYS"
phase=$(psql_ -At -c "SELECT zdm.wait($RENAME, '5 minutes')" 2>/dev/null); echo "  rename: $phase"
[ "$phase" = backfilled ] || fail "the rename did not finish"
phase=$(psql_ -At -c "SELECT zdm.wait($CHECK, '5 minutes')" 2>/dev/null); echo "  check:  $phase"
[ "$phase" = contracted ] || fail "the check did not finish"
[ "$(psql_ -At -c "SELECT convalidated FROM pg_constraint WHERE conname = 'orders_total_nonnegative'")" = t ] || fail "the check is not validated"
psql_ -At -c "SET ROLE bob" -c "SELECT zdm.resume($NOTES)" >/dev/null
phase=$(psql_ -At -c "SELECT zdm.wait($NOTES, '5 minutes')" 2>/dev/null); echo "  notes (resumed by bob): $phase"
[ "$phase" = contracted ] || fail "the notes migration did not finish after resume"
stop_app
psql_ -At -c "SET ROLE shop_owner" -c "SELECT zdm.contract('orders', 'email')" >/dev/null
psql_ -At -c "SELECT zdm.validate_not_null('orders', 'email')" >/dev/null
psql_ -At -c "SELECT '  ' || id || ' ' || kind || ': ' || phase || ', job ' || coalesce(job_state, '-') || ', started by ' || started_by || ', runs as ' || owner FROM zdm.status ORDER BY id"
[ "$(psql_ -At -c "SELECT convalidated || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND conname = '$LONG'")" = "true CHECK ((email ~~ '%@%'::text))" ] \
  || fail "the carried CHECK did not get its original name back, validated, on email"
echo "  $LONG: validated, on email"

echo "==> the upgraded schema equals a fresh install's"
psql_ -c "REVOKE USAGE ON SCHEMA zdm FROM shop_owner, alice, bob"   # this test's own 0.1.0-era grants
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -X -q -c "CREATE DATABASE fresh"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d fresh -X -q -c "CREATE EXTENSION zdm"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d shop -X -q -f tests/upgrade/schema.sql > "$DIR/schema-upgraded.txt"
"$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d fresh -X -q -f tests/upgrade/schema.sql > "$DIR/schema-fresh.txt"
diff "$DIR/schema-fresh.txt" "$DIR/schema-upgraded.txt" || fail "the upgraded schema differs from a fresh one (diff above)"
echo "  $(wc -l < "$DIR/schema-fresh.txt") lines of schema description, equal (columns compared by name: added ones sit last)"

check_shop upgrade | sed 's#examples/upgrade#tests/upgrade#'
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
