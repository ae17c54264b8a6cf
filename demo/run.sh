#!/usr/bin/env bash
# `make demo` (demo/run.sh): build and install lease_sched, start a scratch cluster on port 55450, and
# play demo/scenario.sh against it. The cluster stays up afterwards for you to explore.
# PostgreSQL 15 (Debian's) by default; LEASE_DEMO_MAJOR=18 plays it on PostgreSQL 18.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
major=${LEASE_DEMO_MAJOR:-15}
export PGBIN=$(scripts/cluster.sh pgbin "$major")
echo "demo: building and installing lease_sched into PostgreSQL $major (release build; slow only the first time)..."
cargo pgrx install --release --pg-config "$PGBIN/pg_config" --no-default-features --features "pg$major" \
    >/tmp/lease_sched_demo_install.log 2>&1 \
  || { tail -40 /tmp/lease_sched_demo_install.log; exit 1; }
port=55450
scripts/cluster.sh start /tmp/lease_sched_demo "$port"
export PATH="$PGBIN:$PATH" PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=lease_sched
psql -X -qc "CREATE EXTENSION lease_sched"
demo/scenario.sh
cat <<MSG

The cluster is still running. Explore it with:
    $PGBIN/psql -h 127.0.0.1 -p $port -U postgres lease_sched
Stop it with:
    PGBIN=$PGBIN scripts/cluster.sh stop /tmp/lease_sched_demo
MSG
