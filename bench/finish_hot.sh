#!/usr/bin/env bash
# Can a finish be a HOT update? The finish writes `status` and `finished_at`; the sweep
# finds RUNNING leases through an index whose predicate names status, and retention walks
# finished rows through an index on finished_at. This compares index designs on a copy of
# sys_cron_executions with 10^6 finished rows and 10^4 running ones:
#   current   running (id) WHERE status = 'RUNNING' + finished (finished_at) WHERE status <> 'RUNNING'
#   none      neither partial index (only the primary key and the unique key)
#   brin      no running index; BRIN (finished_at) for retention (a summarizing index:
#             PostgreSQL 16+ lets an update that changes only such columns stay HOT)
#   run_brin  the running index + BRIN (finished_at)
# For each: WAL bytes per finish (one UPDATE like the extension's, full_page_writes off so
# only the records count), the share of finishes that were HOT (n_tup_hot_upd), and the
# sweep's and retention's queries (EXPLAIN ANALYZE, BUFFERS: pages read).
#
#   bench/finish_hot.sh      (PostgreSQL from $PGBIN, default Debian's 15; a scratch cluster)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PGBIN=${PGBIN:-$(pg_bin 15)}
export PGBIN
dir=/tmp/lease_sched_finish_hot
port=$(free_ports 1)
LEASE_CLUSTER_PRELOAD="" lease_cluster_start "$dir" "$port" "full_page_writes = off" "shared_buffers = 512MB" \
  "max_wal_size = 8GB" "autovacuum = off" >/dev/null
trap 'lease_cluster_stop "$dir" >/dev/null 2>&1 || true' EXIT
psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d lease_sched)
echo "PostgreSQL $("$PGBIN/pg_config" --version)"
for variant in current none brin run_brin; do
  "${psql[@]}" -At <<SQL
DROP TABLE IF EXISTS e;
CREATE TABLE e (
    id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    job_name text NOT NULL, scope_kind text NOT NULL DEFAULT 'global', scope_id text NOT NULL DEFAULT '',
    plan_time timestamptz NOT NULL, status text NOT NULL, attempt int NOT NULL DEFAULT 1,
    max_attempts int NOT NULL, runner_id text NOT NULL, lease_token uuid NOT NULL,
    fencing_token bigint NOT NULL, allow_stale_reentry boolean NOT NULL DEFAULT true,
    stale_timeout interval NOT NULL, heartbeat_at timestamptz, stale_after timestamptz,
    started_at timestamptz NOT NULL, finished_at timestamptz, duration_ms bigint,
    next_retry_at timestamptz, error_code text, error_msg text, rows_affected bigint,
    result jsonb, updated_at timestamptz NOT NULL,
    UNIQUE (job_name, scope_kind, scope_id, plan_time)) WITH (fillfactor = 70);
-- 10^6 finished rows (1000 jobs x 1000 plans, a minute apart), then 10^4 running ones.
INSERT INTO e (job_name, plan_time, status, max_attempts, runner_id, lease_token, fencing_token,
               stale_timeout, heartbeat_at, stale_after, started_at, finished_at, duration_ms, updated_at)
SELECT 'job-' || j, now() - interval '30 days' + p * interval '1 minute', 'SUCCESS', 3, 'r', gen_random_uuid(), j * 1000 + p,
       interval '5 minutes', now() - interval '30 days' + p * interval '1 minute', now() - interval '30 days' + p * interval '1 minute',
       now() - interval '30 days' + p * interval '1 minute', now() - interval '30 days' + p * interval '1 minute' + interval '1 second', 1000,
       now() - interval '30 days' + p * interval '1 minute'
  FROM generate_series(1, 1000) p, generate_series(1, 1000) j ORDER BY p, j;
INSERT INTO e (job_name, plan_time, status, max_attempts, runner_id, lease_token, fencing_token,
               stale_timeout, heartbeat_at, stale_after, started_at, updated_at)
SELECT 'run-' || k, now(), 'RUNNING', 3, 'r', gen_random_uuid(), 10000000 + k, interval '5 minutes', now(),
       now() + interval '5 minutes', now(), now()
  FROM generate_series(1, 10000) k;
SQL
  case $variant in
    current)  idx="CREATE INDEX ON e (id) WHERE status = 'RUNNING'; CREATE INDEX ON e (finished_at) WHERE status <> 'RUNNING';" ;;
    none)     idx="" ;;
    brin)     idx="CREATE INDEX ON e USING brin (finished_at);" ;;
    run_brin) idx="CREATE INDEX ON e (id) WHERE status = 'RUNNING'; CREATE INDEX ON e USING brin (finished_at);" ;;
  esac
  [ -z "$idx" ] || "${psql[@]}" -c "$idx" >/dev/null
  "${psql[@]}" -c "VACUUM ANALYZE e" -c "CHECKPOINT" >/dev/null
  # 10^4 finishes, one statement each, as the extension's finish writes them.
  out=$("${psql[@]}" -At <<'SQL'
SELECT pg_stat_reset_single_table_counters('e'::regclass);
SELECT pg_current_wal_insert_lsn() AS before \gset
DO $$
DECLARE r record;
BEGIN
  FOR r IN SELECT id, lease_token FROM e WHERE status = 'RUNNING' LOOP
    UPDATE e SET status = 'SUCCESS', finished_at = now(),
                 duration_ms = greatest(0, (extract(epoch FROM now() - started_at) * 1000)::bigint),
                 result = NULL, rows_affected = NULL, error_code = NULL, error_msg = NULL,
                 next_retry_at = NULL, updated_at = now()
     WHERE id = r.id AND lease_token = r.lease_token AND status = 'RUNNING';
  END LOOP;
END $$;
SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), :'before') / 10000.0 AS wal \gset
SELECT 'wal_per_finish=' || round(:wal);
SQL
)
  # A backend reports its table counters when it goes idle: read them from a new session.
  sleep 2
  out="$out $("${psql[@]}" -At -c "SELECT 'hot=' || n_tup_hot_upd || '/' || n_tup_upd FROM pg_stat_user_tables WHERE relname = 'e'")"
  # The sweep (RUNNING leases past stale_after) and a retention batch (oldest 1000 finished).
  sweep=$("${psql[@]}" -At -c "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM e WHERE status = 'RUNNING' AND stale_after < now()" \
    | python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; pl=p["Plan"]; print("%s %.1f ms, %d buffers" % (pl["Node Type"], p["Execution Time"], pl["Shared Hit Blocks"]+pl["Shared Read Blocks"]))')
  retention=$("${psql[@]}" -At -c "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT id FROM e WHERE status <> 'RUNNING' AND finished_at < now() - interval '7 days' ORDER BY finished_at LIMIT 1000" \
    | python3 -c 'import json,sys; p=json.load(sys.stdin)[0]; pl=p["Plan"]; sub=pl.get("Plans",[{}])[0]; print("%s %.1f ms, %d buffers" % (sub.get("Node Type", pl["Node Type"]), p["Execution Time"], pl["Shared Hit Blocks"]+pl["Shared Read Blocks"]))')
  echo "$variant: $(echo "$out" | grep -o 'wal_per.*') | sweep: $sweep | retention: $retention"
done
