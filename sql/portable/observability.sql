-- Portable edition: the PL/pgSQL twins of sweep() and stats() (native: src/sweep.rs,
-- src/api/observability.rs). There is no background worker: pg_cron calls
-- lease_sched.sweep() (lease_sched.portable_schedule_sweep schedules it).

-- What the sweep keeps between calls, and the counters stats() can report without shared
-- memory. One row. UNLOGGED: like the native counters it does not survive a crash, and
-- it counts since the server started (a row of an earlier start counts as zero).
CREATE UNLOGGED TABLE lease_sched.portable_sweep_state (
    only_row               boolean     NOT NULL DEFAULT true PRIMARY KEY CHECK (only_row),
    server_started         timestamptz NOT NULL,
    last_sweep_at          timestamptz,
    last_flush_at          timestamptz,
    last_sweep_duration_us bigint      NOT NULL DEFAULT 0,
    sweeps                 bigint      NOT NULL DEFAULT 0,
    sweep_errors           bigint      NOT NULL DEFAULT 0,
    rows_swept             bigint      NOT NULL DEFAULT 0,
    flushes                bigint      NOT NULL DEFAULT 0
);
COMMENT ON TABLE lease_sched.portable_sweep_state IS
    'Portable edition: when the sweep last ran and flushed, and its counters since the server started.';
REVOKE ALL ON lease_sched.portable_sweep_state FROM PUBLIC;

-- twin: sweep
CREATE FUNCTION lease_sched.sweep()
RETURNS TABLE (leases_failed bigint, runtimes_offline bigint, touches_flushed bigint, executions_pruned bigint)
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
ROWS 1
AS $sweep$
#variable_conflict use_column
DECLARE
    now_       timestamptz := clock_timestamp();
    started    timestamptz := pg_postmaster_start_time();
    state      record;
    failed_n   bigint := 0;
    offline_n  bigint := 0;
    flushed_n  bigint := 0;
    pruned_n   bigint := 0;
    errors     bigint := 0;
    flushes_n  bigint := 0;
    pass_rows  bigint;
    n          bigint;
    flush_ms   bigint;
    offline_ms bigint;
    retention  bigint;
    base       interval;
    max_       interval;
    message    text;
    sqlstate_  text;
BEGIN
    PERFORM lease_sched.portable_require_admin('sweep');
    SELECT * INTO state FROM lease_sched.portable_sweep_state s FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO lease_sched.portable_sweep_state (server_started, last_flush_at)
        VALUES (started, '-infinity') ON CONFLICT (only_row) DO NOTHING;
    ELSIF state.server_started <> started THEN
        -- Counters count since the server started; last_flush_at stays (older than the
        -- start, so this sweep writes what a clean shutdown left in the buffer).
        UPDATE lease_sched.portable_sweep_state
           SET server_started = started, last_sweep_duration_us = 0, sweeps = 0, sweep_errors = 0,
               rows_swept = 0, flushes = 0;
    END IF;
    SELECT * INTO state FROM lease_sched.portable_sweep_state s FOR UPDATE;

    -- Each pass in its own subtransaction: a failing pass is a WARNING, counted in
    -- sweep_errors and rolled back alone; the other passes still run. Every write is
    -- SKIP LOCKED: the sweep never waits on a runner.

    -- 1. Silent runtimes go offline, except those with a touch still buffered.
    BEGIN
        SELECT o.offline, o.touches_written INTO offline_n, n FROM lease_sched.portable_sweep_offline(now_) o;
        flushed_n := flushed_n + n;
        IF n > 0 THEN flushes_n := flushes_n + 1; END IF;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, sqlstate_ = RETURNED_SQLSTATE;
        errors := errors + 1; offline_n := 0;
        RAISE WARNING 'lease_sched sweep: the offline runtimes pass failed and was rolled back; the other passes ran: % (SQLSTATE %)', message, sqlstate_;
    END;

    -- 2. Abandoned leases fail (and get their retry time when attempts are left): past
    --    stale_after with nobody allowed to steal them, or superseded by a later plan.
    BEGIN
        base := lease_sched.portable_interval_of(lease_sched.portable_setting_ms('lease_sched.retry_backoff_base', 10000) * 1000);
        max_ := lease_sched.portable_interval_of(lease_sched.portable_setting_ms('lease_sched.retry_backoff_max', 3600000) * 1000);
        WITH failed AS (
            UPDATE lease_sched.sys_cron_executions
               SET status = 'FAILED', finished_at = now_,
                   duration_ms = greatest(0, (extract(epoch FROM now_ - started_at) * 1000)::bigint),
                   error_code = 'stale_timeout', error_msg = 'lease expired without heartbeat',
                   next_retry_at = CASE WHEN attempt < max_attempts
                       THEN now_ + lease_sched.retry_backoff(attempt, base, max_)
                   END,
                   updated_at = now_
             WHERE id IN (SELECT e.id FROM lease_sched.sys_cron_executions e
                           WHERE e.status = 'RUNNING' AND e.stale_after < now_
                             AND (NOT e.allow_stale_reentry OR e.attempt >= e.max_attempts
                                  OR EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions later
                                              WHERE later.job_name = e.job_name AND later.scope_kind = e.scope_kind
                                                AND later.scope_id = e.scope_id AND later.plan_time > e.plan_time))
                             FOR UPDATE SKIP LOCKED)
            RETURNING id)
        SELECT count(*) INTO failed_n FROM (SELECT pg_notify('lease_sched_lost', f.id::text) FROM failed f) notified;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, sqlstate_ = RETURNED_SQLSTATE;
        errors := errors + 1; failed_n := 0;
        RAISE WARNING 'lease_sched sweep: the abandoned leases pass failed and was rolled back; the other passes ran: % (SQLSTATE %)', message, sqlstate_;
    END;

    -- 3. Retention, in bounded batches (10 of 1000 rows): never a row that may still run,
    --    never the latest plan of its job (the planner's cursor). A "run now" plan
    --    (job_trigger) is not the cursor, so a later one does not count; and its trigger
    --    row goes with its execution row (a trigger without one is a pending "run now").
    retention := lease_sched.portable_setting_ms('lease_sched.retention', 30 * 86400 * 1000::bigint, 1000) / 1000;
    IF retention > 0 THEN
        BEGIN
            FOR batch IN 1..10 LOOP
                WITH pruned AS (
                    DELETE FROM lease_sched.sys_cron_executions
                     WHERE id IN (SELECT e.id FROM lease_sched.sys_cron_executions e
                                   WHERE e.status <> 'RUNNING' AND e.finished_at < now_ - retention * interval '1 second'
                                     AND (e.status = 'SUCCESS' OR e.attempt >= e.max_attempts)
                                     AND EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions later
                                                  WHERE later.job_name = e.job_name AND later.scope_kind = e.scope_kind
                                                    AND later.scope_id = e.scope_id AND later.plan_time > e.plan_time
                                                    AND later.plan_time <= now_
                                                    AND NOT EXISTS (SELECT 1 FROM lease_sched.job_triggers t
                                                                     WHERE t.job_name = later.job_name
                                                                       AND t.scope_kind = later.scope_kind
                                                                       AND t.scope_id = later.scope_id
                                                                       AND t.plan_time = later.plan_time))
                                   ORDER BY e.finished_at LIMIT 1000
                                   FOR UPDATE OF e SKIP LOCKED)
                    RETURNING job_name, scope_kind, scope_id, plan_time),
                triggers AS (
                    DELETE FROM lease_sched.job_triggers t USING pruned p
                     WHERE t.job_name = p.job_name AND t.scope_kind = p.scope_kind AND t.scope_id = p.scope_id
                       AND t.plan_time = p.plan_time)
                SELECT count(*) INTO pass_rows FROM pruned;
                pruned_n := pruned_n + pass_rows;
                EXIT WHEN pass_rows < 1000;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, sqlstate_ = RETURNED_SQLSTATE;
            errors := errors + 1; pruned_n := 0;
            RAISE WARNING 'lease_sched sweep: the retention pass failed and was rolled back; the other passes ran: % (SQLSTATE %)', message, sqlstate_;
        END;
    END IF;

    -- 4. The whole touch buffer, once per flush interval (the wait lets many touches of
    --    one runtime coalesce), and at the first sweep after a server start (the native
    --    sweeper drains the buffer when the server stops). Last, unlike the native order:
    --    a touch of a runtime whose buffered entry this takes waits for the sweep's commit
    --    (the native buffer is shared memory, which nobody waits on), so nothing runs
    --    between this pass and the commit.
    BEGIN
        flush_ms := lease_sched.portable_setting_ms('lease_sched.touch_flush_interval', 60000, min_ms => 100);
        offline_ms := lease_sched.portable_setting_ms('lease_sched.runtime_offline_after', 150000, min_ms => 1000);
        IF flush_ms >= offline_ms THEN
            flush_ms := offline_ms / 2;  -- a flush must land inside the offline window
        END IF;
        IF state.last_flush_at IS NULL OR state.last_flush_at < started
           OR now_ - state.last_flush_at >= flush_ms * interval '1 millisecond' THEN
            flushed_n := flushed_n + lease_sched.portable_flush(NULL);
            flushes_n := flushes_n + 1;
            UPDATE lease_sched.portable_sweep_state SET last_flush_at = now_;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, sqlstate_ = RETURNED_SQLSTATE;
        errors := errors + 1;
        RAISE WARNING 'lease_sched sweep: the touch flush pass failed and was rolled back; the other passes ran: % (SQLSTATE %)', message, sqlstate_;
    END;

    UPDATE lease_sched.portable_sweep_state s
       SET last_sweep_at = now_,
           last_sweep_duration_us = greatest(0, lease_sched.portable_db_micros(clock_timestamp())
                                               - lease_sched.portable_db_micros(now_)),
           sweeps = s.sweeps + 1, sweep_errors = s.sweep_errors + errors,
           rows_swept = s.rows_swept + failed_n + offline_n + pruned_n, flushes = s.flushes + flushes_n;
    RETURN QUERY SELECT failed_n, offline_n, flushed_n, pruned_n;
END;
$sweep$;

-- twin: stats
CREATE FUNCTION lease_sched.stats()
RETURNS TABLE (name text, value bigint)
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $stats$
DECLARE
    s record;
BEGIN
    -- The native counters' names, in their order. The portable edition counts what the
    -- sweep does; claims, heartbeats, finishes and touches are counted in shared memory
    -- by the native edition only and read 0 here (docs/portable.md). preloaded is 0.
    -- (On a standby the UNLOGGED state cannot be read, and nothing sweeps there: the same
    -- columns, all NULL, so the counters read 0.)
    IF pg_is_in_recovery() THEN
        SELECT NULL::bigint AS flushes, NULL::bigint AS sweeps, NULL::bigint AS sweep_errors, NULL::bigint AS rows_swept,
               NULL::timestamptz AS last_sweep_at, NULL::bigint AS last_sweep_duration_us INTO s;
    ELSE
        SELECT * INTO s FROM lease_sched.portable_sweep_state st WHERE st.server_started = pg_postmaster_start_time();
    END IF;
    RETURN QUERY SELECT v.name, v.value FROM (VALUES
        (1, 'claims_won', 0::bigint), (2, 'claims_stole', 0), (3, 'claims_conflicted', 0),
        (4, 'heartbeats_ok', 0), (5, 'heartbeats_lost', 0), (6, 'finishes', 0), (7, 'finishes_lost', 0),
        (8, 'touches_buffered', 0), (9, 'touches_direct', 0),
        (10, 'touches_restored', 0), (11, 'touches_lost', 0),
        (12, 'flushes', coalesce(s.flushes, 0)),
        (13, 'sweeps', coalesce(s.sweeps, 0)),
        (14, 'sweep_errors', coalesce(s.sweep_errors, 0)),
        (15, 'rows_swept', coalesce(s.rows_swept, 0)),
        (16, 'databases_over_limit', 0),
        (17, 'last_sweep_unix_seconds', coalesce(floor(extract(epoch FROM s.last_sweep_at))::bigint, 0)),
        (18, 'last_sweep_duration_us', coalesce(s.last_sweep_duration_us, 0)),
        (19, 'databases_swept', (SELECT w.swept::int FROM lease_sched.sweeper_status() w)),
        (20, 'swept', (SELECT w.swept::int FROM lease_sched.sweeper_status() w)),
        (21, 'preloaded', 0)) AS v(n, name, value)
    ORDER BY v.n;
END;
$stats$;

-- twin: sweeper_status
CREATE FUNCTION lease_sched.sweeper_status()
RETURNS TABLE (swept boolean, state text, sweeper_pid integer, last_sweep_at timestamptz)
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS $status$
DECLARE
    last timestamptz;
BEGIN
    -- No background worker here: the database is swept while something keeps calling
    -- sweep() (pg_cron through portable_schedule_sweep). Swept: a sweep since the server
    -- started, within the last two minutes (pg_cron's coarsest schedule is a minute).
    IF NOT pg_is_in_recovery() THEN
        SELECT st.last_sweep_at INTO last FROM lease_sched.portable_sweep_state st
         WHERE st.server_started = pg_postmaster_start_time();
    END IF;
    swept := last IS NOT NULL AND clock_timestamp() - last < interval '2 minutes';
    state := CASE WHEN swept THEN 'sweeping' ELSE 'not scheduled' END;
    sweeper_pid := NULL;
    last_sweep_at := last;
    RETURN NEXT;
END;
$status$;

-- twin: sys_sweeper_announce
CREATE FUNCTION lease_sched.sys_sweeper_announce()
RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $announce$
BEGIN
    -- Run by the install script: nothing sweeps this database until sweep() is scheduled.
    IF NOT (SELECT w.swept FROM lease_sched.sweeper_status() w) THEN
        RAISE WARNING 'lease_sched: nothing sweeps database "%" yet: abandoned leases stay RUNNING and silent runtimes stay online',
                      current_database()
              USING HINT = 'Run SELECT lease_sched.portable_schedule_sweep(); (pg_cron), or call SELECT lease_sched.sweep(); every few seconds from a scheduler of your own.';
    END IF;
END;
$announce$;

-- Schedule lease_sched.sweep() with pg_cron, in place of the native background worker:
-- every `every` (whole seconds from 1 to 59 where pg_cron supports second schedules,
-- 1.5 and later; otherwise whole minutes, at least one). Replaces an earlier schedule
-- of this database's sweep; returns the pg_cron job id. Run it as the role that owns
-- lease_sched (the sweep runs with its rights), in the database lease_sched is in. pg_cron
-- can be called only in the one database it is installed in (cron.database_name): where
-- that is another database, this refuses (55000) with the cron.schedule_in_database call
-- to run there instead (pg_cron lets only a superuser, or a role granted EXECUTE on it,
-- schedule into another database; the job still runs as the owner). (cron.database_name itself is a superuser-only setting: it is
-- read from pg_settings, which shows it only to roles allowed to read it.)
CREATE FUNCTION lease_sched.portable_schedule_sweep(every interval DEFAULT '10 seconds')
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $schedule$
DECLARE
    cron_version text;
    seconds      numeric;
    schedule     text;
    job_name     text := 'lease_sched sweep: ' || current_database();
    job_id       bigint;
    seconds_ok   boolean;
    cron_database text;
BEGIN
    IF every IS NULL THEN
        RAISE EXCEPTION 'every must not be NULL' USING ERRCODE = '22004';
    END IF;
    seconds := lease_sched.portable_micros(every) / 1000000;
    IF seconds < 1 OR seconds > 86400 OR seconds <> trunc(seconds) OR extract(month FROM every) <> 0
       OR extract(year FROM every) <> 0 THEN
        RAISE EXCEPTION 'every must be whole seconds between 1 second and 1 day' USING ERRCODE = '22023';
    END IF;
    SELECT e.extversion INTO cron_version FROM pg_extension e WHERE e.extname = 'pg_cron';
    IF cron_version IS NULL THEN
        cron_database := (SELECT s.setting FROM pg_settings s WHERE s.name = 'cron.database_name');
        RAISE EXCEPTION 'lease_sched.portable_schedule_sweep needs pg_cron in database "%", where it is not installed',
                        current_database()
              USING ERRCODE = '55000',
                    HINT = format('Where pg_cron is installed (%s), as a role that may call cron.schedule_in_database '
                                  '(a superuser, or one granted EXECUTE on it), run: SELECT cron.schedule_in_database(%L, %L, %L, %L, %L); '
                                  '(pg_cron before 1.5: schedule ''* * * * *''). Without pg_cron (docs/portable.md lists how to '
                                  'enable it on each service), call lease_sched.sweep() from your own scheduler every few seconds.',
                                  coalesce('database "' || cron_database || '"', 'the database cron.database_name names'),
                                  job_name, CASE WHEN seconds < 60 THEN seconds::int || ' seconds' ELSE '* * * * *' END,
                                  'SELECT lease_sched.sweep()', current_database(),
                                  (SELECT pg_get_userbyid(n.nspowner) FROM pg_namespace n WHERE n.nspname = 'lease_sched'));
    END IF;
    seconds_ok := string_to_array(split_part(cron_version, '-', 1), '.')::int[] >= ARRAY[1, 5];
    IF seconds < 60 AND seconds_ok THEN
        schedule := seconds::int || ' seconds';
    ELSIF seconds < 3600 THEN
        -- pg_cron before 1.5 has no second schedules: once a minute (or every N minutes).
        schedule := CASE WHEN seconds <= 60 THEN '* * * * *' ELSE '*/' || (ceil(seconds / 60))::int || ' * * * *' END;
    ELSE
        schedule := '0 * * * *';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job_id USING job_name, schedule, 'SELECT lease_sched.sweep()';
    IF seconds_ok IS FALSE AND seconds < 60 THEN
        RAISE NOTICE 'pg_cron % has no second schedules: lease_sched.sweep() runs once a minute', cron_version
              USING HINT = 'Leases go stale on the database clock regardless; only the FAILED marking and offline runtimes wait for the sweep.';
    END IF;
    RETURN job_id;
END;
$schedule$;
COMMENT ON FUNCTION lease_sched.portable_schedule_sweep(interval) IS
    'Portable edition: schedule lease_sched.sweep() with pg_cron (seconds with pg_cron >= 1.5, else every minute); returns the job id.';

-- Remove the schedule portable_schedule_sweep made; true when there was one.
CREATE FUNCTION lease_sched.portable_unschedule_sweep()
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $unschedule$
DECLARE
    removed boolean := false;
BEGIN
    IF to_regclass('cron.job') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT coalesce(bool_or(cron.unschedule(j.jobid)), false) FROM cron.job j WHERE j.jobname = $1'
       INTO removed USING 'lease_sched sweep: ' || current_database();
    RETURN removed;
END;
$unschedule$;
COMMENT ON FUNCTION lease_sched.portable_unschedule_sweep() IS
    'Portable edition: remove the pg_cron schedule of lease_sched.sweep() in this database.';
