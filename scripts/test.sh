#!/usr/bin/env bash
# The whole test suite (`make test`; .ci/run calls it). For each PostgreSQL major in
# LEASE_TEST_MAJORS (default: LEASE_MAJORS of scripts/lib.sh, "15 18"; 15 is Debian's, 18 the PyPI build that
# scripts/setup.sh installs under /opt/lease_sched/pg18):
#   1. #[pg_test] in-database tests (cargo pgrx test pgNN)
#   2. build (release, what users get) + install the extension into that PostgreSQL
#   3. a scratch cluster preloading lease_sched (and pg_cron where that PostgreSQL has it:
#      15 only), then
#      - isolation specs (pg_isolation_regress): deterministic interleavings of sessions
#      - SQL examples (pg_regress, tests/regress): the SQL surface and its exact output, in
#        their own database lease_sched_regress
#      - the benchmark smoke run (bench/run.sh --quick)
#      - integration tests over real connections (tests/integration, cargo test), with a
#        second small cluster that does NOT preload lease_sched for tests/no_preload.rs, and a
#        third that sweeps every database with the extension for tests/every_database.rs
#   4. the portable edition (scripts/portable_test.sh): the script of `make portable` installed
#      by a non-superuser on a private copy of that PostgreSQL without lease_sched's files,
#      then the isolation specs, the SQL examples and the integration tests of the SQL
#      contract against it (native-only tests skip themselves, saying why)
# then, once: the unit tests and model check of the pure state machine (crates/lease_model),
# and the packaging scripts scripts/upgrade_test.sh, scripts/pg_upgrade_test.sh and
# scripts/package_test.sh where they exist (each exits 0 with a SKIP message when it cannot run).
#
# Environment:
#   LEASE_TEST_MAJORS="15 18"   which majors (e.g. LEASE_TEST_MAJORS=18; default all of LEASE_MAJORS)
#   LEASE_TEST_ONLY=all         or a comma list of: lint, pgtest, model, isolation, regress, bench,
#                               integration, portable, packaging (all three scripts) or one of
#                               upgrade, pg_upgrade, package; scaleout (PL/Proxy routing)
#   LEASE_TEST_PORT_BASE        fixed test cluster ports: 15 -> base, 18 -> base+1; the clusters
#                               without preload: 15 -> base+6, 18 -> base+7; the benchmark
#                               clusters base+20+slot. Unset (the default), every cluster gets
#                               a port the kernel picks as free (scripts/lib.sh, free_ports):
#                               a fixed port collides with whatever else runs on the machine.
#   LEASE_TEST_CARGO_ARGS       extra arguments for the integration `cargo test`
#   LEASE_TEST_PGBIN_<N>        the bin directory of PostgreSQL N (default: scripts/lib.sh, pg_bin)
# Arguments are passed to the integration test binaries (e.g. --nocapture).
# Clusters live in /tmp/lease_sched_test_pgNN (port base+slot) and
# /tmp/lease_sched_nopreload_pgNN; the in-database tests in /tmp/lease_sched_pgtest_pgNN.
set -euo pipefail

# A section header, with the time since the start of the run.
section() { echo "== [$((SECONDS / 60))m$(printf %02d $((SECONDS % 60)))s] $*"; }
# A step that failed: noted, and the run goes on with the next step (the other major, the
# packaging scripts); the run fails at the end. Steps whose runner prints no per-test count
# (a build, pg_isolation_regress, bench, a packaging script) say "failed step:" and count
# as one failure in the closing line; cargo test failures are counted by their own lines.
failures=()
failed_step() { echo "failed step: $*"; failures+=("$*"); }
failed_cargo() { echo "failed cargo run: $*"; failures+=("$*"); }
# lint WHAT CMD...: one check of the lint layer; counts as one test, passed or failed.
lint() {
  local what=$1; shift
  if "$@"; then echo "passed check: lint: $what"; else failed_step "lint: $what"; fi
}
# Every shell script of the tree, for shellcheck: *.sh, the Debian maintainer script
# templates (*.in, sh) and whatever else starts with a shell's #! line. Git's list when this
# is a git checkout (nothing untracked or ignored), else every file but target/ and node_modules/.
shell_scripts() {
  { git ls-files 2>/dev/null || find . \( -name target -o -name node_modules -o -name .git \) -prune -o -type f -print; } |
    while read -r f; do
      [ -f "$f" ] || continue
      case "$f" in target/*|./target/*|*/node_modules/*) continue ;; *.sh|*.sh.in|*/debian/*.in) echo "$f"; continue ;; esac
      if head -n1 "$f" | grep -qE '^#!.*[/ ](ba|da)?sh$'; then echo "$f"; fi
    done
}

run_all() {
  scripts/setup.sh
  export PATH="$HOME/.cargo/bin:$PATH"
  majors=${LEASE_TEST_MAJORS:-${LEASE_MAJORS[*]}}
  only=${LEASE_TEST_ONLY:-all}
  base=${LEASE_TEST_PORT_BASE:-}
  # A port for the cluster at OFFSET from the fixed base, or a free one.
  test_port() { if [ -n "$base" ]; then echo $((base + $1)); else free_ports 1; fi; }
  want() {
    [ "$only" = all ] && return 0
    local w
    for w in ${only//,/ }; do
      [ "$w" = "$1" ] && return 0
      [ "$w" = packaging ] && case "$1" in upgrade|pg_upgrade|package) return 0 ;; esac
    done
    return 1
  }
  clusters=()
  stop_clusters() {
    local c
    for c in "${clusters[@]}"; do pg_stop "${c#*:}" "${c%%:*}" immediate; done
    clusters=()
  }
  trap stop_clusters EXIT

  if want lint; then
    section "lint: checks of the source, once (no PostgreSQL)"
    local scripts; mapfile -t scripts < <(shell_scripts)
    # One check a line: what it is, then the command.
    lint "shellcheck (every shell script)" shellcheck -x "${scripts[@]}"
    lint "cargo fmt --check (the style of rustfmt.toml)" cargo fmt --all --check
    lint "clippy -D warnings: lease_model, the clients, examples, tests" \
      cargo clippy -q --workspace --exclude lease_sched --all-targets -- -D warnings
    local m
    for m in $majors; do
      lint "clippy -D warnings: the extension for PostgreSQL $m" \
        cargo clippy -q --all-targets --no-default-features --features "pg$m pg_test" -- -D warnings
    done
  fi

  for major in $majors; do
    run_major "$major" "$@"
  done

  if want model; then
    section "the lease state machine: unit tests and exhaustive model check (crates/lease_model)"
    cargo test --release --manifest-path crates/lease_model/Cargo.toml || failed_cargo "crates/lease_model"
  fi

  for name in upgrade pg_upgrade package; do
    script=scripts/${name}_test.sh
    if want "$name" && [ -x "$script" ]; then
      section "$script"
      out=/tmp/lease_sched_${name}_test.log
      if ! "$script" 2>&1 | tee "$out"; then
        failed_step "$script"
      elif grep -q 'SKIP' "$out"; then
        echo "skipped script: $script ($(grep -m1 'SKIP' "$out"))"
      else
        echo "passed script: $script"
      fi
    fi
  done
  # The shortened scale-out suite: routing through PL/Proxy over two plain
  # partitions of the PostgreSQL 15 install (`make scaleout` runs the failover suite).
  if want scaleout && [ -x scripts/scaleout.sh ]; then
    section "scale-out routing through PL/Proxy (scripts/scaleout.sh --quick)"
    if scripts/scaleout.sh --quick; then
      echo "passed script: scripts/scaleout.sh --quick"
    else
      failed_step "scripts/scaleout.sh --quick"
    fi
  fi
  if [ ${#failures[@]} -gt 0 ]; then
    echo "FAILED:"; printf '  %s\n' "${failures[@]}"
    exit 1
  fi
}

run_major() {
  local major=$1; shift
  # The major's place in LEASE_MAJORS: its offset from LEASE_TEST_PORT_BASE.
  local slot=-1 i
  for i in "${!LEASE_MAJORS[@]}"; do [ "${LEASE_MAJORS[i]}" = "$major" ] && slot=$i; done
  [ "$slot" -ge 0 ] || { echo "test: PostgreSQL $major is not one of LEASE_MAJORS (${LEASE_MAJORS[*]}, scripts/lib.sh)" >&2; exit 2; }
  PGBIN=$(pg_bin "$major")
  export PGBIN
  local pg_config=$PGBIN/pg_config
  "$pg_config" --version | grep -q "^PostgreSQL $major" \
    || { echo "test: $pg_config is not PostgreSQL $major" >&2; exit 1; }
  local features=(--no-default-features --features "pg$major")
  local has_cron=0
  [ -e "$("$pg_config" --pkglibdir)/pg_cron.so" ] && has_cron=1
  echo "==== PostgreSQL $major ($PGBIN)$([ $has_cron = 1 ] || echo '; no pg_cron: its tests are skipped')"

  if want pgtest; then
    section "PostgreSQL $major: in-database tests (cargo pgrx test pg$major)"
    local pgtest_dir=/tmp/lease_sched_pgtest_pg$major
    mkdir -p "$pgtest_dir" && chown postgres "$pgtest_dir"
    cargo pgrx test "pg$major" --runas postgres --pgdata "$pgtest_dir/data" || failed_cargo "PostgreSQL $major: cargo pgrx test"
  fi

  # The portable edition needs no build: its own cluster on a copy without lease_sched.so.
  if want portable; then
    section "PostgreSQL $major: the portable edition (scripts/portable_test.sh)"
    LEASE_PORTABLE_CARGO_TESTS=${LEASE_PORTABLE_CARGO_TESTS-$PORTABLE_CARGO_TESTS} scripts/portable_test.sh "$major" \
      || failed_step "PostgreSQL $major: the portable edition"
  fi

  want isolation || want regress || want bench || want integration || return 0

  section "PostgreSQL $major: building and installing lease_sched (release)"
  local log=/tmp/lease_sched_install_pg$major.log
  cargo pgrx install --release --pg-config "$pg_config" "${features[@]}" >"$log" 2>&1 \
    || { tail -40 "$log"; failed_step "PostgreSQL $major: build and install (the rest of $major is not run)"; return 0; }

  local dir=/tmp/lease_sched_test_pg$major port
  port=$(test_port "$slot")
  # Sweeps every second; no periodic whole-buffer flush during the run unless a test asks
  # for one (so tests that count row writes are exact); silent = 20 minutes.
  clusters+=("$PGBIN:$dir")
  lease_cluster_start "$dir" "$port" \
    "lease_sched.sweep_interval = '1s'" \
    "lease_sched.touch_flush_interval = '10min'" \
    "lease_sched.runtime_offline_after = '20min'" \
    "max_prepared_transactions = 10" \
    "log_min_messages = warning" \
    || { failed_step "PostgreSQL $major: test cluster on port $port (the rest of $major is not run)"; stop_clusters; return 0; }
  export LEASE_SCHED_DSN="host=127.0.0.1 port=$port dbname=lease_sched user=postgres"
  export LEASE_SCHED_PGDATA="$dir/data" LEASE_SCHED_PGBIN="$PGBIN" LEASE_SCHED_LOG="$dir/server.log"
  export LEASE_SCHED_PG_MAJOR=$major LEASE_SCHED_HAS_PG_CRON=$has_cron
  "$PGBIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d lease_sched -qc "CREATE EXTENSION lease_sched"

  # The isolation specs and the SQL examples: PGXS installcheck (tests/Makefile), or its
  # accept target with LEASE_ACCEPT=1 (outputs that differ become the expected ones).
  local checks_out=/tmp/lease_sched_checks_pg$major
  local checks=(make -s -C tests "$([ "${LEASE_ACCEPT:-0}" = 1 ] && echo accept || echo installcheck)"
                PG_CONFIG="$pg_config" PGPORT="$port" OUTDIR="$checks_out")
  if want isolation; then
    section "PostgreSQL $major: isolation specs (pg_isolation_regress, tests/isolation)"
    "${checks[@]}" REGRESS= \
      || { head -80 "$checks_out/isolation/regression.diffs" 2>/dev/null; failed_step "PostgreSQL $major: isolation specs"; }
  fi

  if want regress; then
    section "PostgreSQL $major: SQL examples (pg_regress, tests/regress)"
    # No type in a function without a pinned search_path resolves through the caller's path.
    python3 scripts/check_search_path.py || failed_step "scripts/check_search_path.py"
    # A database of its own, made anew: the files start from CREATE EXTENSION, and no
    # sweeper works there (lease_sched.database names another), so every output is exact.
    PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -q \
        -c "DROP DATABASE IF EXISTS lease_sched_regress" -c "CREATE DATABASE lease_sched_regress"
    "${checks[@]}" ISOLATION= \
      || { head -80 "$checks_out/regress/regression.diffs" 2>/dev/null; failed_step "PostgreSQL $major: SQL examples (pg_regress)"; }
  fi

  if want bench; then
    section "PostgreSQL $major: benchmark smoke run (bench/run.sh --quick: every script once, no timing asserted)"
    LEASE_BENCH_DIR=/tmp/lease_sched_bench_pg$major LEASE_BENCH_PORT=$(test_port $((20 + slot))) \
      bench/run.sh --quick --no-install --scale-duration 5 || failed_step "PostgreSQL $major: bench smoke run"
  fi

  if want integration; then
    # A second cluster that does not preload lease_sched (pg_cron only, where there is one):
    # tests/integration/tests/no_preload.rs.
    local np_dir=/tmp/lease_sched_nopreload_pg$major np_port
    np_port=$(test_port $((6 + slot)))
    clusters+=("$PGBIN:$np_dir")
    LEASE_CLUSTER_PRELOAD=$([ $has_cron = 1 ] && echo pg_cron || true) \
      lease_cluster_start "$np_dir" "$np_port" "log_min_messages = warning" \
      || failed_step "PostgreSQL $major: cluster without preload on port $np_port"
    export LEASE_SCHED_NOPRELOAD_DSN="host=127.0.0.1 port=$np_port dbname=lease_sched user=postgres"
    # A third that sweeps every database with the extension (lease_sched.database unset),
    # at most three: tests/integration/tests/every_database.rs.
    local ed_dir=/tmp/lease_sched_everydb_pg$major ed_port
    ed_port=$(test_port $((12 + slot)))
    clusters+=("$PGBIN:$ed_dir")
    lease_cluster_start "$ed_dir" "$ed_port" "lease_sched.database = ''" "lease_sched.max_databases = 3" \
        "lease_sched.sweep_interval = '1s'" "log_min_messages = warning" \
      || failed_step "PostgreSQL $major: cluster sweeping every database on port $ed_port"
    export LEASE_SCHED_EVERYDB_DSN="host=127.0.0.1 port=$ed_port dbname=lease_sched user=postgres"

    section "PostgreSQL $major: integration tests (tests/integration)"
    LEASE_SCHED_PYTHON=$(test_python)
    export LEASE_SCHED_PYTHON
    cargo build -q --manifest-path examples/Cargo.toml
    # shellcheck disable=SC2086 # LEASE_TEST_CARGO_ARGS: several arguments, one a word
    cargo test --no-fail-fast --manifest-path tests/integration/Cargo.toml ${LEASE_TEST_CARGO_ARGS:-} -- --test-threads=8 "$@" \
      || failed_cargo "PostgreSQL $major: integration tests"
  fi
  stop_clusters
}

# The integration tests that concern the SQL contract, run against the portable edition
# too (LEASE_SCHED_EDITION=portable; their native-only tests skip themselves).
PORTABLE_CARGO_TESTS=portable_edition,lease_core,locks,jobs,fences,notices,tokens,hostile_input,search_path,model_traces,calendars,scheduling,pg_cron,runtimes,examples,clients

cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# One closing line for the whole run, summed over every runner above (cargo test,
# pg_isolation_regress, the packaging scripts). A test that skipped itself (it prints
# "skipped test: ...") counts as skipped, not passed. The exit status is run_all's.
log=/tmp/lease_sched_test.log
set +e
run_all "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk -v secs=$SECONDS -v status="$status" \
    '/^test result:/ { passed += $4; failed += $6 }
     /^failed step: / { failed++ }
     match($0, /All [0-9]+ tests passed/) { split(substr($0, RSTART, RLENGTH), w, " "); passed += w[2] }
     /skipped test: / { passed--; skipped++ }
     /^skipped script: / { skipped++ }
     /^passed script: / { passed++ }
     /^passed check: / { passed++ }
     END { if (status != 0 && failed == 0) failed = 1
           printf "(%d min %d s)\nlease_sched: %d passed, %d failed, %d skipped\n", secs / 60, secs % 60, passed, failed, skipped }' "$log"
exit "$status"
