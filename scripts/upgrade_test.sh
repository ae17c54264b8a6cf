#!/usr/bin/env bash
# The in-place upgrade from each released version to the current tree, with real state:
#   scripts/upgrade_test.sh            every released version in turn (0.1.0, then 0.2.0)
#   scripts/upgrade_test.sh 0.2.0      one of them
# 0.1.0 reaches the current version through every upgrade script in between (0.1.0 -> 0.2.0
# -> ...), as ALTER EXTENSION UPDATE chains them. For each:
#   1. build the released version from git (its tag, else its release commit) and install it
#      into a private copy of PostgreSQL 15 (never the system one: other test runs use it);
#   2. a cluster preloading it; CREATE EXTENSION lease_sched VERSION '<old>'; state: held
#      leases, FAILED runs waiting for a retry, buffered runtime touches, a held lock, history,
#      and a custom role's grants on the API (kept by the update);
#   3. install the current build over it while the server runs (as a package upgrade does),
#      check the old code still serves, then restart (a preloaded library is loaded only at
#      server start);
#   4. new library, old SQL objects: every old function must work or refuse with a hint
#      to run ALTER EXTENSION lease_sched UPDATE; no backend or worker may die;
#   5. ALTER EXTENSION lease_sched UPDATE while clients heartbeat in a loop (two long-lived
#      sessions, one new connection per call);
#   6. every held lease heartbeats and finishes by its holder, new fencing tokens are above
#      every old one, history is intact, and the upgraded schema dumps exactly like a fresh
#      CREATE EXTENSION in another database of the same cluster.
# Exits non-zero on the first failure, with what failed. A free port (or $LEASE_UPGRADE_PORT), files in
# /var/tmp/lease_sched_upgrade (the old builds are cached there). The current tree builds in
# its usual target directory (set CARGO_TARGET_DIR to build elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# The released versions, each with the commit it was released from.
released=("0.1.0:7248856" "0.2.0:97628a9")
if [ $# = 0 ]; then
  for r in "${released[@]}"; do "$0" "${r%%:*}" || exit 1; done
  exit 0
fi
old_version=$1
old_commit=
for r in "${released[@]}"; do [ "${r%%:*}" = "$old_version" ] && old_commit=${r#*:}; done
[ -n "$old_commit" ] || { echo "upgrade test: $old_version is not a released version (${released[*]})" >&2; exit 2; }
TEST_NAME="upgrade test from $old_version"
. scripts/private_pg.sh
export PATH="$HOME/.cargo/bin:$PATH"
started=$SECONDS

if ! git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  echo "upgrade test: SKIP (no git history)"; exit 0
fi
old_rev=$(git rev-parse -q --verify "v$old_version^{commit}" || git rev-parse -q --verify "$old_commit^{commit}" || true)
if [ -z "$old_rev" ]; then
  echo "upgrade test: SKIP (neither tag v$old_version nor commit $old_commit in this clone's history)"; exit 0
fi
[ "$(id -u)" = 0 ] || die "run as root (initdb and the server run as the postgres user via runuser)"
scripts/setup.sh

version=$(scripts/meta.sh --version)
work=/var/tmp/lease_sched_upgrade/from-$old_version
port=${LEASE_UPGRADE_PORT:-$(free_ports 1)}
cdir=$work/cluster
mkdir -p "$work"

# --- 1. the old version and the current tree, both into one private copy of PostgreSQL 15
pg_config=$(private_copy "$(pg_config_of 15)" "$work/pg15")
pgbin=$("$pg_config" --bindir)
libdir=$("$pg_config" --pkglibdir)
extdir=$("$pg_config" --sharedir)/extension
say "private PostgreSQL 15 in $work/pg15 (pkglibdir $libdir)"

src_old=$work/src-$old_version
if [ "$(cat "$src_old/.lease_sched_rev" 2>/dev/null)" != "$old_rev" ]; then
  rm -rf "$src_old" && mkdir -p "$src_old"
  git archive "$old_rev" | tar -x -C "$src_old"
  echo "$old_rev" > "$src_old/.lease_sched_rev"
fi
say "building and installing $old_version (${old_rev:0:7}; cached in $work/target-$old_version)"
t=$SECONDS
( cd "$src_old" && CARGO_TARGET_DIR=$work/target-$old_version cargo pgrx install --release --pg-config "$pg_config" ) \
  >"$work/install-$old_version.log" 2>&1 || { tail -30 "$work/install-$old_version.log"; die "building $old_version failed"; }
say "  $old_version installed ($((SECONDS - t)) s)"
[ -f "$extdir/lease_sched--$old_version.sql" ] || die "no lease_sched--$old_version.sql after installing $old_version"
cp "$extdir/lease_sched--$old_version.sql" "$work/lease_sched--$old_version.sql.saved"

# --- 2. a cluster on the old version, with state
cleanup() {
  touch "$work/stop"
  for p in ${client_pids:-}; do kill "$p" 2>/dev/null || true; done
  exec 7>&- 2>/dev/null || true
  pg_stop "$cdir" "$pgbin" immediate
}
trap cleanup EXIT
pg_init "$cdir" "$pgbin" "$port" \
  "shared_preload_libraries = 'lease_sched'" \
  "lease_sched.database = 'upgrade'" \
  "lease_sched.sweep_interval = '1s'" \
  "lease_sched.touch_flush_interval = '10min'" "lease_sched.runtime_offline_after = '20min'" \
  "log_line_prefix = '%m [%p] %b '"
pg_start "$cdir" "$pgbin"
runuser -u postgres -- "$pgbin/createdb" -h 127.0.0.1 -p "$port" upgrade

q() { "$pgbin/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "${DB:-upgrade}" "$@"; }
q -c "CREATE EXTENSION lease_sched VERSION '$old_version'"
[ "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'lease_sched'")" = "$old_version" ] \
  || die "CREATE EXTENSION ... VERSION '$old_version' did not install $old_version"

# Held leases (their holders keep execution_id and lease_token).
q -F ' ' -c "SELECT c.execution_id, c.lease_token, c.fencing_token
               FROM generate_series(1, 3) g,
                    LATERAL lease_sched.lease_try_claim(job_name => 'held-' || g, plan_time => '2026-01-01 00:00+00',
                                                        runner_id => 'runner-' || g, stale_timeout => '30 minutes') c
              ORDER BY g" > "$work/held.txt"
mapfile -t held < "$work/held.txt"
[ ${#held[@]} -eq 3 ] || die "could not claim the three held leases"
# FAILED runs waiting for their retry: one due in an hour, one due in two seconds.
for spec in "retry-later|1 hour" "retry-soon|2 seconds"; do
  [ "$(q -c "SELECT lease_sched.lease_finish(c.execution_id, c.lease_token, 'FAILED', error_code => 'boom',
                                               error_msg => 'attempt 1 failed', retry_in => '${spec#*|}')
               FROM lease_sched.lease_try_claim('${spec%|*}', '2026-01-01 00:00+00', 'runner-r') c")" = t ] \
    || die "could not leave ${spec%|*} FAILED"
done
# Finished history.
q -c "DO \$\$ DECLARE c record; BEGIN
        FOR g IN 1..20 LOOP
          SELECT * INTO c FROM lease_sched.lease_try_claim('history', '2025-12-01 00:00+00'::timestamptz + g * interval '1 hour', 'runner-h');
          PERFORM lease_sched.lease_finish(c.execution_id, c.lease_token, 'SUCCESS', result => jsonb_build_object('n', g), rows_affected => g);
        END LOOP; END \$\$"
# A held lock. 0.1.0's lock_acquire returns the fencing token, which also proves the holder;
# from 0.2.0 on it returns a row with a secret lock_token beside the fencing token.
if [ "$old_version" = 0.1.0 ]; then
  lock_token=$(q -c "SELECT lease_sched.lock_acquire('leader', 'node-a', '30 minutes')")
  lock_secret=
else
  read -r lock_secret lock_token < <(q -F ' ' -c "SELECT lock_token, fencing_token FROM lease_sched.lock_acquire('leader', 'node-a', '30 minutes')")
fi
[ -n "$lock_token" ] || die "could not take the lock"
# A custom role with grants on the API, as users give their runners: the update keeps them.
q -c "DROP ROLE IF EXISTS upgrade_runner; CREATE ROLE upgrade_runner LOGIN;
      GRANT USAGE ON SCHEMA lease_sched TO upgrade_runner;
      GRANT EXECUTE ON FUNCTION lease_sched.lease_try_claim, lease_sched.lease_heartbeat, lease_sched.lease_finish TO upgrade_runner"
# From 0.2.0 on, also lock_acquire (its arguments are 0.3.0's) with the grant option: the
# update re-creates lease_try_claim and lock_acquire and must give back both kinds of grant.
granted=3
if [ "$old_version" != 0.1.0 ]; then
  q -c "GRANT EXECUTE ON FUNCTION lease_sched.lock_acquire(text, text, interval) TO upgrade_runner WITH GRANT OPTION"
  granted=4
fi
grants_sql="SELECT string_agg(f, ',' ORDER BY f) FROM (
              SELECT p.proname || ':' || pg_catalog.pg_get_function_identity_arguments(p.oid)
                     || CASE WHEN pg_catalog.has_function_privilege('upgrade_runner', p.oid, 'EXECUTE WITH GRANT OPTION')
                             THEN ' (grantable)' ELSE '' END AS f
                FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'lease_sched' AND pg_catalog.has_function_privilege('upgrade_runner', p.oid, 'EXECUTE')
                 AND p.proname IN ('lease_try_claim', 'lease_heartbeat', 'lease_finish', 'lock_acquire')) g"
[ "$(q -c "$grants_sql" | tr ',' '\n' | grep -c :)" = $granted ] || die "could not grant to upgrade_runner"
# Buffered runtime touches: they sit in shared memory while the sweeper runs.
mapfile -t runtimes < <(q -c "SELECT lease_sched.runtime_register('rt-' || g) FROM generate_series(1, 3) g ORDER BY g")
sleep 1.2
touched_at=$(q -c "SELECT clock_timestamp()")
for i in $(seq 50); do
  for rt in "${runtimes[@]}"; do q -c "SELECT lease_sched.runtime_touch('$rt')" >/dev/null; done
  [ "$(q -c "SELECT lease_sched.runtime_pending()")" = 3 ] && break
  [ "$i" = 50 ] && die "touches were never buffered (is the sweeper running? see $cdir/server.log)"
  sleep 0.2
done
# A running lease whose stale_timeout has parts of opposite signs (accepted before 0.3.0):
# the update rewrites it as its plain length (23 hours).
[ "$(q -c "SELECT outcome FROM lease_sched.lease_try_claim('mixed-interval', '2026-01-01 00:00+00', 'runner-m',
                                                            stale_timeout => '1 day -1 hour')")" = won ] \
  || die "could not claim the lease with a mixed-sign stale_timeout on $old_version"
# A reader granted the table, as 0.1.0's docs said (the table holds the secret lease_token):
# the update must name it.
q -c "SET client_min_messages = warning; DROP ROLE IF EXISTS upgrade_reader; CREATE ROLE upgrade_reader; GRANT SELECT ON lease_sched.sys_cron_executions TO upgrade_reader"
max_old=$(q -c "SELECT last_value FROM lease_sched.fencing_token_seq")
history_sql="SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', id, job_name, scope_kind, scope_id, plan_time, status,
               attempt, max_attempts, runner_id, lease_token, fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at,
               stale_after, started_at, finished_at, duration_ms, next_retry_at, error_code, error_msg, rows_affected, result),
               ',' ORDER BY id)) FROM lease_sched.sys_cron_executions WHERE status <> 'RUNNING' AND job_name NOT LIKE 'probe%'"
held_sql="SELECT string_agg(concat_ws('|', id, lease_token, fencing_token, attempt, runner_id, status), ',' ORDER BY job_name)
            FROM lease_sched.sys_cron_executions WHERE job_name LIKE 'held-%'"
history_before=$(q -c "$history_sql")
grants_before=$(q -c "$grants_sql")
held_before=$(q -c "$held_sql")
say "state on $old_version: 3 held leases, 2 FAILED waiting for a retry, history ${history_before%% *} finished rows, lock 'leader' (token $lock_token), 3 buffered touches; fencing tokens up to $max_old"

# --- 3. install the current build while the server runs
say "building and installing the current tree ($version) into the same private copy"
t=$SECONDS
cargo pgrx install --release --pg-config "$pg_config" >"$work/install-current.log" 2>&1 \
  || { tail -30 "$work/install-current.log"; die "building the current tree failed"; }
say "  $version installed ($((SECONDS - t)) s)"
if ! cmp -s "$extdir/lease_sched--$old_version.sql" "$work/lease_sched--$old_version.sql.saved"; then
  say "note: installing $version removed or changed lease_sched--$old_version.sql; restored it"
  cp "$work/lease_sched--$old_version.sql.saved" "$extdir/lease_sched--$old_version.sql"
fi
[ -f "$extdir/lease_sched--$version.sql" ] || die "cargo pgrx install wrote no lease_sched--$version.sql"
for f in sql/lease_sched--*--*.sql; do
  [ -e "$f" ] || continue
  [ -f "$extdir/$(basename "$f")" ] || die "cargo pgrx install did not copy $f into $extdir"
done
# PostgreSQL chains update scripts (0.1.0 -> 0.2.0 -> 0.3.0): there must be a path.
update_path=$(q -c "SELECT path FROM pg_extension_update_paths('lease_sched') WHERE source = '$old_version' AND target = '$version'")
[ -n "$update_path" ] || die "no update path from $old_version to $version (sql/lease_sched--*--*.sql)"
say "  update path: $update_path"
# The server still runs the old library: the postmaster and every backend forked from it
# keep the file they mapped (pgrx replaces the file, it does not write into it).
[ "$(q -c "SELECT lease_sched.lease_heartbeat('${held[0]%% *}', '$(echo "${held[0]}" | cut -d' ' -f2)')")" = t ] \
  || die "a heartbeat failed between replacing the library and the restart"
[ "$(q -c "SELECT default_version FROM pg_available_extensions WHERE name = 'lease_sched'")" = "$version" ] \
  || die "pg_available_extensions does not offer $version after the install"

say "restarting the server (the preloaded library is only loaded at server start)"
runuser -u postgres -- "$pgbin/pg_ctl" -D "$cdir/data" -m fast -w -t 60 restart -l "$cdir/server.log" >/dev/null \
  || { tail -30 "$cdir/server.log"; die "restart failed"; }
[ "$(q -c "SELECT count(*) FROM lease_sched.runtimes WHERE name LIKE 'rt-%' AND last_seen_at >= '$touched_at'")" = 3 ] \
  || die "buffered touches were lost in the restart (written at shutdown by the $old_version sweeper)"

# --- 4. the new library under the old SQL objects, before the update
sleep 3   # a few sweeps of the new worker against the old schema
exec 7> >(exec "$pgbin/psql" -X -qAt -h 127.0.0.1 -p "$port" -U postgres -d upgrade >"$work/session.out" 2>&1)
echo "SELECT 'alive-1', pg_backend_pid();" >&7
sweeper_pid=$(q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'")
[ -n "$sweeper_pid" ] || die "no sweeper running after the restart (see $cdir/server.log)"
held0_id=${held[0]%% *}; held0_token=$(echo "${held[0]}" | cut -d' ' -f2)
# Every function of the old version, called on the new library before the update.
probes=(
  "lease_try_claim|SELECT outcome FROM lease_sched.lease_try_claim('probe', '2026-02-01 00:00+00', 'probe-runner')"
  "lease_heartbeat|SELECT lease_sched.lease_heartbeat('$held0_id', '$held0_token')"
  "lease_finish|SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), 'SUCCESS')"
  "runtime_register|SELECT lease_sched.runtime_register('probe-rt') IS NOT NULL"
  "runtime_touch|SELECT lease_sched.runtime_touch('${runtimes[0]}')"
  "runtime_touch_batch|SELECT lease_sched.runtime_touch_batch(ARRAY['${runtimes[0]}']::uuid[])"
  "runtime_flush|SELECT lease_sched.runtime_flush()"
  "runtime_pending|SELECT lease_sched.runtime_pending()"
  "sweep|SELECT * FROM lease_sched.sweep()"
  "stats|SELECT count(*) FROM lease_sched.stats()"
  "lock_info|SELECT holder, fencing_token FROM lease_sched.lock_info('leader')"
  "lease_latest_plan|SELECT status FROM lease_sched.lease_latest_plan('history')"
  "lease_next_plan|SELECT lease_sched.lease_next_plan('history', '1 hour')"
  "run|CALL lease_sched.run('probe-run', 'SELECT 1')"
  "active_leases|SELECT count(*) FROM lease_sched.active_leases"
  "job_summary|SELECT count(*) FROM lease_sched.job_summary"
)
if [ "$old_version" = 0.1.0 ]; then
  probes+=(
    "lock_acquire|SELECT lease_sched.lock_acquire('probe-lock', 'probe', '1 minute')"
    "lock_heartbeat|SELECT lease_sched.lock_heartbeat('leader', $lock_token)"
    "lock_release|SELECT lease_sched.lock_release('probe-lock', 0)"
  )
else
  # A trigger function is probed through a write it must refuse (LS001: no fence passed).
  trigger_probe() {
    echo "DO \$\$ BEGIN CREATE TEMP TABLE probe_$1 (x int);
            CREATE TRIGGER probe BEFORE INSERT ON probe_$1 FOR EACH ROW EXECUTE FUNCTION lease_sched.$1('probe');
            INSERT INTO probe_$1 VALUES (1);
            EXCEPTION WHEN SQLSTATE 'LS001' THEN NULL; END \$\$"
  }
  probes+=(
    "lock_acquire|SELECT acquired FROM lease_sched.lock_acquire('probe-lock', 'probe', '1 minute')"
    "lock_heartbeat|SELECT lease_sched.lock_heartbeat('leader', '$lock_secret')"
    "lock_release|SELECT lease_sched.lock_release('probe-lock', gen_random_uuid())"
    "retry_backoff|SELECT lease_sched.retry_backoff(3, '1 second', '1 minute')"
    "job_define|SELECT lease_sched.job_define('probe-job', every => '1 hour')"
    "job_definition|SELECT count(*) FROM lease_sched.job_definition('probe-job')"
    "job_pause|SELECT lease_sched.job_pause('probe-job')"
    "job_resume|SELECT lease_sched.job_resume('probe-job')"
    "job_drop|SELECT lease_sched.job_drop('probe-job')"
    "job_definitions|SELECT count(*) FROM lease_sched.job_definitions"
    "job_health|SELECT count(*) FROM lease_sched.job_health"
    "executions|SELECT count(*) FROM lease_sched.executions"
    "lease_fence|SELECT lease_sched.lease_fence('$held0_id', $(echo "${held[0]}" | cut -d' ' -f3))"
    "lock_fence|SELECT lease_sched.lock_fence('leader', $lock_token)"
    "lease_fence_check|SELECT lease_sched.lease_fence_check('$held0_id', 1, NULL)"
    "lock_fence_check|SELECT lease_sched.lock_fence_check('leader', 1, NULL)"
    "lease_fence_passed|SELECT lease_sched.lease_fence_passed('held-1', false)"
    "lock_fence_passed|SELECT lease_sched.lock_fence_passed('leader', false)"
    "run_arm_deadline|SELECT lease_sched.run_disarm_deadline(lease_sched.run_arm_deadline(now() + interval '1 hour', '1 hour'))"
    "run_disarm_deadline|SELECT lease_sched.run_disarm_deadline(false)"
    "require_lock|$(trigger_probe require_lock)"
    "require_lease|$(trigger_probe require_lease)"
  )
fi
# Every old function has a probe. (The list is printed once into a variable: piping printf
# into grep -q under pipefail fails at random when grep exits before printf is done.)
probe_list=$(printf '%s\n' "${probes[@]}")
for f in $(q -c "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                  WHERE n.nspname = 'lease_sched' ORDER BY 1"); do
  grep -q "^$f|" <<<"$probe_list" || die "no probe for the $old_version function $f: add one"
done
probe_failures=0
say "calling every $old_version function on the new library, before the update:"
for probe in "${probes[@]}"; do
  name=${probe%%|*}; sql=${probe#*|}
  set +e
  out=$("$pgbin/psql" -X -qAt -v ON_ERROR_STOP=1 -v VERBOSITY=default -h 127.0.0.1 -p "$port" -U postgres -d upgrade -c "$sql" 2>&1)
  rc=$?
  set -e
  if [ $rc = 0 ]; then
    printf '  %-20s works: %s\n' "$name" "$(echo "$out" | tr '\n' ' ' | cut -c1-60)"
  elif [ $rc = 1 ] && echo "$out" | grep -q "ALTER EXTENSION lease_sched UPDATE"; then
    printf '  %-20s refuses, naming the update: %s\n' "$name" "$(echo "$out" | grep -m1 ERROR | cut -c1-100)"
  else
    printf '  %-20s FAILS (psql exit %s): %s\n' "$name" "$rc" "$(echo "$out" | tr '\n' ' ' | cut -c1-300)"
    probe_failures=$((probe_failures + 1))
  fi
done
echo "SELECT 'alive-2', pg_backend_pid();" >&7
sleep 1
grep -q "^alive-2|" "$work/session.out" || die "a session opened before the probes did not survive them: $(cat "$work/session.out")"
# shellcheck disable=SC2015 # die when either check fails
[ "$(grep -c "^alive-" "$work/session.out")" = 2 ] && [ "$(cut -d'|' -f2 "$work/session.out" | sort -u | wc -l)" = 1 ] \
  || die "the long-lived session was reconnected: $(cat "$work/session.out")"
exec 7>&-
[ "$(q -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'")" = "$sweeper_pid" ] \
  || die "the sweeper was restarted during the probes (see $cdir/server.log)"
[ -z "$(crash_lines "$cdir/server.log")" ] || { crash_lines "$cdir/server.log"; die "a process died on the new library before the update"; }
sweeper_warnings=$(grep -c "lease_sched sweeper.*\(WARNING\|ERROR\)" "$cdir/server.log" || true)
[ "$sweeper_warnings" = 0 ] || { say "the sweeper logged $sweeper_warnings warnings/errors before the update, e.g.:"; grep -m3 "lease_sched sweeper.*\(WARNING\|ERROR\)" "$cdir/server.log" | sed 's/^/  /'; }
[ $probe_failures = 0 ] || die "$probe_failures $old_version functions neither work nor name ALTER EXTENSION lease_sched UPDATE on the new library"

# --- 5. ALTER EXTENSION lease_sched UPDATE under heartbeat traffic
rm -f "$work"/client-* "$work/updated" "$work/stop"
# Clients 1 and 2: one long-lived session each, a heartbeat every 50 ms.
for i in 1 2; do
  line=${held[$i]}; id=${line%% *}; token=$(echo "$line" | cut -d' ' -f2)
  ( set +e
    while [ ! -e "$work/stop" ]; do
      phase=before; [ -e "$work/updated" ] && phase=after
      echo "SELECT '$phase', lease_sched.lease_heartbeat('$id', '$token');"
      [ $phase = after ] && echo x >> "$work/client-$i.sent-after"
      sleep 0.05
    done | "$pgbin/psql" -X -qAt -v VERBOSITY=default -h 127.0.0.1 -p "$port" -U postgres -d upgrade \
             >"$work/client-$i.out" 2>"$work/client-$i.err"
    echo $? > "$work/client-$i.rc" ) &
  client_pids="${client_pids:-} $!"
done
# Client 0: a new connection for every heartbeat.
( set +e; id=$held0_id
  while [ ! -e "$work/stop" ]; do
    phase=before; [ -e "$work/updated" ] && phase=after
    out=$("$pgbin/psql" -X -qAt -v VERBOSITY=default -h 127.0.0.1 -p "$port" -U postgres -d upgrade \
            -c "SELECT lease_sched.lease_heartbeat('$id', '$held0_token')" 2>&1)
    echo "$phase|$?|$(echo "$out" | tr '\n' ' ')" >> "$work/client-0.out"
    sleep 0.05
  done ) &
client_pids="$client_pids $!"
sleep 2
t=$EPOCHREALTIME
q -c "ALTER EXTENSION lease_sched UPDATE" 2>"$work/update.err" || { cat "$work/update.err"; die "ALTER EXTENSION lease_sched UPDATE failed"; }
touch "$work/updated"
say "ALTER EXTENSION lease_sched UPDATE took $(awk -v a="$t" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }') s"
sleep 2
touch "$work/stop"
for p in $client_pids; do wait "$p" || true; done
client_pids=

[ "$(q -c "SELECT extversion FROM pg_extension WHERE extname = 'lease_sched'")" = "$version" ] \
  || die "the extension is not at $version after the update"
for i in 1 2; do
  [ "$(cat "$work/client-$i.rc")" = 0 ] || die "client $i's session ended badly: $(cat "$work/client-$i.err")"
  sent=$(wc -l < "$work/client-$i.sent-after" 2>/dev/null || echo 0)
  ok=$(grep -c "^after|t$" "$work/client-$i.out" || true)
  # shellcheck disable=SC2015 # die when either check fails
  [ "$sent" -gt 0 ] && [ "$ok" = "$sent" ] \
    || die "client $i (long-lived session): $ok of $sent heartbeats after the update returned true; errors: $(head -5 "$work/client-$i.err")"
  # Every error (before the update) must name it, in its message or its hint.
  [ "$(grep -c "ERROR" "$work/client-$i.err" || true)" = "$(grep -c "ALTER EXTENSION lease_sched UPDATE" "$work/client-$i.err" || true)" ] \
    || die "client $i (long-lived session) got errors that do not name the update: $(head -6 "$work/client-$i.err")"
  say "client $i (long-lived session): $(grep -c "^before|t$" "$work/client-$i.out" || true) heartbeats true before the update, $ok of $sent after, $(grep -c ERROR "$work/client-$i.err" || true) refused"
done
bad=$(grep "^after|" "$work/client-0.out" | grep -v "^after|0|t $" || true)
[ -z "$bad" ] || die "client 0 (new connection per call) after the update: $(echo "$bad" | head -3)"
grep "^before|" "$work/client-0.out" | grep -v "^before|0|t $" | grep -v "ALTER EXTENSION lease_sched UPDATE" | grep -q . \
  && die "client 0 before the update: $(grep "^before|" "$work/client-0.out" | grep -v "^before|0|t $" | head -3)"
say "client 0 (new connection per call): $(grep -c "^before|0|t" "$work/client-0.out" || true) true before, $(grep -c "^after|0|t" "$work/client-0.out" || true) true after the update"

# --- 6. the state after the update
grep -q "WARNING: .*upgrade_reader on sys_cron_executions" "$work/update.err" \
  || die "the update did not name the role granted SELECT on sys_cron_executions: $(cat "$work/update.err")"
say "the update named the reader granted the table: $(grep -m1 WARNING "$work/update.err" | cut -c1-160)"
q -c "REVOKE SELECT ON lease_sched.sys_cron_executions FROM upgrade_reader; DROP ROLE upgrade_reader"
mixed=$(q -c "SELECT stale_timeout FROM lease_sched.sys_cron_executions WHERE job_name = 'mixed-interval'")
[ "$mixed" = "23:00:00" ] || die "the mixed-sign stale_timeout of a running lease was not rewritten by the update: $mixed"
[ "$(q -c "$history_sql")" = "$history_before" ] || die "finished history changed in the update"
[ "$(q -c "$held_sql")" = "$held_before" ] || die "held leases changed in the update: before $held_before, after $(q -c "$held_sql")"
[ "$(q -c "SELECT last_value >= $max_old FROM lease_sched.fencing_token_seq")" = t ] || die "the fencing sequence went backwards"
lock_now=$(q -F ' ' -c "SELECT holder, fencing_token FROM lease_sched.lock_info('leader')")
[ "$lock_now" = "node-a $lock_token" ] || die "lock 'leader' is not held by node-a with token $lock_token after the update (lock_info: '$lock_now')"
if [ -n "$lock_secret" ]; then
  [ "$(q -c "SELECT lease_sched.lock_heartbeat('leader', '$lock_secret')")" = t ] || die "the lock's holder cannot heartbeat it after the update"
fi
[ "$(q -c "$grants_sql")" = "$grants_before" ] \
  || die "upgrade_runner's grants changed in the update: before $grants_before, after $(q -c "$grants_sql")"
# The user's grants are the user's, not the extension's schema: out of the dump comparison.
q -c "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA lease_sched FROM upgrade_runner; REVOKE USAGE ON SCHEMA lease_sched FROM upgrade_runner"
for line in "${held[@]}"; do
  id=${line%% *}; token=$(echo "$line" | cut -d' ' -f2)
  [ "$(q -c "SELECT lease_sched.lease_heartbeat('$id', '$token')")" = t ] || die "held lease $id cannot heartbeat after the update"
  [ "$(q -c "SELECT lease_sched.lease_finish('$id', '$token', 'SUCCESS', result => '{\"upgraded\": true}')")" = t ] \
    || die "held lease $id cannot finish after the update"
done
[ "$(q -c "SELECT outcome FROM lease_sched.lease_try_claim('retry-later', '2026-01-01 00:00+00', 'runner-x')")" = conflicted ] \
  || die "a FAILED run whose retry is due in an hour could be claimed after the update"
claim=$(q -F ' ' -c "SELECT outcome, attempt, fencing_token FROM lease_sched.lease_try_claim('retry-soon', '2026-01-01 00:00+00', 'runner-x')")
[ "${claim% *}" = "stole 2" ] || die "the FAILED run due for its retry was not retried (attempt 2) after the update: $claim"
new=$(q -F ' ' -c "SELECT outcome, fencing_token FROM lease_sched.lease_try_claim('after-upgrade', '2026-03-01 00:00+00', 'runner-n')")
[ "${new% *}" = won ] || die "a new claim after the update: $new"
# shellcheck disable=SC2015 # die when either check fails
[ "${claim##* }" -gt "$max_old" ] && [ "${new##* }" -gt "$max_old" ] \
  || die "new fencing tokens (${claim##* }, ${new##* }) are not above every old one ($max_old)"
[ "$(q -c "SELECT lease_sched.runtime_touch('${runtimes[1]}')")" = t ] || die "runtime_touch after the update"
q -c "SELECT * FROM lease_sched.sweep()" >/dev/null || die "sweep() after the update"
say "after the update: held leases heartbeat and finish, retries and new claims get tokens ${claim##* } and ${new##* } (> $max_old), history and the lock intact"

# The upgraded schema against a fresh CREATE EXTENSION. Plain pg_dump --schema-only prints
# only CREATE EXTENSION for an extension's objects; --binary-upgrade (what pg_upgrade uses)
# prints every member, so that is the one compared, without the OIDs and transaction ids it
# pins and the sequence position (data, not schema: the upgraded one has handed out tokens).
runuser -u postgres -- "$pgbin/createdb" -h 127.0.0.1 -p "$port" fresh
DB=fresh q -c "CREATE EXTENSION lease_sched"
dump() {
  "$pgbin/pg_dump" -h 127.0.0.1 -p "$port" -U postgres --schema-only "$@" \
    | grep -v -E '^\\(un)?restrict |binary_upgrade_set_next_|^SELECT pg_catalog\.setval\(' \
    | sed -E -e "/binary_upgrade_create_empty_extension/ s/[0-9]{5,}/OID/g" \
             -e "s/relfrozenxid = '[0-9]+', relminmxid = '[0-9]+'/relfrozenxid = XID, relminmxid = XID/" \
             -e "s/^WHERE oid = '[0-9]+';/WHERE oid = OID;/"
}
fail_dump=
for mode in "" --binary-upgrade; do
  dump $mode upgrade > "$work/dump-upgraded${mode}.sql"
  dump $mode fresh > "$work/dump-fresh${mode}.sql"
  if ! diff -u "$work/dump-fresh${mode}.sql" "$work/dump-upgraded${mode}.sql" > "$work/dump${mode}.diff"; then
    say "pg_dump --schema-only $mode: the upgraded database differs from a fresh CREATE EXTENSION (- fresh, + upgraded):"
    cat "$work/dump${mode}.diff"
    fail_dump=1
  fi
done
[ -z "$fail_dump" ] || die "the upgraded schema is not the fresh $version schema (diffs above; files in $work)"
[ -z "$(crash_lines "$cdir/server.log")" ] || { crash_lines "$cdir/server.log"; die "a process died (server log above)"; }
say "the upgraded schema dumps exactly like a fresh install"
echo "upgrade test: PASS ($old_version -> $version, $((SECONDS - started)) s)"
