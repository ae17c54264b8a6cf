-- lease_sched.run: run one SQL command under a lease, once per plan, from pg_cron or by
-- hand. A procedure (not a function) because it commits the claim before it executes the
-- command, so the RUNNING row is visible to every other scheduler while the command runs.
-- SECURITY INVOKER and no SET clause on purpose: the command runs with the caller's
-- privileges, and PostgreSQL allows COMMIT only in such procedures. Call it at top level
-- (as pg_cron does), not inside BEGIN ... COMMIT.
--
-- Because it cannot pin its search_path, the body names every function with its schema
-- and every operator as OPERATOR(pg_catalog.x): nothing a role puts on the caller's
-- search_path (say, a pg_cron job owned by a superuser) can stand in for them.
--
-- A job with a definition (lease_sched.job_define) needs only its name and the command:
-- every, max_attempts and stale_timeout default to NULL = the definition's, and the plan
-- follows its misfire policy, grace and pause (lease_next_plan).
--
-- What run() guarantees (docs/api.md, "run"):
--  * the command's work commits only together with a successful lease_finish: a run
--    whose lease was lost (stolen after it went stale) raises LS001 and rolls back;
--  * the command runs under a statement timeout that ends before the lease goes stale
--    (run_arm_deadline), so a slow command is cancelled before anyone may steal its plan;
--  * every failure of the command, a cancel or timeout included, and every deferred
--    constraint (checked before the finish, not at COMMIT) ends the plan FAILED with the
--    real SQLSTATE, then the error is raised again for the caller (pg_cron logs it).

-- Arm the statement timeout that bounds run()'s command by its lease: it fires
-- `margin` before stale_after (a tenth of stale_timeout, at most 1 second) unless the
-- caller's own statement_timeout fires earlier. Returns whether it armed anything.
CREATE FUNCTION lease_sched.run_arm_deadline(stale_after timestamptz, stale_timeout interval)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'run_arm_deadline_wrapper';
COMMENT ON FUNCTION lease_sched.run_arm_deadline(timestamptz, interval) IS
    'Used by run(): a statement timeout that fires just before the lease would go stale.';

CREATE FUNCTION lease_sched.run_disarm_deadline(armed boolean)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'run_disarm_deadline_wrapper';
COMMENT ON FUNCTION lease_sched.run_disarm_deadline(boolean) IS
    'Used by run(): cancel the timeout run_arm_deadline armed; true when it had fired (the command outlived its lease).';

CREATE PROCEDURE lease_sched.run(
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
    -- '1 hour'. A paused job gets no plan from lease_next_plan.
    SELECT d.every, d.max_attempts, d.stale_timeout INTO job_every, job_max_attempts, job_stale_timeout
      FROM lease_sched.job_definition(job_name => run.job_name, scope_kind => run.scope_kind,
                                      scope_id => run.scope_id) AS d;
    -- (A defined job leaves every NULL when it runs on a cron calendar: the planner reads
    -- it. max_attempts is NULL here only when the job has no definition.)
    job_every := coalesce(run.every, job_every, CASE WHEN job_max_attempts IS NULL THEN '1 minute'::pg_catalog.interval END);
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

COMMENT ON PROCEDURE lease_sched.run(text, text, interval, text, text, int, interval) IS
    'Run a SQL command once per plan of a job (for cron.schedule): claim, commit, execute under a lease deadline, finish SUCCESS or FAILED (then re-raise); never commits the work of a lost lease.';
