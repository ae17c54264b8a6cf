#!/usr/bin/env bash
# What merely preloading lease_sched costs a database that does not use it: pgbench's
# built-in TPC-B-like workload on two clusters, side by side, alternating rounds. One
# preloads lease_sched with default settings and has the extension created (its worker runs
# and sweeps every 10 s); the other preloads nothing. Same binaries, same settings.
#
#   bench/preload_overhead.sh [--rounds N] [--duration S] [--scale N] [--sweep-interval I] [--sync on|off]
#                               [--builtin tpcb-like|simple-update|select-only]
#
# synchronous_commit is off by default: what preloading could cost is CPU and shared memory,
# and with it on, both sides wait on the disk's flushes, whose time varies more between
# rounds than the effect measured.
#
# Prints each round's tps and the ratio of the medians (with / without). Clusters in
# /tmp/lease_sched_preload_{with,without} on ports the kernel picks as free; PGBIN as in
# scripts/lib.sh (default Debian's 15). Uses the lease_sched already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=7 duration=10 scale=10 sweep_interval="" sync=off builtin=tpcb-like
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift ;;
    --duration) duration=$2; shift ;;
    --scale) scale=$2; shift ;;
    --sweep-interval) sweep_interval=$2; shift ;;
    --sync) sync=$2; shift ;;
    --builtin) builtin=$2; shift ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN
mapfile -t ports < <(free_ports 2)
declare -A port=([with]=${ports[0]} [without]=${ports[1]})
conf=("shared_buffers = '512MB'" "max_wal_size = '4GB'" "log_min_messages = warning" "synchronous_commit = $sync")
[ -n "$sweep_interval" ] && conf+=("lease_sched.sweep_interval = '$sweep_interval'")
stop() { for side in with without; do lease_cluster_stop "/tmp/lease_sched_preload_$side"; done; }
trap stop EXIT
LEASE_CLUSTER_PRELOAD=lease_sched lease_cluster_start /tmp/lease_sched_preload_with "${port[with]}" "${conf[@]}"
LEASE_CLUSTER_PRELOAD='' lease_cluster_start /tmp/lease_sched_preload_without "${port[without]}" "${conf[@]}"
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "${port[with]}" -U postgres -d lease_sched -c "CREATE EXTENSION lease_sched"
for side in with without; do
  "$PGBIN/pgbench" -q -i -s "$scale" -h 127.0.0.1 -p "${port[$side]}" -U postgres lease_sched >/dev/null 2>&1
done
for side in with without; do
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "${port[$side]}" -U postgres -d lease_sched -c "VACUUM ANALYZE" -c "CHECKPOINT"
done
sweeper_ticks() {
  local pid
  pid=$("$PGBIN/psql" -X -qAt -h 127.0.0.1 -p "${port[with]}" -U postgres -d lease_sched \
          -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'")
  [ -n "$pid" ] && awk '{print $14 + $15}' "/proc/$pid/stat" || echo 0
}
sweeper0=$(sweeper_ticks) started=$SECONDS
declare -A tps=([with]="" [without]="")
for round in $(seq "$rounds"); do
  for side in with without; do
    t=$("$PGBIN/pgbench" -n -M prepared -b "$builtin" -c 8 -j 2 -T "$duration" -h 127.0.0.1 -p "${port[$side]}" -U postgres lease_sched 2>&1 \
        | awk '/^tps = /{print $3}')
    tps[$side]+="$t "
    printf 'preload overhead: round %d %-8s tps %s\n' "$round" "$side" "$t"
  done
done
sweeper1=$(sweeper_ticks)
awk -v t=$((sweeper1 - sweeper0)) -v hz="$(getconf CLK_TCK)" -v s=$((SECONDS - started)) \
  'BEGIN { printf "preload overhead: the sweeper used %.2f s of CPU in %d s (%.3f %% of one core)\n", t / hz, s, t / hz / s * 100 }'
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
with=$(echo "${tps[with]}" | median) without=$(echo "${tps[without]}" | median)
awk -v a="$with" -v b="$without" \
  'BEGIN { printf "preload overhead: median tps with lease_sched %.0f, without %.0f: ratio %.3f (%+.1f%%)\n", a, b, a / b, (a / b - 1) * 100 }'
