#!/usr/bin/env bash
# Where one call's CPU goes: instructions per call, counted by valgrind's callgrind on a
# single-user backend (`postgres --single`), for the extension's call and the hand-written
# statement it replaces, side by side. Instruction counts repeat to within a fraction of a
# percent from run to run, on a machine whose wall-clock timings vary by 2x.
#
#   bench/profile.sh [--no-install] [--top N] [CASE...]
#     CASE: claim_fresh heartbeat touch call tpcb (the default five; `call` is the bare
#     cost of calling an extension function, lease_sched.runtime_pending(), against SELECT 1;
#     `tpcb` is pgbench's TPC-B-like transaction in a backend with lease_sched preloaded
#     against one without: what merely preloading costs a transaction that never calls it),
#     and lock_acquire lock_heartbeat lease_fence lock_fence (bench/run.sh's cases 11-14;
#     a fence is BEGIN; fence; COMMIT, as there)
#
# Per call = (instructions of a run of LONG statements - those of SHORT statements) /
# (LONG - SHORT): backend start, extension load and the first call's planning cancel out.
# With --top N it also prints the N functions with the most inclusive instructions in the
# extension's long run (callgrind_annotate). PROFILE_SETUP_SQL runs once after the fixtures
# (to try a change: PROFILE_SETUP_SQL="ALTER FUNCTION ... RESET search_path"). Needs valgrind (scripts/setup.sh does not
# install it: `apt-get install valgrind`). Files in /tmp/lease_sched_profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
install=1 top=0 cases=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --top) top=$2; shift ;;
    -h|--help) sed -n 2,18p "$0"; exit 0 ;;
    *) cases+=("$1") ;;
  esac
  shift
done
[ ${#cases[@]} -gt 0 ] || cases=(claim_fresh heartbeat touch call tpcb)
command -v valgrind >/dev/null || { echo "profile: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN
SHORT=${PROFILE_SHORT:-200} LONG=${PROFILE_LONG:-1200}
dir=/tmp/lease_sched_profile
if [ $install = 1 ]; then
  cargo pgrx install --release --pg-config "$PGBIN/pg_config" >/tmp/lease_sched_profile_install.log 2>&1 \
    || { tail -30 /tmp/lease_sched_profile_install.log; exit 1; }
fi

# A cluster with the fixtures of bench/run.sh, then stopped: the runs are single-user.
port=$(free_ports 1)
LEASE_CLUSTER_PRELOAD=lease_sched lease_cluster_start "$dir" "$port" "fsync = off" "synchronous_commit = off" \
  "lease_sched.touch_buffer_size = 65536" "lease_sched.runtime_offline_after = '1h'"
psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d lease_sched)
"${psql[@]}" -c "CREATE EXTENSION lease_sched" -f bench/fixtures/baseline.sql -f bench/fixtures/helpers.sql \
  -c "SELECT bench.ensure_runtimes(1000)" \
  -c "SELECT bench.ensure_leases('heartbeat', 1000, 'h', 't', '1 hour', 3, false)" \
  -c "SELECT bench.ensure_leases('fence', 1000, 'f', 'g', '30 days', 3, false)" -c "SELECT bench.set_fencing_tokens('fence')" \
  -c "SELECT bench.ensure_locks(1000)" \
  ${PROFILE_SETUP_SQL:+-c "$PROFILE_SETUP_SQL"} >/dev/null
"$PGBIN/pgbench" -q -i -s 1 -h 127.0.0.1 -p "$port" -U postgres lease_sched >/dev/null 2>&1
lease_cluster_stop "$dir"
chown -R postgres "$dir"

# The statements of one run: $1 = case, $2 = side (ext|base), $3 = count, $4 = first key.
# Prepared once and executed with a new key each time, as pgbench -M prepared and every
# driver with prepared statements send them: the per-call figure leaves out parsing and
# planning the client's statement, on both sides alike.
statements() {
  local k
  case "$1:$2" in
    claim_fresh:ext) echo "PREPARE s(int) AS SELECT * FROM lease_sched.lease_try_claim('profile', to_timestamp(\$1), 'runner', 'global', '', interval '5 minutes', 3, true);" ;;
    claim_fresh:base) echo "PREPARE s(int) AS INSERT INTO baseline.sys_cron_executions AS e (job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id, lease_token, fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at, stale_after, started_at, updated_at) VALUES ('profile', 'global', '', to_timestamp(\$1), 'RUNNING', 1, 3, 'runner', gen_random_uuid(), nextval('baseline.fencing_token_seq'), true, interval '5 minutes', now(), now() + interval '5 minutes', now(), now()) ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING RETURNING id, lease_token, attempt, fencing_token, stale_after;" ;;
    heartbeat:ext) echo "PREPARE s(int) AS SELECT lease_sched.lease_heartbeat(md5('h' || \$1)::uuid, md5('t' || \$1)::uuid);" ;;
    heartbeat:base) echo "PREPARE s(int) AS UPDATE baseline.sys_cron_executions SET heartbeat_at = now(), stale_after = now() + interval '5 minutes', updated_at = now() WHERE id = md5('h' || \$1)::uuid AND lease_token = md5('t' || \$1)::uuid AND status = 'RUNNING';" ;;
    touch:ext) echo "PREPARE s(int) AS SELECT lease_sched.runtime_touch(md5('r' || \$1)::uuid);" ;;
    touch:base) echo "PREPARE s(int) AS UPDATE baseline.runtimes SET last_seen_at = now() WHERE id = md5('r' || \$1)::uuid;" ;;
    call:ext) echo "PREPARE s(int) AS SELECT lease_sched.runtime_pending();" ;;
    call:base) echo "PREPARE s(int) AS SELECT 1;" ;;
    lock_acquire:ext) echo "PREPARE s(int) AS SELECT * FROM lease_sched.lock_acquire('free-' || \$1, 'runner', interval '1 hour');" ;;
    lock_acquire:base) echo "PREPARE s(int) AS INSERT INTO baseline.locks AS l (name, holder, fencing_token, acquired_at, heartbeat_at, expires_at, ttl, lock_token) VALUES ('free-' || \$1, 'runner', nextval('baseline.fencing_token_seq'), now(), now(), now() + interval '1 hour', interval '1 hour', gen_random_uuid()) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, fencing_token = excluded.fencing_token, acquired_at = now(), heartbeat_at = now(), expires_at = now() + excluded.ttl, ttl = excluded.ttl, lock_token = excluded.lock_token WHERE l.expires_at <= now() RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at;" ;;
    lock_heartbeat:ext) echo "PREPARE s(int) AS SELECT lease_sched.lock_heartbeat('lock-' || \$1, md5('l' || \$1)::uuid);" ;;
    lock_heartbeat:base) echo "PREPARE s(int) AS UPDATE baseline.locks SET heartbeat_at = now(), expires_at = now() + ttl WHERE name = 'lock-' || \$1 AND lock_token = md5('l' || \$1)::uuid;" ;;
    lease_fence:ext) echo "PREPARE s(int) AS SELECT lease_sched.lease_fence(md5('f' || \$1)::uuid, 1000000000000 + \$1, md5('g' || \$1)::uuid);" ;;
    lease_fence:base) echo "PREPARE s(int) AS SELECT 1 FROM baseline.sys_cron_executions WHERE id = md5('f' || \$1)::uuid AND fencing_token = 1000000000000 + \$1 AND lease_token = md5('g' || \$1)::uuid AND status = 'RUNNING' FOR KEY SHARE;" ;;
    lock_fence:ext) echo "PREPARE s(int) AS SELECT lease_sched.lock_fence('lock-' || \$1, 1000000000000 + \$1, md5('l' || \$1)::uuid);" ;;
    lock_fence:base) echo "PREPARE s(int) AS SELECT 1 FROM baseline.locks WHERE name = 'lock-' || \$1 AND fencing_token = 1000000000000 + \$1 AND lock_token = md5('l' || \$1)::uuid FOR KEY SHARE;" ;;
    tpcb:*) echo "PREPARE s(int) AS UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = \$1;"
            echo "PREPARE r(int) AS SELECT abalance FROM pgbench_accounts WHERE aid = \$1;"
            echo "PREPARE t(int) AS UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = \$1 % 10 + 1;"
            echo "PREPARE b(int) AS UPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = 1;"
            echo "PREPARE h(int) AS INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (\$1 % 10 + 1, 1, \$1, 1, CURRENT_TIMESTAMP);" ;;
  esac
  for ((k = $4; k < $4 + $3; k++)); do
    # Heartbeats, touches and fences cycle through the 1000 leases / runtimes / locks of the fixtures.
    case "$1" in
      claim_fresh|lock_acquire) echo "EXECUTE s($k);" ;;
      lease_fence|lock_fence) echo "BEGIN; EXECUTE s($((k % 1000 + 1))); COMMIT;" ;;
      # One transaction block per line: the single-user backend reads a statement a line.
      tpcb) a=$((k % 100000 + 1)); echo "BEGIN; EXECUTE s($a); EXECUTE r($a); EXECUTE t($a); EXECUTE b($a); EXECUTE h($a); COMMIT;" ;;
      *) echo "EXECUTE s($((k % 1000 + 1)));" ;;
    esac
  done
}

# Instructions of one single-user run of $3 statements (case $1, side $2), into $count.
# Every run claims keys of its own (a fresh claim must find no row).
key=1000000
instructions() {
  local out="$dir/callgrind.$1.$2.$3"
  key=$((key + 100000))
  statements "$1" "$2" "$3" "$key" > "$dir/stmts.sql"
  local preload=()
  [ "$1:$2" = tpcb:base ] && preload=(-c "shared_preload_libraries=")
  runuser -u postgres -- valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$PGBIN/postgres" --single -D "$dir/data" -c fsync=off -c synchronous_commit=off "${preload[@]}" lease_sched \
    < "$dir/stmts.sql" >"$dir/single.log" 2>&1 || { tail -20 "$dir/single.log"; exit 1; }
  grep -q ERROR "$dir/single.log" && { grep -m3 ERROR "$dir/single.log"; exit 1; }
  count=$(awk '/^summary:|^totals:/ { print $2; exit }' "$out")
}

printf '%-12s %14s %14s %8s\n' case "ext instr/call" "base instr/call" "ext/base"
for c in "${cases[@]}"; do
  declare -A per=()
  for side in ext base; do
    instructions "$c" "$side" "$SHORT"; short=$count
    instructions "$c" "$side" "$LONG"; long=$count
    per[$side]=$(( (long - short) / (LONG - SHORT) ))
  done
  printf '%-12s %14d %14d %8.2f\n' "$c" "${per[ext]}" "${per[base]}" "$(awk -v a="${per[ext]}" -v b="${per[base]}" 'BEGIN { print a / b }')"
  if [ "$top" -gt 0 ]; then
    callgrind_annotate --inclusive=yes "$dir/callgrind.$c.ext.$LONG" 2>/dev/null \
      | grep -E '^ *[0-9,]+ ' | head -n "$top" | sed 's/^/    /'
  fi
done
