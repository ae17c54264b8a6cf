#!/usr/bin/env bash
# The whole test suite (`make test`; .ci/run calls it):
#   1. unit tests of the pure state machine and #[pg_test] in-database tests (cargo pgrx test)
#   2. build (release, what users get) + install the extension into the system PostgreSQL 15
#   3. a scratch cluster preloading lease_sched and pg_cron, then
#      - isolation specs (pg_isolation_regress): deterministic interleavings of sessions
#      - integration tests over real connections (tests/integration, cargo test)
# Set LEASE_TEST_ONLY=pgtest|isolation|bench|integration to run one part.
set -euo pipefail

run_all() {
  cd "$(dirname "$0")/.."
  scripts/setup.sh
  export PATH="$HOME/.cargo/bin:$PATH"
  PGBIN=/usr/lib/postgresql/15/bin
  PG_CONFIG=$PGBIN/pg_config
  only=${LEASE_TEST_ONLY:-all}
  want() { [ "$only" = all ] || [ "$only" = "$1" ]; }

  if want pgtest; then
    echo "== unit and in-database tests (cargo pgrx test)"
    pgtest_dir=/tmp/lease_sched_pgtest
    mkdir -p "$pgtest_dir" && chown postgres "$pgtest_dir"
    cargo pgrx test pg15 --runas postgres --pgdata "$pgtest_dir/data"
    echo "== the lease state machine: unit tests and exhaustive model check (crates/lease_model)"
    cargo test --release --manifest-path crates/lease_model/Cargo.toml
  fi

  echo "== building and installing lease_sched"
  cargo pgrx install --release --pg-config "$PG_CONFIG" >/tmp/lease_sched_install.log 2>&1 \
    || { tail -40 /tmp/lease_sched_install.log; exit 1; }

  dir=/tmp/lease_sched_test
  port=${LEASE_TEST_PORT:-55440}
  # Sweeps every second; no periodic whole-buffer flush during the run unless a test asks
  # for one (so tests that count row writes are exact); silent = 20 minutes.
  scripts/cluster.sh start "$dir" "$port" \
    "lease_sched.sweep_interval = '1s'" \
    "lease_sched.touch_flush_interval = '10min'" \
    "lease_sched.runtime_offline_after = '20min'" \
    "log_min_messages = warning"
  trap 'scripts/cluster.sh stop "$dir" immediate' EXIT
  export LEASE_SCHED_DSN="host=127.0.0.1 port=$port dbname=lease_sched user=postgres"
  export LEASE_SCHED_PGDATA="$dir/data" LEASE_SCHED_PGBIN="$PGBIN" LEASE_SCHED_LOG="$dir/server.log"
  $PGBIN/psql -h 127.0.0.1 -p "$port" -U postgres -d lease_sched -qc "CREATE EXTENSION lease_sched"

  if want isolation; then
    echo "== isolation specs (pg_isolation_regress)"
    out=/tmp/lease_sched_isolation
    rm -rf "$out" && mkdir -p "$out"
    specs=$(cd tests/isolation/specs && ls *.spec | sed 's/\.spec$//')
    $PGBIN/../lib/pgxs/src/test/isolation/pg_isolation_regress \
        --host=127.0.0.1 --port="$port" --user=postgres --use-existing --dbname=lease_sched \
        --inputdir=tests/isolation --outputdir="$out" $specs \
      || { cat "$out/regression.diffs" 2>/dev/null | head -80; exit 1; }
  fi

  if want bench; then
    echo "== benchmark smoke run (bench/run.sh --quick: every script once, no timing asserted)"
    bench/run.sh --quick --no-install --scale-duration 5
  fi

  if want integration; then
    echo "== integration tests (tests/integration)"
    venv=/tmp/lease_sched_venv
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import psycopg" 2>/dev/null \
      || { python3 -m venv "$venv" && "$venv/bin/pip" install -q 'psycopg[binary]>=3.1'; }
    export LEASE_SCHED_PYTHON="$venv/bin/python"
    cargo build -q --manifest-path tests/integration/Cargo.toml --examples
    cargo test --manifest-path tests/integration/Cargo.toml ${LEASE_TEST_CARGO_ARGS:-} -- --test-threads=8 "$@"
  fi
}

# One closing line for the whole run, summed over every runner above (cargo test and
# pg_isolation_regress), printed only when everything passed.
log=/tmp/lease_sched_test.log
run_all "$@" 2>&1 | tee "$log"
awk '/^test result:/ { passed += $4; failed += $6 }
     /All [0-9]+ tests passed/ { passed += $2 }
     END { printf "lease_sched: %d passed, %d failed\n", passed, failed }' "$log"
