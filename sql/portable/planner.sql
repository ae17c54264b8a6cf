-- Portable edition: the PL/pgSQL twins of the planner (native: src/api/planner.rs,
-- src/planner/, and the pure decisions of crates/lease_model, planner::next_plan and
-- planner::decide, which these follow step by step). Times are microseconds since
-- 2000-01-01 (bigint), as in the model; slots are buckets of `every` aligned on the
-- Unix epoch (date_bin(every, t, 'epoch')).

-- The slot holding t: the start of its bucket of `every` microseconds from the Unix epoch.
CREATE FUNCTION lease_sched.portable_slot(every bigint, t bigint)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN t - ((t + 946684800000000) % every
                                 + every) % every;

-- twin: lease_latest_plan
CREATE FUNCTION lease_sched.lease_latest_plan(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS TABLE (plan_time timestamptz, status text, attempt int, max_attempts int, next_retry_at timestamptz,
               retry_eligible boolean)
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS $latest$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    PERFORM lease_sched.portable_name(lease_latest_plan.job_name, 'job_name');
    PERFORM lease_sched.portable_name(lease_latest_plan.scope_kind, 'scope_kind');
    PERFORM lease_sched.portable_name(lease_latest_plan.scope_id, 'scope_id', true);
    -- The latest execution by plan_time at or before now: a row planned in the future is
    -- not the cursor.
    RETURN QUERY
    SELECT e.plan_time, e.status, e.attempt, e.max_attempts, e.next_retry_at,
           e.status = 'FAILED' AND e.attempt < e.max_attempts AND coalesce(e.next_retry_at <= now_, true)
      FROM lease_sched.sys_cron_executions e
     WHERE e.job_name = lease_latest_plan.job_name AND e.scope_kind = lease_latest_plan.scope_kind
       AND e.scope_id = lease_latest_plan.scope_id AND e.plan_time <= now_
       AND NOT EXISTS (SELECT 1 FROM lease_sched.job_triggers t   -- "run now" plans are not the cursor
                        WHERE t.job_name = e.job_name AND t.scope_kind = e.scope_kind AND t.scope_id = e.scope_id
                          AND t.plan_time = e.plan_time)
     ORDER BY e.plan_time DESC LIMIT 1;
END;
$latest$;

-- twin: lease_next_plan
CREATE FUNCTION lease_sched.lease_next_plan(job_name text, every interval DEFAULT NULL, scope_kind text DEFAULT 'global',
                                            scope_id text DEFAULT '', catch_up boolean DEFAULT true)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $next$
#variable_conflict use_column
DECLARE
    now_      timestamptz := clock_timestamp();
    now_us    bigint;
    e         bigint;      -- the stride, microseconds
    g         bigint;      -- the grace, microseconds
    d         record;      -- the job's definition
    has_d     boolean;
    l         record;      -- the latest plan at or before now
    has_l     boolean;
    l_plan    bigint;
    cur       bigint;      -- the current slot
    lo        bigint;      -- the first slot not yet decided
    last_     bigint;
    run_      bigint;
    s_from    bigint[] := '{}';
    s_count   bigint[] := '{}';
    s_reason  text[] := '{}';
    budget    bigint := 1000;  -- lease_model::planner::MAX_SKIPS_PER_CALL
    cut       boolean := false;
    message   text;
BEGIN
    PERFORM lease_sched.portable_name(lease_next_plan.job_name, 'job_name');
    IF lease_next_plan.every IS NOT NULL THEN
        PERFORM lease_sched.portable_interval(lease_next_plan.every, 'every');
        e := lease_sched.portable_stride(lease_next_plan.every, 'every');
    END IF;
    PERFORM lease_sched.portable_name(lease_next_plan.scope_kind, 'scope_kind');
    PERFORM lease_sched.portable_name(lease_next_plan.scope_id, 'scope_id', true);
    PERFORM lease_sched.portable_required(lease_next_plan.catch_up IS NULL, 'catch_up');

    SELECT j.every, j.misfire, j.grace, j.stale_timeout, j.paused, j.resumed_at, j.cron,
           CASE WHEN NOT j.paused AND EXISTS (
                     SELECT 1 FROM lease_sched.job_triggers t
                      WHERE t.job_name = j.job_name AND t.scope_kind = j.scope_kind AND t.scope_id = j.scope_id)
                THEN lease_sched.job_trigger_due(j.job_name, j.scope_kind, j.scope_id) END AS pending_trigger
      INTO d
      FROM lease_sched.jobs j
     WHERE j.job_name = lease_next_plan.job_name AND j.scope_kind = lease_next_plan.scope_kind
       AND j.scope_id = lease_next_plan.scope_id;
    has_d := FOUND;
    now_us := lease_sched.portable_db_micros(now_);
    SELECT x.plan_time, x.status, x.attempt, x.max_attempts, x.next_retry_at, x.stale_after INTO l
      FROM lease_sched.sys_cron_executions x
     WHERE x.job_name = lease_next_plan.job_name AND x.scope_kind = lease_next_plan.scope_kind
       AND x.scope_id = lease_next_plan.scope_id AND x.plan_time <= now_
       AND NOT EXISTS (SELECT 1 FROM lease_sched.job_triggers t   -- "run now" plans are not the cursor
                        WHERE t.job_name = x.job_name AND t.scope_kind = x.scope_kind AND t.scope_id = x.scope_id
                          AND t.plan_time = x.plan_time)
     ORDER BY x.plan_time DESC LIMIT 1;
    has_l := FOUND;

    IF NOT has_d THEN
        -- No definition: exactly the 0.1 planner (lease_model::planner::next_plan).
        IF e IS NULL THEN
            RAISE EXCEPTION 'every must be given for a job without a definition' USING ERRCODE = '22023',
                  HINT = 'Pass every => ''...'', or define the job once with lease_sched.job_define.';
        END IF;
    ELSE
        -- A "run now" plan (job_trigger) goes first; none is offered while paused.
        IF d.pending_trigger IS NOT NULL THEN
            RETURN d.pending_trigger;
        END IF;
        -- A calendar job: the one implementation of calendars, in SQL (sql/schedule.sql).
        IF d.cron IS NOT NULL THEN
            IF e IS NOT NULL THEN
                RAISE EXCEPTION 'every must not be given for a job defined with cron' USING ERRCODE = '22023',
                      HINT = 'Leave every NULL: the job''s calendar decides its plans.';
            END IF;
            PERFORM lease_sched.portable_token_floor();
            RETURN lease_sched.calendar_next_plan(lease_next_plan.job_name, lease_next_plan.scope_kind,
                                                  lease_next_plan.scope_id);
        END IF;
        IF d.every IS NULL THEN
            RAISE EXCEPTION 'every is missing from the job''s definition' USING ERRCODE = '22023';
        END IF;
        -- An override below a second would make each call record up to 1000 SKIPPED slots
        -- and run none of them, as job_define's own bound explains.
        IF e IS NOT NULL AND e < 1000000 THEN
            RAISE EXCEPTION 'every must be at least 1 second for a job with a definition' USING ERRCODE = '22023';
        END IF;
        IF e IS NULL THEN
            e := lease_sched.portable_stride(d.every, 'every');
        END IF;
        IF d.grace IS NOT NULL THEN
            g := lease_sched.portable_stride(d.grace, 'grace');
        END IF;
        IF d.paused THEN
            RETURN NULL;  -- a paused job gets nothing, and nothing is written
        END IF;
    END IF;

    -- A live lease blocks overlap, a stale one is there to be taken over; a pending retry
    -- keeps the cursor until it is due.
    IF has_l AND l.status = 'RUNNING' THEN
        RETURN CASE WHEN l.stale_after < now_ THEN l.plan_time END;
    END IF;
    IF has_l AND l.status = 'FAILED' AND l.attempt < l.max_attempts THEN
        RETURN CASE WHEN coalesce(l.next_retry_at <= now_, true) THEN l.plan_time END;
    END IF;

    cur := lease_sched.portable_slot(e, now_us);
    IF has_l THEN
        l_plan := lease_sched.portable_db_micros(l.plan_time);
    END IF;
    IF NOT has_d THEN
        IF NOT has_l THEN
            RETURN lease_sched.portable_time_of(cur);
        END IF;
        run_ := CASE WHEN lease_next_plan.catch_up THEN lease_sched.portable_slot(e, l_plan) + e ELSE cur END;
        RETURN CASE WHEN run_ <= now_us AND run_ > l_plan THEN lease_sched.portable_time_of(run_) END;
    END IF;

    -- A definition (lease_model::planner::decide): the slots after the latest plan up to
    -- the current one are, in order, those due before the last resume (skipped: paused),
    -- those older than now - grace (skipped: grace), then the rest, where the misfire
    -- policy picks the plan.
    lo := CASE WHEN has_l THEN lease_sched.portable_slot(e, l_plan) + e ELSE cur END;
    IF lo > cur THEN
        RETURN NULL;
    END IF;
    IF d.resumed_at IS NOT NULL THEN
        last_ := least(lease_sched.portable_slot(e, lease_sched.portable_db_micros(d.resumed_at) - 1), cur);
        IF last_ >= lo THEN
            s_from := s_from || lo; s_count := s_count || ((last_ - lo) / e + 1); s_reason := s_reason || 'paused'::text;
            lo := last_ + e;
        END IF;
    END IF;
    IF g IS NOT NULL THEN
        last_ := least(lease_sched.portable_slot(e, now_us - g - 1), cur);
        IF last_ >= lo THEN
            s_from := s_from || lo; s_count := s_count || ((last_ - lo) / e + 1); s_reason := s_reason || 'grace'::text;
            lo := last_ + e;
        END IF;
    END IF;
    IF lo > cur THEN
        run_ := NULL;
    ELSIF d.misfire = 'all' THEN
        run_ := lo;
    ELSIF d.misfire = 'latest' AND lo < cur THEN
        last_ := cur - 2 * e;
        IF last_ >= lo THEN
            s_from := s_from || lo; s_count := s_count || ((last_ - lo) / e + 1); s_reason := s_reason || 'misfire'::text;
            lo := last_ + e;
        END IF;
        run_ := lo;
    ELSIF d.misfire = 'latest' THEN
        run_ := cur;
    ELSE
        last_ := cur - e;
        IF last_ >= lo THEN
            s_from := s_from || lo; s_count := s_count || ((last_ - lo) / e + 1); s_reason := s_reason || 'misfire'::text;
            lo := last_ + e;
        END IF;
        run_ := cur;
    END IF;

    -- At most 1000 skipped slots per call, oldest first; a longer backlog is written over
    -- several calls, and no plan is offered until it is.
    FOR i IN 1..coalesce(array_length(s_from, 1), 0) LOOP
        IF budget = 0 THEN
            s_count[i] := 0;
            cut := true;
            CONTINUE;
        END IF;
        IF s_count[i] > budget THEN
            s_count[i] := budget;
            cut := true;
        END IF;
        budget := budget - s_count[i];
    END LOOP;
    IF cut THEN
        run_ := NULL;
    END IF;

    -- The skipped slots: final rows nobody holds, error_code = the reason, each with a
    -- fencing token never granted to anyone. A slot someone claimed meanwhile keeps its row.
    IF coalesce(array_length(s_from, 1), 0) > 0 THEN
        PERFORM lease_sched.portable_token_floor();
        FOR i IN 1..array_length(s_from, 1) LOOP
            CONTINUE WHEN s_count[i] = 0;
            message := CASE s_reason[i]
                WHEN 'misfire' THEN format('missed slot skipped by misfire policy ''%s''', d.misfire)
                WHEN 'paused' THEN 'due while the job was paused'
                ELSE 'missed slot older than now - grace' END;
            INSERT INTO lease_sched.sys_cron_executions (
                job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
                lease_token, fencing_token, allow_stale_reentry, stale_timeout, started_at, finished_at,
                duration_ms, error_code, error_msg, updated_at)
            SELECT lease_next_plan.job_name, lease_next_plan.scope_kind, lease_next_plan.scope_id,
                   lease_sched.portable_time_of(s_from[i] + k * e), 'SKIPPED', 1, 1, 'lease_sched planner',
                   gen_random_uuid(), nextval('lease_sched.fencing_token_seq'), false, d.stale_timeout, now_, now_,
                   0, s_reason[i], message, now_
              FROM generate_series(0::bigint, s_count[i] - 1) AS k
            ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING;
        END LOOP;
    END IF;
    RETURN lease_sched.portable_time_of(run_);
END;
$next$;
