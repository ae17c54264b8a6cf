#!/usr/bin/env bash
# The cost of a plan decision for a cron job against the interval form: lease_next_plan for
# three defined jobs, each already run for its current slot (the steady state of run() under
# pg_cron: most calls find nothing due), one pgbench client each, side by side.
#   bench/calendar_plan.sh [--duration S] [psql connection options...]
# Needs a running server with lease_sched installed (e.g. the cluster of bench/run.sh --keep,
# or scripts/cluster.sh start); connection options default to the PG* environment.
# Prints transactions per second and mean latency of each workload.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
duration=10
if [ "${1:-}" = --duration ]; then duration=$2; shift 2; fi
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
psql "$@" >/dev/null <<'SQL'
CREATE EXTENSION IF NOT EXISTS lease_sched;
SELECT lease_sched.job_define('bench_plan_every', every => '1 minute', misfire => 'skip');
SELECT lease_sched.job_define('bench_plan_cron', cron => '* * * * *', timezone => 'Europe/Berlin', misfire => 'skip');
SELECT lease_sched.job_define('bench_plan_cron_daily', cron => '30 2 * * *', timezone => 'Europe/Berlin', misfire => 'skip');
-- Each job has run its current slot (the daily one: the one before now).
UPDATE lease_sched.jobs SET created_at = clock_timestamp() - interval '90 seconds' WHERE job_name = 'bench_plan_cron';
UPDATE lease_sched.jobs SET created_at = clock_timestamp() - interval '1 day' WHERE job_name = 'bench_plan_cron_daily';
SELECT lease_sched.lease_finish(c.execution_id, c.lease_token, 'SUCCESS')
  FROM unnest(ARRAY['bench_plan_every', 'bench_plan_cron', 'bench_plan_cron_daily']) AS j,
       LATERAL lease_sched.lease_claim_next(j, 'bench') AS c
 WHERE c.outcome = 'won';
SQL
for w in plan_every plan_cron plan_cron_daily cron_next_runs; do
  out=$("$PGBIN/pgbench" -n -c 1 -j 1 -T "$duration" -f "bench/workloads/$w.sql" "$@" 2>&1)
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  printf '%-16s %10s tps %8s ms\n' "$w" "$tps" "$lat"
done
SQL_CLEANUP="SELECT lease_sched.job_drop(j) FROM unnest(ARRAY['bench_plan_every', 'bench_plan_cron', 'bench_plan_cron_daily']) j"
psql "$@" -c "$SQL_CLEANUP" >/dev/null
