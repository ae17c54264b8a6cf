-- The sweep on demand, counters, and views for operators. See docs/operations.md.

-- Admin functions are SECURITY INVOKER: even with EXECUTE granted (GRANT ... ON ALL
-- FUNCTIONS), only roles that may write lease_sched's tables (the owner, superusers, the
-- background worker) can run them; a runner role gets "permission denied".
CREATE FUNCTION lease_sched.sweep()
RETURNS TABLE (leases_failed bigint, runtimes_offline bigint, touches_flushed bigint, executions_pruned bigint)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'sweep_wrapper';
COMMENT ON FUNCTION lease_sched.sweep() IS
    'Run one sweep now (what the background worker does every lease_sched.sweep_interval); schedule it with pg_cron when the library cannot be preloaded.';

CREATE FUNCTION lease_sched.stats()
RETURNS TABLE (name text, value bigint)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'stats_wrapper';
COMMENT ON FUNCTION lease_sched.stats() IS 'Counters since server start, from shared memory (zero unless lease_sched is preloaded).';

-- Whether a background worker sweeps this database: the launcher keeps a sweeper in every
-- database that has the extension (or only in lease_sched.database, when that is set), up
-- to lease_sched.max_databases. Readable by every role (job_health shows it).
CREATE FUNCTION lease_sched.sweeper_status()
RETURNS TABLE (swept boolean, state text, sweeper_pid integer, last_sweep_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'sweeper_status_wrapper';
COMMENT ON FUNCTION lease_sched.sweeper_status() IS
    'Whether a background worker sweeps this database (swept), its state (sweeping, starting, waiting for update, over max_databases, not lease_sched.database, template, not preloaded), the sweeper''s pid and its last sweep.';

-- Run by the install and update scripts: wakes the launcher at commit, and warns at once
-- when nothing will sweep this database.
CREATE FUNCTION lease_sched.sys_sweeper_announce()
RETURNS void
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'sys_sweeper_announce_wrapper';
COMMENT ON FUNCTION lease_sched.sys_sweeper_announce() IS
    'Internal: run by CREATE EXTENSION and ALTER EXTENSION UPDATE (wakes the background worker; warns when this database will not be swept).';

CREATE VIEW lease_sched.active_leases AS
SELECT id AS execution_id, job_name, scope_kind, scope_id, plan_time, runner_id, attempt, max_attempts,
       fencing_token, started_at, heartbeat_at, stale_after,
       extract(epoch FROM stale_after - clock_timestamp())::float8 AS seconds_until_stale,
       stale_after < clock_timestamp() AS is_stale
  FROM lease_sched.sys_cron_executions
 WHERE status = 'RUNNING';
COMMENT ON VIEW lease_sched.active_leases IS 'RUNNING leases, with seconds until each goes stale (negative: already stale).';

CREATE VIEW lease_sched.job_summary AS
SELECT job_name,
       count(*) AS runs,
       count(*) FILTER (WHERE status = 'RUNNING') AS running,
       count(*) FILTER (WHERE status = 'SUCCESS') AS succeeded,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       max(finished_at) FILTER (WHERE status = 'SUCCESS') AS last_success_at,
       max(finished_at) FILTER (WHERE status = 'FAILED') AS last_failure_at,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE status = 'SUCCESS') AS p50_duration_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) FILTER (WHERE status = 'SUCCESS') AS p95_duration_ms
  FROM lease_sched.sys_cron_executions
 GROUP BY job_name;
COMMENT ON VIEW lease_sched.job_summary IS 'Per job: runs by status, last success and failure, p50/p95 duration of successful runs.';

-- The history for readers: every column of sys_cron_executions except the holder's secret
-- lease_token (with it, anyone could heartbeat or finish the lease). Grant SELECT on this
-- view, never on the table (docs/api.md, "Privileges").
CREATE VIEW lease_sched.executions AS
SELECT id, job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
       fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at, stale_after, started_at,
       finished_at, duration_ms, next_retry_at, error_code, error_msg, rows_affected, result, updated_at
  FROM lease_sched.sys_cron_executions;
COMMENT ON VIEW lease_sched.executions IS 'The execution history without the secret lease_token: what readers are granted.';

REVOKE ALL ON lease_sched.active_leases, lease_sched.job_summary, lease_sched.executions FROM PUBLIC;
