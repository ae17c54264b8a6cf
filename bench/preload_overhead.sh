#!/usr/bin/env bash
# What merely preloading lease_sched costs a database that does not use it: pgbench's
# built-in TPC-B-like workload on two clusters, side by side, alternating rounds. One
# preloads lease_sched with default settings and has the extension created (its worker runs
# and sweeps every 10 s); the other preloads nothing. Same binaries, same settings.
#
#   bench/preload_overhead.sh [--rounds N] [--duration S] [--scale N] [--sweep-interval I]
#
# Prints each round's tps and the ratio of the medians (with / without). Clusters in
# /tmp/lease_sched_preload_{with,without} on ports the kernel picks as free; PGBIN as in
# scripts/cluster.sh (default Debian's 15). Uses the lease_sched already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 duration=20 scale=10 sweep_interval=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --scale) scale=$2; shift ;;
    --sweep-interval) sweep_interval=$2; shift ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
export PGBIN
ports=($(scripts/cluster.sh freeport 2))
declare -A port=([with]=${ports[0]} [without]=${ports[1]})
conf=("shared_buffers = '512MB'" "max_wal_size = '4GB'" "log_min_messages = warning")
[ -n "$sweep_interval" ] && conf+=("lease_sched.sweep_interval = '$sweep_interval'")
stop() { for side in with without; do scripts/cluster.sh stop "/tmp/lease_sched_preload_$side"; done; }
trap stop EXIT
LEASE_CLUSTER_PRELOAD=lease_sched scripts/cluster.sh start /tmp/lease_sched_preload_with "${port[with]}" "${conf[@]}"
LEASE_CLUSTER_PRELOAD= scripts/cluster.sh start /tmp/lease_sched_preload_without "${port[without]}" "${conf[@]}"
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "${port[with]}" -U postgres -d lease_sched -c "CREATE EXTENSION lease_sched"
for side in with without; do
  "$PGBIN/pgbench" -q -i -s "$scale" -h 127.0.0.1 -p "${port[$side]}" -U postgres lease_sched >/dev/null 2>&1
done
declare -A tps=([with]="" [without]="")
for round in $(seq "$rounds"); do
  for side in with without; do
    "$PGBIN/psql" -X -q -h 127.0.0.1 -p "${port[$side]}" -U postgres -d lease_sched -c "CHECKPOINT"
    t=$("$PGBIN/pgbench" -n -M prepared -c 8 -j 2 -T "$duration" -h 127.0.0.1 -p "${port[$side]}" -U postgres lease_sched 2>&1 \
        | awk '/^tps = /{print $3}')
    tps[$side]+="$t "
    printf 'preload overhead: round %d %-8s tps %s\n' "$round" "$side" "$t"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
with=$(echo "${tps[with]}" | median) without=$(echo "${tps[without]}" | median)
awk -v a="$with" -v b="$without" \
  'BEGIN { printf "preload overhead: median tps with lease_sched %.0f, without %.0f: ratio %.3f (%+.1f%%)\n", a, b, a / b, (a / b - 1) * 100 }'
