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

-- run() raises a failed command's error again without empty DETAIL and HINT lines.
-- run(): every type in its declarations and casts is schema-qualified (pg_catalog.text,
-- ...). It runs with the caller's search_path, through which PL/pgSQL resolves its
-- declarations; a domain planted under a type's name (CREATE DOMAIN evil.text ... CHECK
-- (evil.f(VALUE))) ran its CHECK as the caller, often a superuser's pg_cron job.
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
    -- Every type is schema-qualified: PL/pgSQL resolves a declaration through the
    -- caller's search_path (pg_temp first), and initialising a variable of a planted
    -- domain runs the domain's CHECK, as the caller.
    job_every         pg_catalog.interval;
    job_max_attempts  pg_catalog.int4;
    job_stale_timeout pg_catalog.interval;
    plan       pg_catalog.timestamptz;
    lease      pg_catalog.record;
    affected   pg_catalog.int8;
    armed      pg_catalog.bool := false;
    failed     pg_catalog.bool := false;
    deadline   pg_catalog.bool := false;
    finished   pg_catalog.bool;
    err_state  pg_catalog.text;
    err_msg    pg_catalog.text;
    err_detail pg_catalog.text;
    err_hint   pg_catalog.text;
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
    job_every := coalesce(run.every, job_every, '1 minute'::pg_catalog.interval);
    job_max_attempts := coalesce(run.max_attempts, job_max_attempts, 3);
    job_stale_timeout := coalesce(run.stale_timeout, job_stale_timeout, '1 hour'::pg_catalog.interval);
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
                                          THEN 'command cancelled at its lease deadline (stale_timeout ' OPERATOR(pg_catalog.||) job_stale_timeout::pg_catalog.text OPERATOR(pg_catalog.||) '): ' OPERATOR(pg_catalog.||) err_msg
                                          ELSE err_msg END,
                        retry_in => CASE WHEN deadline THEN '0'::pg_catalog.interval END);
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

-- Fences: only a fence given the holder's secret pins the row until its transaction ends;
-- one given only the public fencing token checks it and pins nothing (src/fencing.rs).
COMMENT ON FUNCTION lease_sched.lease_fence_check(uuid, bigint, uuid) IS
    'Used by lease_fence: NULL when the token holds the RUNNING lease (with lease_token: row locked FOR KEY SHARE until the transaction ends), else why not.';
COMMENT ON FUNCTION lease_sched.lock_fence_check(text, bigint, uuid) IS
    'Used by lock_fence: NULL when the token holds the lock (with lock_token: row locked FOR KEY SHARE until the transaction ends), else why not.';
COMMENT ON FUNCTION lease_sched.lease_fence(uuid, bigint, uuid) IS
    'Pass only while fencing_token (and lease_token, when given) holds the RUNNING lease; with lease_token, keep it so until this transaction ends (no steal completes meanwhile). Else SQLSTATE LS001.';
COMMENT ON FUNCTION lease_sched.lock_fence(text, bigint, uuid) IS
    'Pass only while fencing_token (and lock_token, when given) holds the lock; with lock_token, keep it so until this transaction ends (no takeover completes meanwhile). Else SQLSTATE LS001.';

-- Tokens are floored after every server start, not only on a new timeline: a copy started
-- from a base backup or snapshot stays on the timeline with the sequence as it was copied.
-- The new record starts at 0, so the first grant after this update floors once more.
CREATE SEQUENCE lease_sched.token_floor_server_start AS bigint MINVALUE 0 START 0 CACHE 1 NO CYCLE;
COMMENT ON SEQUENCE lease_sched.token_floor_server_start IS
    'The server start (microseconds since 2000-01-01) after which fencing_token_seq was last floored (0: not yet). Not dumped on purpose.';
-- (the new column is appended: CREATE OR REPLACE keeps the view, and its grants)
CREATE OR REPLACE VIEW lease_sched.token_floor AS
SELECT t.last_value AS timeline,
       CASE WHEN s.last_value OPERATOR(pg_catalog.<>) 0
            THEN pg_catalog.to_timestamp(s.last_value::pg_catalog.float8 OPERATOR(pg_catalog./) 1000000 OPERATOR(pg_catalog.+) 946684800)
       END AS server_start
  FROM lease_sched.token_floor_timeline t, lease_sched.token_floor_server_start s;
COMMENT ON VIEW lease_sched.token_floor IS 'The WAL timeline and the server start after which fencing tokens were last floored at the database clock (0 and NULL: not yet).';
REVOKE ALL ON lease_sched.token_floor_server_start FROM PUBLIC;

-- 0.1.0's docs told users to grant readers SELECT on the tables; since 0.2.0 readers get
-- the views (executions, job_definitions, lock_info()) because sys_cron_executions holds
-- each holder's secret lease_token and locks each holder's lock_token: whoever reads them
-- can heartbeat, finish or release in the holder's name. The update does not revoke a
-- grant a user made (that is the user's to change), but names every role that still has
-- one, with the commands that fix it (docs/install.md, "Upgrading").
DO $grants$
DECLARE
    grants pg_catalog.text;
BEGIN
    SELECT pg_catalog.string_agg(DISTINCT pg_catalog.format('%s on %s', coalesce(pg_catalog.quote_ident(a.rolname), 'PUBLIC'),
                                                            c.relname), ', ')
      INTO grants
      FROM pg_catalog.pg_class c
     CROSS JOIN LATERAL pg_catalog.aclexplode(c.relacl) AS x
      LEFT JOIN pg_catalog.pg_roles a ON a.oid OPERATOR(pg_catalog.=) x.grantee
     WHERE c.relnamespace OPERATOR(pg_catalog.=) 'lease_sched'::pg_catalog.regnamespace
       AND c.relname OPERATOR(pg_catalog.=) ANY (ARRAY['sys_cron_executions', 'locks']::pg_catalog.name[])
       AND x.privilege_type OPERATOR(pg_catalog.=) 'SELECT'
       AND x.grantee OPERATOR(pg_catalog.<>) c.relowner;
    IF grants IS NOT NULL THEN
        RAISE WARNING 'lease_sched 0.3.0: these roles may read the holders'' secret tokens (SELECT on a table): %', grants
              USING HINT = 'Readers need only the views: REVOKE SELECT ON lease_sched.sys_cron_executions, lease_sched.locks FROM <role>; GRANT SELECT ON lease_sched.executions TO <role>;';
    END IF;
END;
$grants$;

-- Intervals that 0.2.0 accepted and 0.3.0 refuses (months, or parts of opposite signs:
-- '106751992 days -2562047784 hours' passed as one day and broke job_health for every job)
-- are rewritten as the length 0.2.0 judged them by (a month as 30 days, as PostgreSQL
-- compares intervals), in the rows that still use them: job definitions, running leases,
-- held locks.
DO $intervals$
DECLARE
    target pg_catalog.text;
    fixed pg_catalog.int8;
    total pg_catalog.int8 := 0;
BEGIN
    FOREACH target IN ARRAY ARRAY['jobs.every', 'jobs.grace', 'jobs.stale_timeout',
                                  'sys_cron_executions.stale_timeout', 'locks.ttl']
    LOOP
        EXECUTE pg_catalog.replace(pg_catalog.replace(pg_catalog.replace($sql$
            UPDATE lease_sched.TBL SET COL = pg_catalog.make_interval(secs =>
                   (((pg_catalog.date_part('year', COL) OPERATOR(pg_catalog.*) 12)
                      OPERATOR(pg_catalog.+) pg_catalog.date_part('month', COL)) OPERATOR(pg_catalog.*) 30
                    OPERATOR(pg_catalog.+) pg_catalog.date_part('day', COL)) OPERATOR(pg_catalog.*) 86400
                   OPERATOR(pg_catalog.+) (pg_catalog.date_part('hour', COL) OPERATOR(pg_catalog.*) 3600)
                   OPERATOR(pg_catalog.+) (pg_catalog.date_part('minute', COL) OPERATOR(pg_catalog.*) 60)
                   OPERATOR(pg_catalog.+) pg_catalog.date_part('second', COL))
             WHERE COL IS NOT NULL EXTRA
               AND (pg_catalog.date_part('year', COL) OPERATOR(pg_catalog.<>) 0
                 OR pg_catalog.date_part('month', COL) OPERATOR(pg_catalog.<>) 0
                 OR pg_catalog.date_part('day', COL) OPERATOR(pg_catalog.<) 0
                 OR ((pg_catalog.date_part('hour', COL) OPERATOR(pg_catalog.*) 3600)
                     OPERATOR(pg_catalog.+) (pg_catalog.date_part('minute', COL) OPERATOR(pg_catalog.*) 60)
                     OPERATOR(pg_catalog.+) pg_catalog.date_part('second', COL)) OPERATOR(pg_catalog.<) 0)$sql$,
            'TBL', pg_catalog.split_part(target, '.', 1)),
            'COL', pg_catalog.split_part(target, '.', 2)),
            'EXTRA', CASE WHEN target OPERATOR(pg_catalog.=) 'sys_cron_executions.stale_timeout'
                          THEN 'AND status OPERATOR(pg_catalog.=) ''RUNNING''' ELSE '' END);
        GET DIAGNOSTICS fixed = ROW_COUNT;
        total := total OPERATOR(pg_catalog.+) fixed;
    END LOOP;
    IF total OPERATOR(pg_catalog.>) 0 THEN
        RAISE NOTICE 'lease_sched 0.3.0: % interval(s) with months or parts of opposite signs rewritten as plain lengths (jobs, running leases, locks)', total;
    END IF;
END;
$intervals$;
