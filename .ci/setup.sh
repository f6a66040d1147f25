#!/usr/bin/env bash
# Idempotent machine setup: PostgreSQL 15 + headers, clang, sudo,
# cargo-pgrx 0.18.1 and `cargo pgrx init`. Safe to run again; skips what is there.
set -euo pipefail

PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
PACKAGES="postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang pkg-config sudo make gcc"

missing=""
for p in $PACKAGES; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "==> installing:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0\.18\.1"; then
  echo "==> installing cargo-pgrx 0.18.1 (a few minutes)"
  cargo install cargo-pgrx --version 0.18.1 --locked
fi

if ! grep -q "^pg15" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
  echo "==> cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

# initdb refuses to run as root: test clusters run as the OS user postgres.
id postgres >/dev/null 2>&1 || { echo "user postgres is missing (it comes with postgresql-15)"; exit 1; }

# Citus, for the test that zdm refuses distributed tables: built from the
# tarball vendored beside this repository (no registry here ships Citus).
CITUS_BUILD="$(cd "$(dirname "$0")/.." && pwd)/../shared/vendor/build-citus.sh"
if [ ! -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ] && [ -f "$CITUS_BUILD" ]; then
  echo "==> building Citus (a few minutes)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env PG_CONFIG="$PG_CONFIG" bash "$CITUS_BUILD"
fi
