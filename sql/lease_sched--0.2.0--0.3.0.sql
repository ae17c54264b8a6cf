-- lease_sched 0.2.0 -> 0.3.0 (ALTER EXTENSION lease_sched UPDATE). See CHANGELOG.md.
-- Every object below must end exactly as a fresh CREATE EXTENSION of 0.3.0 makes it
-- (scripts/upgrade_test.sh compares pg_dump --schema-only of both). Every name is
-- schema-qualified: the script runs with the updating role's search_path.

-- Every database with the extension is swept (not only lease_sched.database): a status
-- function, the announcement the install script makes, and job_health's `swept` column
-- (added last, so CREATE OR REPLACE keeps the view and its grants).
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

REVOKE EXECUTE ON FUNCTION lease_sched.sweeper_status(), lease_sched.sys_sweeper_announce() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lease_sched.sweeper_status() TO PUBLIC;

-- The dead-man's switch: one row per defined job and scope. `success_due_by` is when the
-- next SUCCESS is due: the first slot after the last successful plan (or after the
-- definition was created, or the job resumed, when later), plus every + grace +
-- stale_timeout. `overdue`: not paused and the database clock is past it. `swept`: a
-- background worker sweeps this database (if not, a dead runner's lease is never failed).
CREATE OR REPLACE VIEW lease_sched.job_health AS
SELECT j.job_name, j.scope_kind, j.scope_id, j.every, j.misfire, j.paused,
       s.plan_time AS last_success_plan, s.finished_at AS last_success_at,
       l.plan_time AS last_plan, l.status AS last_status, l.error_code AS last_error_code,
       f.consecutive_failures, k.skipped_24h,
       d.success_due_by,
       NOT j.paused AND clock_timestamp() > d.success_due_by AS overdue,
       w.swept
  FROM lease_sched.jobs j
  CROSS JOIN lease_sched.sweeper_status() w
  LEFT JOIN LATERAL (
       SELECT e.plan_time, e.finished_at FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.status = 'SUCCESS'
        ORDER BY e.plan_time DESC LIMIT 1) s ON true
  LEFT JOIN LATERAL (
       SELECT e.plan_time, e.status, e.error_code FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.plan_time <= clock_timestamp()
        ORDER BY e.plan_time DESC LIMIT 1) l ON true
  CROSS JOIN LATERAL (
       SELECT count(*) AS consecutive_failures FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.status = 'FAILED' AND (s.plan_time IS NULL OR e.plan_time > s.plan_time)) f
  CROSS JOIN LATERAL (
       SELECT count(*) AS skipped_24h FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.status = 'SKIPPED' AND e.plan_time > clock_timestamp() - interval '24 hours'
          AND e.plan_time <= clock_timestamp()) k
  CROSS JOIN LATERAL (
       SELECT date_bin(j.every, greatest(s.plan_time, j.created_at, j.resumed_at), timestamptz 'epoch')
              + j.every + j.every + coalesce(j.grace, interval '0') + j.stale_timeout AS success_due_by) d;
COMMENT ON VIEW lease_sched.job_health IS
    'Per defined job and scope: last success, last status, consecutive failures, skipped slots in 24 h, overdue (no SUCCESS within every + grace + stale_timeout of a due slot), and swept (a background worker sweeps this database).';

SELECT lease_sched.sys_sweeper_announce();
