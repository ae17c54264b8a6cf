-- Portable edition: the PL/pgSQL twins of job definitions (native: src/api/jobs.rs,
-- src/jobs/mod.rs), running the native statements.

-- The key of a job definition, checked as the native edition checks it.
CREATE FUNCTION lease_sched.portable_job_key(job_name text, scope_kind text, scope_id text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $key$
BEGIN
    PERFORM lease_sched.portable_name(job_name, 'job_name');
    PERFORM lease_sched.portable_name(scope_kind, 'scope_kind');
    PERFORM lease_sched.portable_name(scope_id, 'scope_id', true);
END;
$key$;

-- twin: job_define
CREATE FUNCTION lease_sched.job_define(job_name text, every interval DEFAULT NULL, misfire text DEFAULT 'latest',
                                       grace interval DEFAULT NULL, max_attempts int DEFAULT 3,
                                       stale_timeout interval DEFAULT '5 minutes',
                                       scope_kind text DEFAULT 'global', scope_id text DEFAULT '',
                                       cron text DEFAULT NULL, timezone text DEFAULT 'UTC')
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $define$
#variable_conflict use_column
DECLARE
    now_  timestamptz := clock_timestamp();
    fresh boolean;
BEGIN
    PERFORM lease_sched.portable_name(job_define.job_name, 'job_name');
    -- The schedule: every interval, or a cron calendar (parsed and checked by the SQL that
    -- stores it, sql/calendar.sql), never both.
    IF (job_define.every IS NULL) = (job_define.cron IS NULL) THEN
        RAISE EXCEPTION 'cron and every: give exactly one of them' USING ERRCODE = '22023',
              HINT = 'every => ''1 hour'' runs in buckets from the epoch; cron => ''0 3 * * *'' on a calendar in timezone.';
    END IF;
    IF job_define.every IS NOT NULL THEN
        PERFORM lease_sched.portable_interval(job_define.every, 'every');
        -- A slot shorter than a second cannot be run in time by any scheduler, and its
        -- missed slots would pile up faster than calls can record them.
        IF lease_sched.portable_stride(job_define.every, 'every') < 1000000 THEN
            RAISE EXCEPTION 'every must be at least 1 second for a job definition' USING ERRCODE = '22023';
        END IF;
    END IF;
    PERFORM lease_sched.portable_required(job_define.timezone IS NULL, 'timezone');
    PERFORM lease_sched.portable_required(job_define.misfire IS NULL, 'misfire');
    IF job_define.misfire NOT IN ('all', 'latest', 'skip') THEN
        RAISE EXCEPTION 'misfire must be ''all'', ''latest'' or ''skip''' USING ERRCODE = '22023', HINT = 'See docs/api.md, "Jobs".';
    END IF;
    IF job_define.grace IS NOT NULL THEN
        PERFORM lease_sched.portable_interval(job_define.grace, 'grace');
        PERFORM lease_sched.portable_stride(job_define.grace, 'grace');
    END IF;
    PERFORM lease_sched.portable_at_least_one(job_define.max_attempts, 'max_attempts');
    PERFORM lease_sched.portable_interval(job_define.stale_timeout, 'stale_timeout');
    PERFORM lease_sched.portable_job_key(job_define.job_name, job_define.scope_kind, job_define.scope_id);
    -- Create or replace: every setting is the caller's; the paused state, paused_at,
    -- resumed_at and created_at are kept.
    -- A cron expression is parsed here, once (cron_parse raises 22023 naming cron and the
    -- position of the error), and the time zone checked against the server's tz database.
    INSERT INTO lease_sched.jobs AS j (job_name, scope_kind, scope_id, every, misfire, grace, max_attempts,
                                       stale_timeout, paused, created_at, updated_at, cron, timezone, cron_spec)
    VALUES (job_define.job_name, job_define.scope_kind, job_define.scope_id, job_define.every, job_define.misfire,
            job_define.grace, job_define.max_attempts, job_define.stale_timeout, false, now_, now_,
            job_define.cron, lease_sched.cron_check_timezone(job_define.timezone, 'timezone'),
            CASE WHEN job_define.cron IS NOT NULL THEN lease_sched.cron_parse(job_define.cron, 'cron') END)
    ON CONFLICT (job_name, scope_kind, scope_id) DO UPDATE
       SET every = excluded.every, misfire = excluded.misfire, grace = excluded.grace,
           max_attempts = excluded.max_attempts, stale_timeout = excluded.stale_timeout,
           updated_at = excluded.updated_at, cron = excluded.cron, timezone = excluded.timezone,
           cron_spec = excluded.cron_spec
    RETURNING j.xmax = 0 INTO fresh;
    RETURN coalesce(fresh, false);
END;
$define$;

-- twin: job_pause
CREATE FUNCTION lease_sched.job_pause(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $pause$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    PERFORM lease_sched.portable_job_key(job_pause.job_name, job_pause.scope_kind, job_pause.scope_id);
    -- Pausing a paused job changes nothing (its paused_at stays).
    UPDATE lease_sched.jobs
       SET paused = true, paused_at = CASE WHEN paused THEN paused_at ELSE now_ END,
           updated_at = CASE WHEN paused THEN updated_at ELSE now_ END
     WHERE job_name = job_pause.job_name AND scope_kind = job_pause.scope_kind AND scope_id = job_pause.scope_id;
    RETURN FOUND;
END;
$pause$;

-- twin: job_resume
CREATE FUNCTION lease_sched.job_resume(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $resume$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    PERFORM lease_sched.portable_job_key(job_resume.job_name, job_resume.scope_kind, job_resume.scope_id);
    -- resumed_at moves only on a real resume (the planner skips, as paused, the slots
    -- due before it).
    UPDATE lease_sched.jobs
       SET paused = false, resumed_at = CASE WHEN paused THEN now_ ELSE resumed_at END,
           updated_at = CASE WHEN paused THEN now_ ELSE updated_at END
     WHERE job_name = job_resume.job_name AND scope_kind = job_resume.scope_kind AND scope_id = job_resume.scope_id;
    RETURN FOUND;
END;
$resume$;

-- twin: job_drop
CREATE FUNCTION lease_sched.job_drop(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $drop$
#variable_conflict use_column
BEGIN
    PERFORM lease_sched.portable_job_key(job_drop.job_name, job_drop.scope_kind, job_drop.scope_id);
    DELETE FROM lease_sched.jobs
     WHERE job_name = job_drop.job_name AND scope_kind = job_drop.scope_kind AND scope_id = job_drop.scope_id;
    RETURN FOUND;
END;
$drop$;

-- twin: job_definition
CREATE FUNCTION lease_sched.job_definition(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS TABLE (every interval, misfire text, grace interval, max_attempts int, stale_timeout interval, paused boolean,
               cron text, timezone text)
LANGUAGE plpgsql STABLE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS $definition$
#variable_conflict use_column
BEGIN
    PERFORM lease_sched.portable_job_key(job_definition.job_name, job_definition.scope_kind, job_definition.scope_id);
    RETURN QUERY SELECT j.every, j.misfire, j.grace, j.max_attempts, j.stale_timeout, j.paused, j.cron, j.timezone
                   FROM lease_sched.jobs j
                  WHERE j.job_name = job_definition.job_name AND j.scope_kind = job_definition.scope_kind
                    AND j.scope_id = job_definition.scope_id;
END;
$definition$;
