#!/usr/bin/env bash
# `make demo` (demo/run.sh): build and install lease_sched, start a scratch cluster on port 55450, and
# play demo/scenario.sh against it. The cluster stays up afterwards for you to explore.
# PostgreSQL 15 (Debian's) by default; LEASE_DEMO_MAJOR=18 plays it on PostgreSQL 18.
# Installs only what the demo needs (scripts/setup.sh demo): no Go, pgbouncer or exporter.
set -euo pipefail
cd "$(dirname "$0")/.."
major=${LEASE_DEMO_MAJOR:-15}
scripts/setup.sh demo "$major"
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=$(pg_bin "$major")
export PGBIN
dir=/tmp/lease_sched_demo
port=55450

# The build is quiet (its output goes to a log) but not silent: the log's path first, then
# the elapsed time and what cargo is compiling, every 15 seconds.
log=/tmp/lease_sched_demo_install.log
echo "demo: building and installing lease_sched into PostgreSQL $major (release build: a few minutes the first time,"
echo "      seconds afterwards); the full output goes to $log"
start=$SECONDS
cargo pgrx install --release --pg-config "$PGBIN/pg_config" --no-default-features --features "pg$major" >"$log" 2>&1 &
build=$!
while kill -0 "$build" 2>/dev/null; do
  for _ in $(seq 15); do kill -0 "$build" 2>/dev/null && sleep 1; done
  if kill -0 "$build" 2>/dev/null; then
    last=$(grep -aoE '(Compiling|Building|Installing|Finished|Copying|Discovered|Writing) [^ ]+( v[^ ]+)?' "$log" | tail -1 || true)
    echo "demo:   ... $((SECONDS - start)) s${last:+ ($last)}"
  fi
done
if ! wait "$build"; then
  tail -40 "$log"
  echo "demo: the build failed after $((SECONDS - start)) s; the full output is in $log" >&2
  exit 1
fi
echo "demo: built and installed in $((SECONDS - start)) s"

if [ -d "$dir/data" ]; then
  echo "demo: a demo cluster from an earlier run is in $dir: stopping it and starting a fresh one"
  echo "      (its data is wiped; copy $dir away first if you want to keep it)"
fi
lease_cluster_start "$dir" "$port"
export PATH="$PGBIN:$PATH" PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=lease_sched
psql -X -qc "CREATE EXTENSION lease_sched"
# pg_cron is preloaded where this PostgreSQL has it (15 here), with cron.database_name =
# lease_sched: create it, so api.md's cron.schedule examples run as written.
if psql -X -qAtc "SHOW shared_preload_libraries" | grep -q pg_cron; then
  psql -X -qc "CREATE EXTENSION pg_cron"
  cron="pg_cron is created in it (cron.schedule works there)."
else
  cron="PostgreSQL $major here has no pg_cron."
fi
demo/scenario.sh
cat <<MSG

The cluster is still running, in database lease_sched; $cron
Explore it with:
    $PGBIN/psql -h 127.0.0.1 -p $port -U postgres lease_sched
Stop it with:
    PGBIN=$PGBIN scripts/cluster.sh stop $dir
(make demo again starts a fresh cluster: this one's data is wiped.)
MSG
