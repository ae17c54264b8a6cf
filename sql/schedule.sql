-- Plans decided by the database for defined jobs (docs/api.md, "Calendars"): the planner
-- of cron jobs, the next runs of a job, "run now", the one-call claim, and pg_cron
-- registration. PL/pgSQL, so the portable edition uses this file as is; every function
-- pins its search_path.

-- The plan a cron job should run now, or NULL: the planner of lease_next_plan for a job
-- defined with cron (src/planner/ calls it; the interval form stays in Rust). The
-- same rules as the interval planner (lease_model::planner::decide), over the calendar's
-- slots instead of buckets:
--  * paused: nothing. A RUNNING latest plan: its plan once stale, else nothing. A FAILED
--    one with attempts left: its plan once the retry is due, else nothing;
--  * otherwise the slots after the latest plan (with no history: after the definition
--    was created) up to now: those before the last resume are SKIPPED (paused), those
--    older than now - grace SKIPPED (grace), and the misfire policy picks among the rest:
--    all the oldest, latest the most recent missed one (older ones SKIPPED, misfire) or
--    else the current one, skip the current one (missed ones SKIPPED, misfire);
--  * at most 1000 SKIPPED rows per call; a longer backlog offers no plan until written.
-- The plans of job_trigger never count as the latest plan (they shift no slot).
-- The caller draws fencing tokens for the SKIPPED rows after its own checks (the native
-- edition raises the token floor first).
CREATE FUNCTION lease_sched.calendar_next_plan(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j         record;
    l         record;
    now       timestamptz := clock_timestamp();
    s         timestamptz;
    skips     timestamptz[] := '{}';
    reasons   text[] := '{}';
    eligible  timestamptz[] := '{}';
    truncated boolean := false;
    run_plan  timestamptz;
    n         int;
BEGIN
    SELECT d.cron_spec, d.timezone, d.misfire, d.grace, d.paused, d.resumed_at, d.created_at, d.stale_timeout
      INTO j
      FROM lease_sched.jobs d
     WHERE d.job_name = $1 AND d.scope_kind = $2 AND d.scope_id = $3;
    IF NOT FOUND OR j.cron_spec IS NULL THEN
        RAISE EXCEPTION 'job_name "%" has no cron definition%', $1,
              CASE WHEN $2 = 'global' AND $3 = '' THEN '' ELSE format(' in scope %s/%s', $2, $3) END
              USING ERRCODE = '22023';
    END IF;
    IF j.paused THEN
        RETURN NULL;
    END IF;
    SELECT e.plan_time, e.status, e.attempt, e.max_attempts, e.next_retry_at, e.stale_after
      INTO l
      FROM lease_sched.sys_cron_executions e
     WHERE e.job_name = $1 AND e.scope_kind = $2 AND e.scope_id = $3 AND e.plan_time <= now
       AND NOT EXISTS (SELECT 1 FROM lease_sched.job_triggers t
                        WHERE t.job_name = $1 AND t.scope_kind = $2 AND t.scope_id = $3 AND t.plan_time = e.plan_time)
     ORDER BY e.plan_time DESC
     LIMIT 1;
    IF FOUND THEN
        IF l.status = 'RUNNING' THEN
            RETURN CASE WHEN l.stale_after < now THEN l.plan_time END;
        END IF;
        IF l.status = 'FAILED' AND l.attempt < l.max_attempts THEN
            RETURN CASE WHEN l.next_retry_at IS NULL OR l.next_retry_at <= now THEN l.plan_time END;
        END IF;
        s := l.plan_time;
    ELSE
        s := j.created_at;
    END IF;
    LOOP
        s := lease_sched.cron_next_slot(j.cron_spec, j.timezone, s);
        EXIT WHEN s IS NULL OR s > now;
        IF cardinality(skips) + cardinality(eligible) > 1000 THEN
            truncated := true;
            EXIT;
        END IF;
        IF j.resumed_at IS NOT NULL AND s < j.resumed_at THEN
            skips := skips || s;
            reasons := reasons || 'paused'::text;
        ELSIF j.grace IS NOT NULL AND s < now - j.grace THEN
            skips := skips || s;
            reasons := reasons || 'grace'::text;
        ELSE
            eligible := eligible || s;
            EXIT WHEN j.misfire = 'all';
        END IF;
    END LOOP;
    n := cardinality(eligible);
    IF truncated THEN
        -- The current slot is further on: every collected slot is skipped one way or another.
        FOR i IN 1 .. n LOOP
            skips := skips || eligible[i];
            reasons := reasons || 'misfire'::text;
        END LOOP;
        run_plan := NULL;
    ELSIF n = 0 THEN
        run_plan := NULL;
    ELSIF j.misfire = 'all' THEN
        run_plan := eligible[1];
    ELSIF j.misfire = 'latest' THEN
        -- eligible[n] is the current slot; eligible[n - 1] the most recent missed one.
        FOR i IN 1 .. n - 2 LOOP
            skips := skips || eligible[i];
            reasons := reasons || 'misfire'::text;
        END LOOP;
        run_plan := eligible[greatest(n - 1, 1)];
    ELSE
        FOR i IN 1 .. n - 1 LOOP
            skips := skips || eligible[i];
            reasons := reasons || 'misfire'::text;
        END LOOP;
        run_plan := eligible[n];
    END IF;
    IF cardinality(skips) > 1000 THEN
        skips := skips[1:1000];
        reasons := reasons[1:1000];
        run_plan := NULL;
    END IF;
    IF cardinality(skips) > 0 THEN
        -- Final rows nobody holds, as the interval planner writes them (src/planner/store.rs).
        INSERT INTO lease_sched.sys_cron_executions (
               job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
               lease_token, fencing_token, allow_stale_reentry, stale_timeout, started_at, finished_at,
               duration_ms, error_code, error_msg, updated_at)
        SELECT $1, $2, $3, k.plan_time, 'SKIPPED', 1, 1, 'lease_sched planner',
               gen_random_uuid(), nextval('lease_sched.fencing_token_seq'), false, j.stale_timeout, now, now, 0,
               k.reason,
               CASE k.reason WHEN 'misfire' THEN format('missed slot skipped by misfire policy ''%s''', j.misfire)
                             WHEN 'paused' THEN 'due while the job was paused'
                             ELSE 'missed slot older than now - grace' END,
               now
          FROM unnest(skips, reasons) AS k(plan_time, reason)
        ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING;
    END IF;
    RETURN run_plan;
END;
$$;
COMMENT ON FUNCTION lease_sched.calendar_next_plan(text, text, text) IS
    'The planner of a job defined with cron (lease_next_plan calls it): the slot to run now or NULL, recording skipped slots.';

-- The oldest "run now" plan of a job still to be run: not claimed yet, or stale, or a
-- FAILED run whose retry is due. NULL when there is none (or the job is paused).
CREATE FUNCTION lease_sched.job_trigger_due(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
SELECT t.plan_time
  FROM lease_sched.job_triggers t
  JOIN lease_sched.jobs d
    ON d.job_name = t.job_name AND d.scope_kind = t.scope_kind AND d.scope_id = t.scope_id AND NOT d.paused
  LEFT JOIN lease_sched.sys_cron_executions e
    ON e.job_name = t.job_name AND e.scope_kind = t.scope_kind AND e.scope_id = t.scope_id AND e.plan_time = t.plan_time
 WHERE t.job_name = $1 AND t.scope_kind = $2 AND t.scope_id = $3 AND t.plan_time <= clock_timestamp()
   AND (e.id IS NULL
        OR (e.status = 'RUNNING' AND e.stale_after < clock_timestamp())
        OR (e.status = 'FAILED' AND e.attempt < e.max_attempts
            AND coalesce(e.next_retry_at, '-infinity') <= clock_timestamp()))
 ORDER BY t.plan_time
 LIMIT 1
$$;
COMMENT ON FUNCTION lease_sched.job_trigger_due(text, text, text) IS
    'The oldest job_trigger plan still to run (lease_next_plan offers it before the schedule), or NULL.';

CREATE FUNCTION lease_sched.job_trigger(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p timestamptz := clock_timestamp();
BEGIN
    IF $1 IS NULL OR $2 IS NULL OR $3 IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', CASE WHEN $1 IS NULL THEN 'job_name' WHEN $2 IS NULL THEN 'scope_kind' ELSE 'scope_id' END
              USING ERRCODE = '22004';
    END IF;
    PERFORM 1 FROM lease_sched.jobs d WHERE d.job_name = $1 AND d.scope_kind = $2 AND d.scope_id = $3 FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job_name "%" has no definition%', $1,
              CASE WHEN $2 = 'global' AND $3 = '' THEN '' ELSE format(' in scope %s/%s', $2, $3) END
              USING ERRCODE = '22023',
              HINT = 'Define it first with lease_sched.job_define.';
    END IF;
    -- Scheduled slots fall on whole seconds; a triggered plan never does, so it never
    -- takes a slot's row.
    IF date_trunc('second', p) = p THEN
        p := p + interval '1 microsecond';
    END IF;
    INSERT INTO lease_sched.job_triggers AS t (job_name, scope_kind, scope_id, plan_time, requested_by)
    VALUES ($1, $2, $3, p, session_user);
    RETURN p;
END;
$$;
COMMENT ON FUNCTION lease_sched.job_trigger(text, text, text) IS
    'Run now: one extra plan of a defined job, due at once (its plan_time is returned); lease_claim_next and run() take it first. Scheduled slots are neither consumed nor shifted.';

CREATE FUNCTION lease_sched.job_next_runs(job_name text, n int DEFAULT 10, scope_kind text DEFAULT 'global',
                                          scope_id text DEFAULT '')
RETURNS TABLE (plan_time timestamptz, local_time timestamp)
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    j    record;
    t    timestamptz := clock_timestamp();
    b    timestamp;
BEGIN
    IF n IS NULL OR n < 1 OR n > 10000 THEN
        RAISE EXCEPTION 'n must be between 1 and 10000' USING ERRCODE = CASE WHEN n IS NULL THEN '22004' ELSE '22023' END;
    END IF;
    SELECT d.every, d.cron_spec, d.timezone INTO j
      FROM lease_sched.jobs d
     WHERE d.job_name = $1 AND d.scope_kind = $3 AND d.scope_id = $4;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job_name "%" has no definition%', $1,
              CASE WHEN $3 = 'global' AND $4 = '' THEN '' ELSE format(' in scope %s/%s', $3, $4) END
              USING ERRCODE = '22023',
              HINT = 'For an expression not defined yet, use lease_sched.cron_next_runs.';
    END IF;
    IF j.cron_spec IS NOT NULL THEN
        FOR i IN 1 .. n LOOP
            t := lease_sched.cron_next_slot(j.cron_spec, j.timezone, t);
            EXIT WHEN t IS NULL;
            plan_time := t;
            local_time := pg_catalog.timezone(j.timezone, t);
            RETURN NEXT;
        END LOOP;
    ELSE
        -- Buckets of every from the Unix epoch; a UTC timestamp, so a day is 24 hours.
        b := pg_catalog.timezone('UTC', date_bin(j.every, t, timestamptz 'epoch'));
        FOR i IN 1 .. n LOOP
            plan_time := pg_catalog.timezone('UTC', b + i * j.every);
            local_time := pg_catalog.timezone(j.timezone, plan_time);
            RETURN NEXT;
        END LOOP;
    END IF;
END;
$$;
COMMENT ON FUNCTION lease_sched.job_next_runs(text, int, text, text) IS
    'The next n slots of a defined job after the database clock, with their wall time in the job''s time zone.';

-- Plan and claim in one round trip, for runner loops: the job's definition decides the
-- plan (triggers first, then the schedule, its misfire policy, grace and pause) and its
-- stale_timeout and max_attempts. Always one row (not a set): outcome 'none'
-- (every other column NULL) when nothing is due, else lease_try_claim's row and the
-- plan_time claimed.
CREATE TYPE lease_sched.claim_next_result AS (outcome text, execution_id uuid, lease_token uuid, attempt int,
                                              fencing_token bigint, stale_after timestamptz, plan_time timestamptz);
COMMENT ON TYPE lease_sched.claim_next_result IS 'The row lease_claim_next returns.';
CREATE FUNCTION lease_sched.lease_claim_next(job_name text, runner_id text, scope_kind text DEFAULT 'global',
                                             scope_id text DEFAULT '')
RETURNS lease_sched.claim_next_result
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d record;
    p timestamptz;
    r lease_sched.claim_next_result;
BEGIN
    IF runner_id IS NULL THEN
        RAISE EXCEPTION 'runner_id must not be NULL' USING ERRCODE = '22004';
    ELSIF runner_id = '' THEN
        RAISE EXCEPTION 'runner_id must not be empty' USING ERRCODE = '22023';
    END IF;
    SELECT x.max_attempts, x.stale_timeout INTO d
      FROM lease_sched.job_definition(job_name => $1, scope_kind => $3, scope_id => $4) AS x;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job_name "%" has no definition%', $1,
              CASE WHEN $3 = 'global' AND $4 = '' THEN '' ELSE format(' in scope %s/%s', $3, $4) END
              USING ERRCODE = '22023',
              HINT = 'Define it with lease_sched.job_define, or plan with lease_next_plan(every => ...) and claim with lease_try_claim.';
    END IF;
    p := lease_sched.lease_next_plan(job_name => $1, every => NULL, scope_kind => $3, scope_id => $4, catch_up => false);
    IF p IS NULL THEN
        r.outcome := 'none';
        RETURN r;
    END IF;
    SELECT c.outcome, c.execution_id, c.lease_token, c.attempt, c.fencing_token, c.stale_after, p
      INTO r
      FROM lease_sched.lease_try_claim(job_name => $1, plan_time => p, runner_id => $2, scope_kind => $3,
                                       scope_id => $4, stale_timeout => d.stale_timeout,
                                       max_attempts => d.max_attempts) AS c;
    RETURN r;
END;
$$;
COMMENT ON FUNCTION lease_sched.lease_claim_next(text, text, text, text) IS
    'Plan and claim a defined job''s due run in one call: lease_try_claim''s row plus plan_time, or outcome ''none'' when nothing is due.';

-- pg_cron in one call: define the job (cron, timezone) and register one pg_cron entry,
-- named lease_sched:<job_name>, that calls lease_sched.run(job_name, command) every
-- minute (every second for a six-field expression, where pg_cron supports it). The plan
-- is decided here, in the job's own time zone, whatever cron.timezone says. SECURITY
-- INVOKER: the pg_cron entry is the caller's and the command runs with the caller's rights.
CREATE FUNCTION lease_sched.schedule(job_name text, cron text, command text, timezone text DEFAULT 'UTC')
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    spec   bigint[];
    period text := '* * * * *';
BEGIN
    IF command IS NULL OR command = '' THEN
        RAISE EXCEPTION 'command must not be NULL or empty' USING ERRCODE = '22023';
    END IF;
    IF to_regprocedure('cron.schedule(text,text,text)') IS NULL THEN
        RAISE EXCEPTION 'lease_sched.schedule needs pg_cron in this database' USING ERRCODE = '55000',
              HINT = 'CREATE EXTENSION pg_cron in the database cron.database_name names, or call lease_sched.run from your own scheduler.';
    END IF;
    spec := lease_sched.cron_parse(cron, 'cron');
    PERFORM lease_sched.job_define(job_name => $1, cron => $2, timezone => $4);
    -- Seconds-level pg_cron schedules ('1 seconds') exist from pg_cron 1.5.
    IF spec[10] & 8 <> 0 AND (SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_cron') !~ '^1\.[0-4]([.]|$)' THEN
        period := '1 seconds';
    END IF;
    RETURN cron.schedule('lease_sched:' || $1, period,
                         format('CALL lease_sched.run(job_name => %L, command => %L)', $1, $3));
END;
$$;
COMMENT ON FUNCTION lease_sched.schedule(text, text, text, text) IS
    'Define a cron job in a time zone and register the pg_cron entry that runs it through lease_sched.run; returns the pg_cron job id.';

CREATE FUNCTION lease_sched.unschedule(job_name text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    removed boolean := false;
BEGIN
    IF job_name IS NULL THEN
        RAISE EXCEPTION 'job_name must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF to_regclass('cron.job') IS NOT NULL THEN
        IF EXISTS (SELECT 1 FROM cron.job c WHERE c.jobname = 'lease_sched:' || $1) THEN
            PERFORM cron.unschedule('lease_sched:' || $1);
            removed := true;
        END IF;
    END IF;
    RETURN lease_sched.job_drop(job_name => $1) OR removed;
END;
$$;
COMMENT ON FUNCTION lease_sched.unschedule(text) IS
    'Remove the pg_cron entry lease_sched.schedule made and the job''s definition (its history stays); false when there was neither.';
