#!/usr/bin/env bash
# The portable edition's tests (docs/portable.md) on one PostgreSQL major, as a managed
# service runs it: a private copy of the PostgreSQL installation with every lease_sched file
# removed (scripts/private_pg.sh, private_copy), so nothing native can be reached; pg_cron
# preloaded where that PostgreSQL has it; the script of `make portable` run by a
# non-superuser owner (CREATEDB CREATEROLE, what the services give their admin role), and
#   - the isolation specs (tests/isolation) and
#   - the SQL examples (tests/regress)
# run against it, with the same expected output as the native edition. The only change to
# them: the `CREATE EXTENSION lease_sched` lines are dropped (from the input and the
# expected output alike; a spec's setup runs an empty DO block instead), since the owner installed
# the edition beforehand.
#   - the integration tests that concern the SQL contract (LEASE_PORTABLE_CARGO_TESTS),
#     with LEASE_SCHED_EDITION=portable: each test of native-only behaviour skips itself
#     and prints why (tests/integration/src/lib.rs, native_only).
#
#   scripts/portable_test.sh MAJOR       (scripts/test.sh runs it for each major: LEASE_TEST_ONLY=portable)
# Environment: LEASE_PORTABLE_ONLY  a comma list of isolation, regress, integration (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_NAME=portable_test
# shellcheck source=scripts/private_pg.sh
source scripts/private_pg.sh

major=${1:?major}
src_config=$(pg_config_of "$major") || { echo "$TEST_NAME: SKIP: no PostgreSQL $major (scripts/setup.sh installs it)"; exit 0; }
only=${LEASE_PORTABLE_ONLY:-isolation,regress,integration}
want() { [[ ",$only," == *",$1,"* ]]; }

root=/tmp/lease_sched_portable_pg$major
pg_config=$(private_copy "$src_config" "$root/install")
pgbin=$("$pg_config" --bindir)
pkglibdir=$("$pg_config" --pkglibdir)
if ls "$pkglibdir"/lease_sched* "$("$pg_config" --sharedir)"/extension/lease_sched* >/dev/null 2>&1; then
  die "lease_sched files are left in the private copy"
fi
has_cron=0; [ -e "$pkglibdir/pg_cron.so" ] && has_cron=1

script=$root/lease_sched_portable.sql
python3 scripts/portable.py "$script" >/dev/null

port=$(free_ports 1)
dir=$root/cluster
# The settings of the native suite's cluster (scripts/test.sh): no periodic whole-buffer
# flush during a run unless a test asks for one, silent = 20 minutes.
conf=("max_prepared_transactions = 10" "log_min_messages = warning" "max_connections = 200"
      "lease_sched.touch_flush_interval = '10min'" "lease_sched.runtime_offline_after = '20min'"
      # The other settings at the native defaults: without the library they are placeholders,
      # which SHOW (and ALTER SYSTEM) know only when set somewhere.
      "lease_sched.sweep_interval = '1s'" "lease_sched.retry_backoff_base = '10s'"
      "lease_sched.retry_backoff_max = '1h'" "lease_sched.retention = '30d'" "lease_sched.notify_lost = on")
[ $has_cron = 1 ] && conf+=("shared_preload_libraries = 'pg_cron'" "cron.database_name = 'lease_sched'")
pg_init "$dir" "$pgbin" "$port" "${conf[@]}"
pg_start "$dir" "$pgbin"
trap 'pg_stop "$dir" "$pgbin" immediate' EXIT

psql_() { "$pgbin/psql" -X -q -h 127.0.0.1 -p "$port" -v ON_ERROR_STOP=1 "$@"; }
psql_ -U postgres -d postgres -c "CREATE ROLE lease_admin LOGIN CREATEDB CREATEROLE"
for db in lease_sched lease_sched_regress; do
  psql_ -U postgres -d postgres -c "CREATE DATABASE $db OWNER lease_admin"
  psql_ -U lease_admin -d "$db" -f "$script" >/dev/null
done
[ $has_cron = 1 ] && psql_ -U postgres -d lease_sched -c "CREATE EXTENSION pg_cron"
say "PostgreSQL $major: the portable script installed by lease_admin (not a superuser) on port $port"

# The suites' files without their CREATE EXTENSION lines.
work=$root/suites
rm -rf "$work" && mkdir -p "$work"
cp -a tests/isolation tests/regress "$work/"
sed -i -E '/^\s*CREATE EXTENSION (IF NOT EXISTS )?lease_sched;\s*$/d' "$work"/regress/sql/*.sql "$work"/regress/expected/*.out
# (a spec's setup block must not be empty; its output is not part of the expected file)
# shellcheck disable=SC2016 # $$ is the SQL dollar quote, not a shell expansion
sed -i -E 's/^(\s*)CREATE EXTENSION (IF NOT EXISTS )?lease_sched;\s*$/\1DO $$BEGIN END$$;/' "$work"/isolation/specs/*.spec

status=0
# The suites' PGXS installcheck (tests/Makefile) on the copies, in the same databases as the
# native run.
out=$root/checks
checks=(make -s -C tests installcheck PG_CONFIG="$pg_config" PGPORT="$port" SUITES="$work" OUTDIR="$out")
if want isolation; then
  say "PostgreSQL $major: isolation specs against the portable edition"
  "${checks[@]}" REGRESS= \
    || { head -80 "$out/isolation/regression.diffs" 2>/dev/null; echo "failed step: PostgreSQL $major: portable isolation specs"; status=1; }
fi
if want regress; then
  say "PostgreSQL $major: SQL examples against the portable edition"
  "${checks[@]}" ISOLATION= \
    || { head -80 "$out/regress/regression.diffs" 2>/dev/null; echo "failed step: PostgreSQL $major: portable SQL examples"; status=1; }
fi
if want integration && [ -n "${LEASE_PORTABLE_CARGO_TESTS:-}" ]; then
  say "PostgreSQL $major: integration tests against the portable edition ($LEASE_PORTABLE_CARGO_TESTS)"
  # The sweep, as pg_cron's '1 seconds' schedule would call it (pg_cron 1.4 has only minutes),
  # as the owner. A test pauses it as it pauses the native worker: lease_sched.sweep_interval
  # set (ALTER SYSTEM) to more than a minute.
  # (Every name and operator qualified, and no NULLIF or IN, which look up = on the path: the
  # statement runs with the database's search_path, which a test makes hostile, as a pg_cron
  # command would.)
  sweep_sql="SELECT CASE WHEN coalesce(pg_catalog.current_setting('lease_sched.sweep_interval', true), '1s')::interval
                             OPERATOR(pg_catalog.<=) interval '1 minute'
                        THEN (SELECT pg_catalog.count(*) FROM lease_sched.sweep()) END"
  ( while "$pgbin/psql" -X -q -h 127.0.0.1 -p "$port" -U lease_admin -d lease_sched -c "$sweep_sql" >/dev/null 2>&1 || sleep 1; do sleep 1; done ) &
  sweeper=$!
  trap 'kill $sweeper 2>/dev/null; pg_stop "$dir" "$pgbin" immediate' EXIT
  # The Python the native run uses (scripts/test.sh), for the examples, clients and calendars.
  if [ -z "${LEASE_SCHED_PYTHON:-}" ]; then
    LEASE_SCHED_PYTHON=$(test_python)
    export LEASE_SCHED_PYTHON
  fi
  args=()
  for t in ${LEASE_PORTABLE_CARGO_TESTS//,/ }; do args+=(--test "$t"); done
  LEASE_SCHED_EDITION=portable LEASE_SCHED_DSN="host=127.0.0.1 port=$port dbname=lease_sched user=postgres" \
  LEASE_SCHED_PGDATA="$dir/data" LEASE_SCHED_PGBIN="$pgbin" LEASE_SCHED_LOG="$dir/server.log" \
  LEASE_SCHED_PG_MAJOR=$major LEASE_SCHED_HAS_PG_CRON=$has_cron \
    cargo test --no-fail-fast --manifest-path tests/integration/Cargo.toml "${args[@]}" -- --test-threads=8 \
    || { echo "failed cargo run: PostgreSQL $major: portable integration tests"; status=1; }
fi
exit $status
