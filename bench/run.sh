#!/usr/bin/env bash
# shellcheck disable=SC2317 # the args_*/prep_* functions and cleanup run indirectly ($args, $prepare, trap)
# `make bench`: lease_sched against the SQL users write by hand, side by side.
#
#   bench/run.sh            the full run (about 45 minutes on 2 cores; writes docs/benchmarks.svg)
#   bench/run.sh --quick    a smoke run (about a minute): every script once, short, small history
#
# It installs what it needs (scripts/setup.sh, then a release build of the extension),
# starts its own scratch cluster on port 55460 in /tmp/lease_sched_bench (preloading
# lease_sched; PostgreSQL from $PGBIN, default Debian's 15; LEASE_BENCH_PORT and
# LEASE_BENCH_DIR change port and directory), loads CREATE EXTENSION lease_sched next to bench/fixtures/baseline.sql (the
# hand-written schema, in schema `baseline`) and bench/fixtures/helpers.sql (set-up helpers), and
# runs every case as extension/baseline pairs, alternately, for --rounds rounds. Raw pgbench
# output and before/after counters go to bench/results/<timestamp>/; bench/tooling/report.py turns
# them into bench/results/<timestamp>.md (medians, ratios, targets) and a chart.
# Exits non-zero when any pgbench run fails or a sanity check on the outcomes does not hold.
#
# Options (defaults of the full run; --quick changes the ones marked *):
#   --quick                       short smoke run
#   --duration S        10      * seconds per pgbench run (quick: 2)
#   --rounds N          3       * rounds of ext/baseline pairs (quick: 1)
#   --clients N         8         pgbench -c (and -j 2)
#   --sync "on off"     on off  * synchronous_commit settings to run under (quick: on)
#   --history "..."     1000 100000 1000000 * history sizes for cases 8-9 (quick: 1000 10000);
#                                 always run with synchronous_commit = off
#   --history-duration S 5      * seconds per run at each history size (quick: 1)
#   --scale-duration S  300     * seconds of the open-loop scale run, per side and sync mode (quick: 10)
#   --cases LIST        all       comma list of: ceiling,claim_fresh,claim_contended,steal,
#                                 heartbeat,finish,touch,touch_batch,lock_acquire,lock_heartbeat,
#                                 lease_fence,lock_fence,breakdown,history,scale
#   --chart PATH        docs/benchmarks.svg * also write the chart here (quick: nowhere)
#   --set "NAME = VALUE"          one more postgresql.conf line for the cluster (repeatable;
#                                 e.g. --set "lease_sched.notify_lost = off")
#   --no-install                  use the lease_sched already installed (no cargo build)
#   --portable SCRIPT             the portable edition (docs/portable.md) instead: nothing is
#                                 built or preloaded, SCRIPT (dist/lease_sched_portable--*.sql,
#                                 `make portable`) is installed, and lease_sched.sweep() is
#                                 called every 10 s as a pg_cron schedule would
#   --keep                        leave the cluster running afterwards
set -euo pipefail
orig_args="$*"
cd "$(dirname "$0")/.."
root=$(pwd)
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN  # lease_cluster_start starts the cluster with the same binaries
DIR=${LEASE_BENCH_DIR:-/tmp/lease_sched_bench}
PORT=${LEASE_BENCH_PORT:-55460}

quick=0 duration=10 rounds=3 clients=8 threads=2 sync_modes="on off"
history_sizes="1000 100000 1000000" history_duration=5 scale_duration=300
cases=all chart="docs/benchmarks.svg" install=1 keep=0 breakdown_duration=3 extra_conf=() portable=
set_quick() { quick=1 duration=2 rounds=1 sync_modes="on" history_sizes="1000 10000" history_duration=1
              scale_duration=10 breakdown_duration=1 chart=""; }
# --quick first, so that explicit options override what it sets.
for a in "$@"; do [ "$a" = --quick ] && set_quick; done
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) ;;
    --duration) duration=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --clients) clients=$2; shift ;;
    --sync) sync_modes=$2; shift ;;
    --history) history_sizes=$2; shift ;;
    --history-duration) history_duration=$2; shift ;;
    --scale-duration) scale_duration=$2; shift ;;
    --cases) cases=$2; shift ;;
    --chart) chart=$2; shift ;;
    --set) extra_conf+=("$2"); shift ;;
    --no-install) install=0 ;;
    --portable) portable=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); install=0; shift ;;
    --keep) keep=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
want() { [ "$cases" = all ] || [[ ",$cases," == *",$1,"* ]]; }

# Workload sizes.
N_RUNTIMES=$(( clients * 1000 > 10000 ? clients * 1000 : 10000 ))  # case 6/7: runtimes
LEASES_PER_CLIENT=100            # cases 3/4/12-14: leases (locks) each client cycles through
CONTENDED_PLANS=16               # case 2: live plans everybody fights over
BATCH=1000                       # case 7: ids per runtime_touch_batch
SCALE_RUNTIMES=100000 SCALE_TOUCH_EVERY=15   # case 10: 10^5 runtimes, one touch per 15 s each
SCALE_LEASES=10000 SCALE_HB_EVERY=10         #          10^4 leases, one heartbeat per 10 s each

stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$root/bench/results"
raw="$results/$stamp"
mkdir -p "$raw"
runs="$raw/runs.jsonl"
: >"$runs"
echo "bench: results in $raw"

# ---- prerequisites -------------------------------------------------------------------
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
features=(--no-default-features --features "pg$("$PGBIN/pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')")
if [ "$install" = 1 ]; then
  echo "bench: building and installing lease_sched (release build)..."
  cargo pgrx install --release --pg-config "$PGBIN/pg_config" "${features[@]}" >"$raw/install.log" 2>&1 \
    || { tail -40 "$raw/install.log"; exit 1; }
fi

# ---- the cluster ---------------------------------------------------------------------
# The settings the numbers were taken with (docs/benchmarks.md lists them):
#   touch_buffer_size 131072  the scale run's 10^5 runtimes fit the shared buffer
#   runtime_offline_after 1h  runtimes left idle between cases are not flipped offline by
#                             the background sweep in the middle of another case
#   shared_buffers 1GB        the 10^6-row history fits in memory
#   max_wal_size 8GB, checkpoint_timeout 30min: no checkpoint inside a run; run.sh issues
#                             a CHECKPOINT before each case, so WAL counts are comparable
conf=(
  "lease_sched.touch_buffer_size = 131072"
  "lease_sched.runtime_offline_after = '1h'"
  "shared_buffers = '1GB'"
  "max_wal_size = '8GB'"
  "checkpoint_timeout = '30min'"
  "log_min_messages = warning"
  ${extra_conf[@]+"${extra_conf[@]}"}
)
# Other work on this machine may install another build of lease_sched at any time; make
# sure the server runs the one installed above (it keeps it mapped even if replaced later).
LIB=$("$PGBIN/pg_config" --pkglibdir)/lease_sched.so
[ -n "$portable" ] && export LEASE_CLUSTER_PRELOAD=""
for attempt in 1 2 3; do
  if [ -n "$portable" ]; then lease_cluster_start "$DIR" "$PORT" "${conf[@]}"; pm=$(head -1 "$DIR/data/postmaster.pid"); break; fi
  inode=$(stat -c %i "$LIB")
  lease_cluster_start "$DIR" "$PORT" "${conf[@]}"
  pm=$(head -1 "$DIR/data/postmaster.pid")
  loaded=$(awk '/lease_sched\.so/ {print $5; exit}' "/proc/$pm/maps")
  if [ "$install" = 0 ] || [ "$loaded" = "$inode" ]; then break; fi
  [ "$attempt" = 3 ] && { echo "bench: lease_sched.so keeps being replaced; giving up" >&2; exit 1; }
  echo "bench: lease_sched.so was replaced during start-up; installing again" >&2
  cargo pgrx install --release --pg-config "$PGBIN/pg_config" "${features[@]}" >>"$raw/install.log" 2>&1
done
lib_size=$(stat -L -c %s "/proc/$pm/map_files/$(awk '/lease_sched\.so/ {print $1; exit}' "/proc/$pm/maps")" 2>/dev/null || echo 0)
cleanup() {
  if [ "$keep" = 1 ]; then
    echo "bench: cluster left running: psql -h 127.0.0.1 -p $PORT -U postgres lease_sched"
  else
    lease_cluster_stop "$DIR" fast
  fi
}
trap cleanup EXIT

PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d lease_sched -X -q -v ON_ERROR_STOP=1)
q() { "${PSQL[@]}" -At -c "$1"; }
PGB=(env PGDATABASE=lease_sched "$PGBIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -M prepared -r)

if [ -n "$portable" ]; then
  "${PSQL[@]}" -f "$portable" >/dev/null
  echo "bench: the portable edition ($portable)"
else
  q "CREATE EXTENSION lease_sched"
fi
"${PSQL[@]}" -f bench/fixtures/baseline.sql
"${PSQL[@]}" -f bench/fixtures/helpers.sql
# Touches are buffered only while the sweeper is attached; it attaches right after
# CREATE EXTENSION and its first sweep follows. Wait for that sweep.
# (The portable edition: the sweeps pg_cron would run, every 10 s, the native default.)
if [ -n "$portable" ]; then
  ( while "${PSQL[@]}" -c "SELECT lease_sched.sweep()" >/dev/null 2>&1 || sleep 10; do sleep 10; done ) &
  sweeper=$!
  trap 'kill $sweeper 2>/dev/null; cleanup' EXIT
  q "SELECT lease_sched.sweep()" >/dev/null
fi
for _ in $(seq 100); do
  [ "$(q "SELECT value FROM lease_sched.stats() WHERE name = 'sweeps'")" -gt 0 ] && break
  sleep 0.1
done

# CPU used by the server: the postmaster, its live children, and (cutime/cstime) the
# children it has already reaped, e.g. pgbench's backends. In clock ticks.
server_cpu_ticks() {
  local pm; pm=$(head -1 "$DIR/data/postmaster.pid")
  {
    sed 's/^.*) //' "/proc/$pm/stat" | awk '{print $12 + $13 + $14 + $15}'
    for c in $(ps -o pid= --ppid "$pm"); do
      sed 's/^.*) //' "/proc/$c/stat" 2>/dev/null | awk '{print $12 + $13}' || true
    done
  } | awk '{s += $1} END {print s + 0}'
}

# Wait until no client backend but ours is left: a backend's table counters reach the
# shared statistics when it exits, before it leaves pg_stat_activity.
wait_idle() {
  for _ in $(seq 100); do
    [ "$(q "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")" = 0 ] && return
    sleep 0.1
  done
}

snapshot() { q "SELECT bench.snapshot()"; }
# All CPU time the machine spent (user, nice, system, irq, softirq), in clock ticks: what
# is neither our server nor pgbench is other load on the machine (noise).
machine_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }

set_sync() {
  q "ALTER SYSTEM SET synchronous_commit = '$1'" && q "SELECT pg_reload_conf()" >/dev/null
  for _ in $(seq 50); do [ "$(q "SHOW synchronous_commit")" = "$1" ] && return; sleep 0.1; done
  echo "bench: synchronous_commit did not become $1" >&2; exit 1
}

# Before each case: a checkpoint (so each case starts from the same WAL state) and fresh
# planner statistics and visibility maps for the four tables.
case_start() {
  # The fresh claims of case 1 finish here, on both sides: left RUNNING, they would go
  # stale after 5 minutes and the sweep would fail them in the middle of a later case.
  q "SELECT bench.settle('fresh')" >/dev/null
  q "VACUUM ANALYZE lease_sched.sys_cron_executions, $(q "SELECT bench.runtimes_table()"), lease_sched.locks,
                    baseline.sys_cron_executions, baseline.runtimes, baseline.locks"
  q "CHECKPOINT"
}

# Fresh-claim keys: plan_time = to_timestamp(base + client * 10^6 + n), with a new base for
# every run (run_seq is bumped in this shell before the arguments are built).
run_seq=0
plan_base() { echo $((1000000000 + run_seq * 100000000)); }

failures=0
sync=""
# bench_run CASE SIDE ROUND EXTRA_JSON PGBENCH_ARGS... : one measured pgbench run.
bench_run() {
  local case=$1 side=$2 round=$3 extra=$4; shift 4
  local tag="${sync}-${case}-${side}-r${round}"
  local out="$raw/$tag.log" rc=0 before after cpu0 cpu1 busy0 busy1 t0 t1
  before=$(snapshot)
  cpu0=$(server_cpu_ticks)
  busy0=$(machine_busy_ticks)
  t0=$(date +%s.%N)
  local TIMEFORMAT='%U %S'
  { time "${PGB[@]}" "$@" >"$out" 2>&1; } 2>"$out.time" || rc=$?
  t1=$(date +%s.%N)
  busy1=$(machine_busy_ticks)
  wait_idle
  if [ "$side" = ext ] || [[ "$side" == ext_* ]]; then
    # The buffered touches are not written yet: write them now and count that WAL in.
    q "SELECT lease_sched.runtime_flush()" >/dev/null
    "${PSQL[@]}" -c "SELECT pg_stat_force_next_flush()" >/dev/null
  fi
  cpu1=$(server_cpu_ticks)
  after=$(snapshot)
  local tps lat txns failed lag
  tps=$(awk '/^tps = /{print $3}' "$out" | tail -1)
  lat=$(awk '/^latency average = /{print $4}' "$out" | tail -1)
  txns=$(awk -F': ' '/^number of transactions actually processed/{split($2, a, "/"); print a[1]}' "$out" | tail -1)
  failed=$(awk '/^number of failed transactions/{print $5}' "$out" | tail -1)
  lag=$(awk '/^rate limit schedule lag/{print $6}' "$out" | tail -1)
  if [ "$rc" != 0 ] || grep -q "aborted" "$out"; then
    failures=$((failures + 1))
    echo "bench: FAILED: $tag (pgbench exit $rc); last lines of $out:" >&2
    tail -8 "$out" >&2
    [ "$rc" = 0 ] && rc=1
  fi
  printf '{"case":"%s","side":"%s","sync":"%s","round":%s,"rc":%s,"tps":%s,"lat_ms":%s,"txns":%s,"failed":%s,"lag_ms":%s,"secs":%s,"cpu_ticks":%s,"clk_tck":%s,"busy_ticks":%s,"client_secs":%s,"extra":%s,"before":%s,"after":%s}\n' \
    "$case" "$side" "$sync" "$round" "$rc" "${tps:-null}" "${lat:-null}" "${txns:-null}" "${failed:-null}" \
    "${lag:-null}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$((busy1 - busy0))" \
    "$(awk '{print $1 + $2}' "$out.time" 2>/dev/null || echo 0)" "$extra" \
    "${before:-null}" "${after:-null}" >>"$runs"
  printf 'bench: %-34s tps %10s  latency %8s ms\n' "$tag" "${tps:--}" "${lat:--}"
}

common=(-c "$clients" -j "$threads" -T "$duration")
# pair CASE PREPARE_FN ARGS_FN: rounds of ext, baseline (A B A B ...). PREPARE_FN runs
# before every run (unmeasured); ARGS_FN SIDE prints the pgbench arguments of a run.
pair() {
  local case=$1 prepare=$2 args=$3 round side
  case_start
  for round in $(seq "$rounds"); do
    for side in ext base; do
      $prepare "$side"
      run_seq=$((run_seq + 1))
      # shellcheck disable=SC2046
      bench_run "$case" "$side" "$round" '{}' "${common[@]}" $($args "$side")
    done
  done
}
noop() { :; }
args_fresh() { echo "-f bench/workloads/${1}_claim_fresh.sql -D job=fresh -D n=0 -D base=$(plan_base)"; }
args_contended() { echo "-f bench/workloads/${1}_claim_contended.sql -D nplans=$CONTENDED_PLANS"; }
args_steal() { echo "-f bench/workloads/${1}_steal.sql -D n=0 -D per=$LEASES_PER_CLIENT"; }
prep_steal() { q "SELECT bench.make_stale('steal')" >/dev/null; }
args_heartbeat() { echo "-f bench/workloads/${1}_heartbeat.sql -D n=0 -D per=$LEASES_PER_CLIENT"; }
args_finish() { echo "-f bench/workloads/${1}_finish.sql -D job=finish -D n=0 -D base=$(plan_base)"; }
args_touch() { echo "-f bench/workloads/${1}_touch.sql -D nrt=$N_RUNTIMES"; }
args_batch() { echo "-f bench/workloads/${1}_touch_batch.sql"; }
prep_runtimes() { q "SELECT bench.refresh_runtimes()" >/dev/null; }
args_lock_acquire() { echo "-f bench/workloads/${1}_lock_acquire.sql -D n=0 -D base=$(plan_base)"; }
args_lock_heartbeat() { echo "-f bench/workloads/${1}_lock_heartbeat.sql -D n=0 -D per=$LEASES_PER_CLIENT"; }
args_lease_fence() { echo "-f bench/workloads/${1}_lease_fence.sql -D n=0 -D per=$LEASES_PER_CLIENT"; }
args_lock_fence() { echo "-f bench/workloads/${1}_lock_fence.sql -D n=0 -D per=$LEASES_PER_CLIENT"; }

# ---- fixtures ------------------------------------------------------------------------
echo "bench: loading fixtures"
q "SELECT bench.ensure_runtimes($N_RUNTIMES)" >/dev/null
q "SELECT bench.fill_batches($clients, $BATCH)" >/dev/null
q "SELECT bench.ensure_leases('heartbeat', $((clients * LEASES_PER_CLIENT)), 'h', 't', '1 hour', 3, false)" >/dev/null
q "SELECT bench.ensure_leases('steal', $((clients * LEASES_PER_CLIENT)), NULL, NULL, '1 millisecond', 2147483647, true, true)" >/dev/null
q "SELECT bench.ensure_leases('contended', $CONTENDED_PLANS, NULL, NULL, '30 days', 3, false)" >/dev/null
q "SELECT bench.ensure_leases('fence', $((clients * LEASES_PER_CLIENT)), 'f', 'g', '30 days', 3, false)" >/dev/null
q "SELECT bench.set_fencing_tokens('fence')" >/dev/null
q "SELECT bench.ensure_locks($((clients * LEASES_PER_CLIENT)))" >/dev/null

# ---- cases 0-7 and 11-14, under each synchronous_commit setting ----------------------
for sync in $sync_modes; do
  set_sync "$sync"
  echo "bench: synchronous_commit = $sync"
  if want ceiling; then
    case_start
    for round in $(seq "$rounds"); do
      bench_run ceiling select1 "$round" '{}' "${common[@]}" -f bench/workloads/select1.sql
    done
  fi
  want claim_fresh && pair claim_fresh noop args_fresh
  want claim_contended && pair claim_contended noop args_contended
  want steal && pair steal prep_steal args_steal
  want heartbeat && pair heartbeat noop args_heartbeat
  want finish && pair finish noop args_finish
  want touch && pair touch prep_runtimes args_touch
  want touch_batch && pair touch_batch prep_runtimes args_batch
  want lock_acquire && pair lock_acquire noop args_lock_acquire
  want lock_heartbeat && pair lock_heartbeat noop args_lock_heartbeat
  want lease_fence && pair lease_fence noop args_lease_fence
  want lock_fence && pair lock_fence noop args_lock_fence
  if want breakdown; then
    # Where a call's time goes: single-client latency of SELECT 1, of a bare extension
    # call, of the statement inside the call sent directly, and of the call itself.
    case_start
    bd=(-c 1 -j 1 -T "$breakdown_duration" -D n=0 -D per="$LEASES_PER_CLIENT" -D nrt="$N_RUNTIMES")
    for s in select1 bd_call bd_touch_sql ext_touch base_touch bd_heartbeat_sql ext_heartbeat base_heartbeat; do
      bench_run breakdown "$s" 1 '{}' "${bd[@]}" -f "bench/workloads/$s.sql"
    done
  fi
done

# ---- cases 8-9: sweep and claim cost as the history grows ----------------------------
if want history; then
  # synchronous_commit = off here whatever --sync says: this measures what the history
  # costs a sweep and a claim, not the disk's fsync latency, which -c 1 would expose.
  sync=off
  set_sync "$sync"
  echo "bench: history sizes $history_sizes (synchronous_commit = $sync)"
  # Only history (and the other cases' fixed fixtures) from here on: the leases the
  # earlier cases left RUNNING would otherwise be part of what a sweep reads.
  q "TRUNCATE lease_sched.sys_cron_executions, baseline.sys_cron_executions"
  q "UPDATE bench.history SET loaded = 0"
  q "SELECT bench.ensure_leases('heartbeat', $((clients * LEASES_PER_CLIENT)), 'h', 't', '1 hour', 3, false)" >/dev/null
  hist=(-c 1 -j 1 -T "$history_duration")
  for size in $history_sizes; do
    t0=$(date +%s)
    q "SELECT bench.load_history($size)" >/dev/null
    q "SELECT bench.refresh_runtimes()" >/dev/null
    case_start
    echo "bench: history $size rows loaded in $(( $(date +%s) - t0 )) s"
    for round in $(seq "$rounds"); do
      bench_run sweep ext "$round" "{\"history\":$size}" "${hist[@]}" -f bench/workloads/ext_sweep.sql
      for side in ext base; do
        run_seq=$((run_seq + 1))
        bench_run history_claim "$side" "$round" "{\"history\":$size}" "${hist[@]}" \
          -f "bench/workloads/${side}_claim_fresh.sql" -D job=history-claim -D n=0 -D base="$(plan_base)"
      done
      q "SELECT bench.settle('history-claim')" >/dev/null
    done
  done
fi

# ---- case 10: the open-loop scale run --------------------------------------------------
if want scale; then
  touch_rate=$((SCALE_RUNTIMES / SCALE_TOUCH_EVERY))
  hb_rate=$((SCALE_LEASES / SCALE_HB_EVERY))
  echo "bench: scale: $SCALE_RUNTIMES runtimes ($touch_rate touches/s) + $SCALE_LEASES leases ($hb_rate heartbeats/s), $scale_duration s per side"
  q "SELECT bench.ensure_runtimes($SCALE_RUNTIMES)" >/dev/null
  q "SELECT bench.ensure_leases('heartbeat', $SCALE_LEASES, 'h', 't', '1 hour', 3, false)" >/dev/null
  for sync in $sync_modes; do
    set_sync "$sync"
    for side in ext base; do
      q "SELECT bench.refresh_runtimes()" >/dev/null
      case_start
      bench_run scale "$side" 1 \
        "{\"touch_rate\":$touch_rate,\"hb_rate\":$hb_rate,\"runtimes\":$SCALE_RUNTIMES,\"leases\":$SCALE_LEASES}" \
        -c "$clients" -j "$threads" -T "$scale_duration" --rate $((touch_rate + hb_rate)) \
        -f "bench/workloads/scale_${side}_touch.sql@$touch_rate" -f "bench/workloads/scale_${side}_heartbeat.sql@$hb_rate" \
        -D nrt="$SCALE_RUNTIMES" -D nleases="$SCALE_LEASES"
    done
  done
fi

# ---- the report ------------------------------------------------------------------------
{
  printf '{"stamp":"%s","edition":"%s","quick":%s,"duration":%s,"rounds":%s,"clients":%s,"threads":%s,' \
    "$stamp" "$([ -n "$portable" ] && echo portable || echo native)" "$quick" "$duration" "$rounds" "$clients" "$threads"
  printf '"sync_modes":"%s","history_sizes":"%s","history_duration":%s,"scale_duration":%s,' \
    "$sync_modes" "$history_sizes" "$history_duration" "$scale_duration"
  printf '"command":"%s","commit":"%s","cores":%s,"mem_gib":%s,"loadavg":"%s",' \
    "bench/run.sh${orig_args:+ $orig_args}" "${BENCH_COMMIT:-$(git describe --always --dirty 2>/dev/null || echo unknown)}" "$(nproc)" \
    "$(awk '/MemTotal/{printf "%.0f", $2 / 1048576}' /proc/meminfo)" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf '"lib_bytes":%s,"server":"%s","settings":%s}\n' "$lib_size" "$(q "SHOW server_version")" \
    "$(q "SELECT jsonb_object_agg(name, setting || coalesce(unit, '')) FROM pg_settings
           WHERE name IN ('shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'wal_level',
             'fsync', 'full_page_writes', 'wal_compression', 'autovacuum', 'autovacuum_naptime',
             'lease_sched.touch_buffer_size', 'lease_sched.touch_flush_interval',
             'lease_sched.sweep_interval', 'lease_sched.runtime_offline_after', 'lease_sched.retention',
             'lease_sched.notify_lost')")"
} >"$raw/meta.json"
report_rc=0
python3 bench/tooling/report.py "$raw" "$results/$stamp.md" ${chart:+--chart "$chart"} || report_rc=$?
echo "bench: report written to $results/$stamp.md"
if [ "$failures" -gt 0 ]; then
  echo "bench: $failures pgbench run(s) failed" >&2
  exit 1
fi
exit "$report_rc"
