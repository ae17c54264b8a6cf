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
    'Whether a background worker sweeps this database (swept), its state (sweeping, starting, waiting for update, over max_databases, no worker slot, not lease_sched.database, template, not preloaded), the sweeper''s pid and its last sweep.';

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

-- run() raises a failed command's error again without empty DETAIL and HINT lines.
CREATE OR REPLACE PROCEDURE lease_sched.run(
    job_name      text,
    command       text,
    every         interval DEFAULT NULL,
    scope_kind    text     DEFAULT 'global',
    scope_id      text     DEFAULT '',
    max_attempts  int      DEFAULT NULL,
    stale_timeout interval DEFAULT NULL
)
LANGUAGE plpgsql
AS $run$
DECLARE
    job_every         interval;
    job_max_attempts  int;
    job_stale_timeout interval;
    plan       timestamptz;
    lease      record;
    affected   bigint;
    armed      boolean := false;
    failed     boolean := false;
    deadline   boolean := false;
    finished   boolean;
    err_state  text;
    err_msg    text;
    err_detail text;
    err_hint   text;
BEGIN
    IF command IS NULL OR command OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'command must not be NULL or empty' USING ERRCODE = '22023';
    END IF;
    -- The job's definition (job_define), when it has one, fills in every argument left
    -- NULL; an argument given explicitly wins. Without a definition: '1 minute', 3 and
    -- '1 hour', as in 0.1. A paused job gets no plan from lease_next_plan.
    SELECT d.every, d.max_attempts, d.stale_timeout INTO job_every, job_max_attempts, job_stale_timeout
      FROM lease_sched.job_definition(job_name => run.job_name, scope_kind => run.scope_kind,
                                      scope_id => run.scope_id) AS d;
    job_every := coalesce(run.every, job_every, interval '1 minute');
    job_max_attempts := coalesce(run.max_attempts, job_max_attempts, 3);
    job_stale_timeout := coalesce(run.stale_timeout, job_stale_timeout, interval '1 hour');
    plan := lease_sched.lease_next_plan(job_name => run.job_name, every => job_every, scope_kind => run.scope_kind,
                                        scope_id => run.scope_id, catch_up => false);
    IF plan IS NULL THEN
        RETURN;  -- nothing due: this plan ran, runs now, or waits for its retry backoff
    END IF;
    SELECT * INTO lease
      FROM lease_sched.lease_try_claim(job_name => run.job_name, plan_time => plan,
               runner_id => pg_catalog.format('%s pid %s',
                   -- (no NULLIF: it would use the caller's `=`, which a role may have planted)
                   CASE WHEN pg_catalog.current_setting('application_name') OPERATOR(pg_catalog.=) ''
                        THEN 'session' ELSE pg_catalog.current_setting('application_name') END,
                   pg_catalog.pg_backend_pid()),
               scope_kind => run.scope_kind, scope_id => run.scope_id, stale_timeout => job_stale_timeout,
               max_attempts => job_max_attempts);
    IF lease.outcome OPERATOR(pg_catalog.=) 'conflicted' THEN
        RETURN;  -- another scheduler has this plan
    END IF;
    COMMIT;

    BEGIN
        armed := lease_sched.run_arm_deadline(lease.stale_after, job_stale_timeout);
        EXECUTE command;
        GET DIAGNOSTICS affected = ROW_COUNT;
        -- Deferred constraints and triggers fire here, inside this block, so that their
        -- failure is caught and recorded instead of escaping from the final COMMIT.
        SET CONSTRAINTS ALL IMMEDIATE;
        PERFORM lease_sched.run_disarm_deadline(armed);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
        failed := true;
        -- Our own deadline (not the caller's statement_timeout) cancelled the command:
        -- the run outlived its lease, as a silent runner would. Like a stale lease it
        -- may be retried at once rather than after the backoff.
        deadline := lease_sched.run_disarm_deadline(armed);
    END;
    PERFORM lease_sched.run_disarm_deadline(armed);

    IF failed THEN
        finished := lease_sched.lease_finish(execution_id => lease.execution_id, lease_token => lease.lease_token,
                        status => 'FAILED', error_code => err_state,
                        error_msg => CASE WHEN deadline
                                          THEN 'command cancelled at its lease deadline (stale_timeout ' OPERATOR(pg_catalog.||) job_stale_timeout::text OPERATOR(pg_catalog.||) '): ' OPERATOR(pg_catalog.||) err_msg
                                          ELSE err_msg END,
                        retry_in => CASE WHEN deadline THEN interval '0' END);
        COMMIT;  -- the FAILED row stays, then the caller (pg_cron) sees the error too
        -- Raised again as it was: DETAIL and HINT only when the error had them (an empty
        -- one would print as an empty line, and RAISE refuses a NULL option).
        IF err_detail OPERATOR(pg_catalog.<>) '' AND err_hint OPERATOR(pg_catalog.<>) '' THEN
            RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg, DETAIL = err_detail, HINT = err_hint;
        ELSIF err_detail OPERATOR(pg_catalog.<>) '' THEN
            RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg, DETAIL = err_detail;
        ELSIF err_hint OPERATOR(pg_catalog.<>) '' THEN
            RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg, HINT = err_hint;
        ELSE
            RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg;
        END IF;
    END IF;
    finished := lease_sched.lease_finish(execution_id => lease.execution_id, lease_token => lease.lease_token,
                                         status => 'SUCCESS', rows_affected => affected);
    IF NOT finished THEN
        -- The lease was taken over while the command ran: another runner owns this plan
        -- now. Raising here rolls the command's work back, so it never commits twice.
        RAISE EXCEPTION 'lease_sched.run: the lease of job "%" plan % was lost before the command finished; its work is rolled back',
                        run.job_name, plan
              USING ERRCODE = 'LS001',
                    HINT = 'The command outlived stale_timeout; raise stale_timeout or make the command faster.';
    END IF;
    COMMIT;
END;
$run$;

