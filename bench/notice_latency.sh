#!/usr/bin/env bash
# How long a deposed holder waits for its lease_sched_lost notice, under load: from the
# return of a steal's commit to the listener's receipt, p50/p99/max, while LOAD clients
# steal stale leases as fast as they can (tests/integration/examples/notice_latency.rs).
#
#   bench/notice_latency.sh [--no-install] [PROBES] [LOAD] [-- extra postgresql.conf lines]
#
# PostgreSQL from $PGBIN (default Debian's 15); a scratch cluster preloading lease_sched
# in /tmp/lease_sched_notice_latency, started and stopped here. With NOTICE_PRELOAD=""
# the cluster does not preload lease_sched: the notices are then sent inline by the
# stealing transaction, as they were before the sweeper sent them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN
install=1
[ "${1:-}" = --no-install ] && { install=0; shift; }
probes=${1:-1000} load=${2:-8}
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = -- ] && shift
major=$("$PGBIN/pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
if [ $install = 1 ]; then
  cargo pgrx install --release --pg-config "$PGBIN/pg_config" --no-default-features --features "pg$major" >/tmp/notice_latency_install.log 2>&1 \
    || { tail -30 /tmp/notice_latency_install.log; exit 1; }
fi
cargo build -q --release --manifest-path tests/integration/Cargo.toml --example notice_latency
dir=/tmp/lease_sched_notice_latency
port=$(free_ports 1)
LEASE_CLUSTER_PRELOAD=${NOTICE_PRELOAD-lease_sched} lease_cluster_start "$dir" "$port" "$@" >/dev/null
trap 'lease_cluster_stop "$dir" >/dev/null 2>&1 || true' EXIT
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d lease_sched -c "CREATE EXTENSION lease_sched"
sleep 2  # the sweeper attaches and sweeps once
echo "notice latency: PostgreSQL $major, preload '${NOTICE_PRELOAD-lease_sched}', $* ; load average $(cut -d' ' -f1-3 /proc/loadavg)"
LEASE_SCHED_DSN="host=127.0.0.1 port=$port dbname=lease_sched user=postgres" \
  target/release/examples/notice_latency "$probes" "$load"
