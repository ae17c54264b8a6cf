#!/usr/bin/env bash
# The demo scenario: runners racing for scheduled runs, a failure retried by another
# runner with a higher fencing token, and a silent runner whose lease is stolen.
# Needs PGHOST/PGPORT/PGUSER/PGDATABASE pointing at a database with lease_sched.
set -euo pipefail
q() { psql -X -q -At -F ' | ' -c "$1"; }
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
claim() { # runner job plan [extra named args]
  q "SELECT '$1' AS runner, outcome, attempt, fencing_token
       FROM lease_sched.lease_try_claim(job_name => '$2', plan_time => '$3', runner_id => '$1'${4:+, $4})"
}

say "1. Three runners race for the 03:00 run of nightly-report. Exactly one wins."
echo "(runner | outcome | attempt | fencing_token)"
for r in runner-a runner-b runner-c; do claim "$r" nightly-report '2026-01-01 03:00+00' & done
wait
q "SELECT lease_sched.lease_finish(id, lease_token, 'SUCCESS', result => '{\"rows\": 42}')
     FROM lease_sched.sys_cron_executions WHERE job_name = 'nightly-report'" >/dev/null
echo "the winner finishes SUCCESS; a late runner now conflicts:"
claim runner-d nightly-report '2026-01-01 03:00+00'

say "2. cleanup fails on runner-a and is retried by runner-b with a higher fencing token."
claim runner-a cleanup '2026-01-01 04:00+00' "max_attempts => 3"
q "SELECT 'runner-a finishes FAILED: ' || lease_sched.lease_finish(id, lease_token, 'FAILED',
          error_code => 'disk_full', error_msg => 'no space left on device', retry_in => '1 second')
     FROM lease_sched.sys_cron_executions WHERE job_name = 'cleanup'"
echo "runner-b tries at once: the retry is still backing off"
claim runner-b cleanup '2026-01-01 04:00+00' "max_attempts => 3"
sleep 1.2
echo "runner-b tries after the backoff: it steals the run as attempt 2"
claim runner-b cleanup '2026-01-01 04:00+00' "max_attempts => 3"
q "SELECT 'runner-b finishes SUCCESS: ' || lease_sched.lease_finish(id, lease_token, 'SUCCESS')
     FROM lease_sched.sys_cron_executions WHERE job_name = 'cleanup'"

say "3. sync: runner-c takes it with a 2 second stale_timeout, then goes silent."
token=$(q "SELECT execution_id || ' ' || lease_token FROM lease_sched.lease_try_claim('sync', '2026-01-01 05:00+00', 'runner-c', stale_timeout => '2 seconds')")
q "SELECT 'runner-c heartbeats: ' || lease_sched.lease_heartbeat('${token% *}', '${token#* }')"
echo "runner-a tries while the lease is live:"
claim runner-a sync '2026-01-01 05:00+00'
sleep 2.2
echo "2.2 seconds of silence later (database clock), runner-a steals it:"
claim runner-a sync '2026-01-01 05:00+00'
q "SELECT 'runner-c wakes up and heartbeats: ' || lease_sched.lease_heartbeat('${token% *}', '${token#* }') || '  (fenced: its lease is gone)'"
q "SELECT 'runner-c tries to finish: ' || lease_sched.lease_finish('${token% *}', '${token#* }', 'SUCCESS') || '  (nothing written)'"

say "The executions table:"
psql -X -c "SELECT job_name, plan_time, status, attempt, runner_id, fencing_token, error_code, duration_ms, result
              FROM lease_sched.sys_cron_executions ORDER BY plan_time"
