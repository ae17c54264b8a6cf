#!/usr/bin/env bash
# `make demo`: build and install lease_sched, start a scratch cluster on port 55450, and
# play demo/scenario.sh against it. The cluster stays up afterwards for you to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "demo: building and installing lease_sched (release build; slow only the first time)..."
cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config >/tmp/lease_sched_demo_install.log 2>&1 \
  || { tail -40 /tmp/lease_sched_demo_install.log; exit 1; }
port=55450
scripts/cluster.sh start /tmp/lease_sched_demo "$port"
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=lease_sched
psql -qc "CREATE EXTENSION lease_sched"
demo/scenario.sh
cat <<MSG

The cluster is still running. Explore it with:
    psql -h 127.0.0.1 -p $port -U postgres lease_sched
Stop it with:
    scripts/cluster.sh stop /tmp/lease_sched_demo
MSG
