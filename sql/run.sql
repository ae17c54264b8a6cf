-- lease_sched.run: run one SQL command under a lease, once per plan, from pg_cron or by
-- hand. A procedure (not a function) because it commits the claim before it executes the
-- command, so the RUNNING row is visible to every other scheduler while the command runs.
-- SECURITY INVOKER and no SET clause on purpose: the command runs with the caller's
-- privileges, and PostgreSQL allows COMMIT only in such procedures. Call it at top level
-- (as pg_cron does), not inside BEGIN ... COMMIT.

CREATE PROCEDURE lease_sched.run(
    job_name      text,
    command       text,
    every         interval DEFAULT '1 minute',
    scope_kind    text     DEFAULT 'global',
    scope_id      text     DEFAULT '',
    max_attempts  int      DEFAULT 3,
    stale_timeout interval DEFAULT '1 hour'
)
LANGUAGE plpgsql
AS $run$
DECLARE
    plan      timestamptz;
    lease     record;
    affected  bigint;
    failed    boolean := false;
    err_state text;
    err_msg   text;
    err_detail text;
    err_hint  text;
BEGIN
    IF command IS NULL OR command = '' THEN
        RAISE EXCEPTION 'command must not be NULL or empty' USING ERRCODE = '22023';
    END IF;
    plan := lease_sched.lease_next_plan(job_name => run.job_name, every => run.every, scope_kind => run.scope_kind,
                                        scope_id => run.scope_id, catch_up => false);
    IF plan IS NULL THEN
        RETURN;  -- nothing due: this plan ran, runs now, or waits for its retry backoff
    END IF;
    SELECT * INTO lease
      FROM lease_sched.lease_try_claim(job_name => run.job_name, plan_time => plan,
               runner_id => pg_catalog.format('%s pid %s',
                   coalesce(nullif(pg_catalog.current_setting('application_name'), ''), 'session'),
                   pg_catalog.pg_backend_pid()),
               scope_kind => run.scope_kind, scope_id => run.scope_id, stale_timeout => run.stale_timeout,
               max_attempts => run.max_attempts);
    IF lease.outcome = 'conflicted' THEN
        RETURN;  -- another scheduler has this plan
    END IF;
    COMMIT;

    BEGIN
        EXECUTE command;
        GET DIAGNOSTICS affected = ROW_COUNT;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
        failed := true;
    END;

    IF failed THEN
        PERFORM lease_sched.lease_finish(execution_id => lease.execution_id, lease_token => lease.lease_token,
                                         status => 'FAILED', error_code => err_state, error_msg => err_msg);
        COMMIT;  -- the FAILED row stays, then the caller (pg_cron) sees the error too
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                              DETAIL = coalesce(err_detail, ''), HINT = coalesce(err_hint, '');
    END IF;
    PERFORM lease_sched.lease_finish(execution_id => lease.execution_id, lease_token => lease.lease_token,
                                     status => 'SUCCESS', rows_affected => affected);
    COMMIT;
END;
$run$;

COMMENT ON PROCEDURE lease_sched.run(text, text, interval, text, text, int, interval) IS
    'Run a SQL command once per plan of a job (for cron.schedule): claim, commit, execute, finish SUCCESS or FAILED (then re-raise).';
