-- Portable edition: the PL/pgSQL twins of the lease API (native: src/api/lease.rs,
-- src/lease/). Each twin has its C original's signature (scripts/portable.py checks it)
-- and runs the native statements (src/lease/store.rs) in the same order, on one reading
-- of the database clock per call. Unlike the native functions these pin their
-- search_path: PL/pgSQL resolves types and operators of its expressions at run time.

-- twin: lease_try_claim
CREATE FUNCTION lease_sched.lease_try_claim(
    job_name            text,
    plan_time           timestamptz,
    runner_id           text,
    scope_kind          text     DEFAULT 'global',
    scope_id            text     DEFAULT '',
    stale_timeout       interval DEFAULT '5 minutes',
    max_attempts        int      DEFAULT 3,
    allow_stale_reentry boolean  DEFAULT true
)
RETURNS lease_sched.claim_result
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $claim$
#variable_conflict use_column
DECLARE
    now_   timestamptz := clock_timestamp();
    found_ record;
    got    record;
    -- The result's columns, returned as one lease_sched.claim_result.
    outcome       text;
    execution_id  uuid;
    lease_token   uuid;
    attempt       int;
    fencing_token bigint;
    stale_after   timestamptz;
BEGIN
    -- The checks in the native order; one test on the fast path, the precise error after.
    IF lease_try_claim.job_name IS NULL OR lease_try_claim.job_name = '' OR octet_length(lease_try_claim.job_name) > 512
       OR lease_try_claim.plan_time IS NULL OR NOT isfinite(lease_try_claim.plan_time)
       OR lease_try_claim.runner_id IS NULL OR lease_try_claim.runner_id = '' OR octet_length(lease_try_claim.runner_id) > 512
       OR lease_try_claim.scope_kind IS NULL OR lease_try_claim.scope_kind = '' OR octet_length(lease_try_claim.scope_kind) > 512
       OR lease_try_claim.scope_id IS NULL OR octet_length(lease_try_claim.scope_id) > 512
       OR NOT lease_sched.portable_interval_ok(lease_try_claim.stale_timeout)
       OR lease_try_claim.max_attempts IS NULL OR lease_try_claim.max_attempts < 1
       OR lease_try_claim.allow_stale_reentry IS NULL THEN
        PERFORM lease_sched.portable_name(lease_try_claim.job_name, 'job_name'),
                lease_sched.portable_finite_time(lease_try_claim.plan_time, 'plan_time');
        PERFORM lease_sched.portable_name(lease_try_claim.runner_id, 'runner_id');
        PERFORM lease_sched.portable_name(lease_try_claim.scope_kind, 'scope_kind');
        PERFORM lease_sched.portable_name(lease_try_claim.scope_id, 'scope_id', true);
        PERFORM lease_sched.portable_interval(lease_try_claim.stale_timeout, 'stale_timeout');
        PERFORM lease_sched.portable_at_least_one(lease_try_claim.max_attempts, 'max_attempts');
        PERFORM lease_sched.portable_required(lease_try_claim.allow_stale_reentry IS NULL, 'allow_stale_reentry');
    END IF;
    -- Probe without locking; insert when absent, steal when the state machine allows it
    -- (lease_model::may_steal), else report the conflict. A lost insert race re-reads the
    -- row the winner committed and decides again.
    FOR round IN 1..3 LOOP
        SELECT e.id, e.status, e.attempt, e.max_attempts, e.stale_after, e.next_retry_at, e.allow_stale_reentry
          INTO found_
          FROM lease_sched.sys_cron_executions e
         WHERE e.job_name = lease_try_claim.job_name AND e.scope_kind = lease_try_claim.scope_kind
           AND e.scope_id = lease_try_claim.scope_id AND e.plan_time = lease_try_claim.plan_time;
        IF NOT FOUND THEN
            -- The token floor (portable_token_floor), its fast check inline: one statement.
            IF NOT pg_is_in_recovery() AND NOT coalesce((
                   SELECT t.last_value = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
                          AND s.last_value = lease_sched.portable_db_micros(pg_postmaster_start_time())
                          AND c.last_value = lease_sched.portable_database_copy()
                     FROM lease_sched.token_floor_timeline t, lease_sched.token_floor_server_start s,
                          lease_sched.token_floor_copy c), false) THEN
                PERFORM lease_sched.portable_token_floor();
            END IF;
            INSERT INTO lease_sched.sys_cron_executions AS e (
                job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts,
                runner_id, lease_token, fencing_token, allow_stale_reentry, stale_timeout,
                heartbeat_at, stale_after, started_at, updated_at)
            VALUES (lease_try_claim.job_name, lease_try_claim.scope_kind, lease_try_claim.scope_id,
                    lease_try_claim.plan_time, 'RUNNING', 1, lease_try_claim.max_attempts,
                    lease_try_claim.runner_id, gen_random_uuid(), nextval('lease_sched.fencing_token_seq'),
                    lease_try_claim.allow_stale_reentry, lease_try_claim.stale_timeout,
                    now_, now_ + lease_try_claim.stale_timeout, now_, now_)
            ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING
            RETURNING e.id, e.lease_token, e.attempt, e.fencing_token, e.stale_after,
                      -- The token was drawn in VALUES, before the INSERT may have waited on a
                      -- concurrent insert of the same key: when another session drew
                      -- meanwhile, or the wait outlasted the lease, draw again (REDRAW).
                      (SELECT s.last_value FROM lease_sched.fencing_token_seq s) <> e.fencing_token
                        OR (SELECT clock_timestamp()) >= e.stale_after AS redraw
            INTO got;
            IF FOUND THEN
                IF got.redraw THEN
                    UPDATE lease_sched.sys_cron_executions e
                       SET fencing_token = nextval('lease_sched.fencing_token_seq'),
                           heartbeat_at = (SELECT clock_timestamp()),
                           stale_after = (SELECT clock_timestamp()) + e.stale_timeout,
                           started_at = (SELECT clock_timestamp()), updated_at = (SELECT clock_timestamp())
                     WHERE e.id = got.id
                    RETURNING e.id, e.lease_token, e.attempt, e.fencing_token, e.stale_after, false AS redraw INTO got;
                END IF;
                outcome := 'won'; execution_id := got.id; lease_token := got.lease_token; attempt := got.attempt;
                fencing_token := got.fencing_token; stale_after := got.stale_after;
                RETURN ROW(outcome, execution_id, lease_token, attempt, fencing_token, stale_after)::lease_sched.claim_result;
            END IF;
            CONTINUE;  -- lost the insert race: decide again on the winner's row
        END IF;
        IF found_.attempt < found_.max_attempts
           AND ((found_.status = 'FAILED' AND coalesce(found_.next_retry_at <= now_, true))
             OR (found_.status = 'RUNNING' AND lease_try_claim.allow_stale_reentry AND found_.allow_stale_reentry
                 AND found_.stale_after < now_)) THEN
            -- The token floor (portable_token_floor), its fast check inline: one statement.
            IF NOT pg_is_in_recovery() AND NOT coalesce((
                   SELECT t.last_value = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
                          AND s.last_value = lease_sched.portable_db_micros(pg_postmaster_start_time())
                          AND c.last_value = lease_sched.portable_database_copy()
                     FROM lease_sched.token_floor_timeline t, lease_sched.token_floor_server_start s,
                          lease_sched.token_floor_copy c), false) THEN
                PERFORM lease_sched.portable_token_floor();
            END IF;
            -- The native STEAL: the row locked FOR UPDATE first (waiting for every fenced
            -- transaction on it), the new lease's clock read after that wait.
            WITH held AS (
                SELECT h.id, h.status = 'RUNNING' AS was_running, h.fencing_token AS previous_token
                  FROM lease_sched.sys_cron_executions h
                 WHERE h.id = found_.id
                   AND h.attempt < h.max_attempts
                   AND ((h.status = 'FAILED' AND coalesce(h.next_retry_at, now_) <= now_)
                     OR (h.status = 'RUNNING' AND h.stale_after < now_
                         AND lease_try_claim.allow_stale_reentry AND h.allow_stale_reentry))
                   FOR UPDATE)
            UPDATE lease_sched.sys_cron_executions e
               SET status = 'RUNNING', attempt = e.attempt + 1, runner_id = lease_try_claim.runner_id,
                   lease_token = gen_random_uuid(),
                   fencing_token = nextval('lease_sched.fencing_token_seq'),
                   allow_stale_reentry = lease_try_claim.allow_stale_reentry,
                   stale_timeout = lease_try_claim.stale_timeout,
                   heartbeat_at = (SELECT clock_timestamp()),
                   stale_after = (SELECT clock_timestamp()) + lease_try_claim.stale_timeout,
                   started_at = (SELECT clock_timestamp()),
                   finished_at = NULL, duration_ms = NULL, next_retry_at = NULL, error_code = NULL,
                   error_msg = NULL, rows_affected = NULL, result = NULL,
                   updated_at = (SELECT clock_timestamp())
              FROM held
             WHERE e.id = held.id
            RETURNING e.id, e.lease_token, e.attempt, e.fencing_token, e.stale_after, held.was_running,
                      held.previous_token INTO got;
            IF FOUND THEN
                -- A row restored from a database whose sequence was further on: move the
                -- sequence above its token (as a floor does) and draw again.
                IF got.fencing_token <= got.previous_token THEN
                    PERFORM lease_sched.portable_floor_above(got.previous_token);
                    UPDATE lease_sched.sys_cron_executions e
                       SET fencing_token = nextval('lease_sched.fencing_token_seq'),
                           heartbeat_at = (SELECT clock_timestamp()),
                           stale_after = (SELECT clock_timestamp()) + e.stale_timeout,
                           started_at = (SELECT clock_timestamp()), updated_at = (SELECT clock_timestamp())
                     WHERE e.id = got.id
                    RETURNING e.id, e.lease_token, e.attempt, e.fencing_token, e.stale_after, got.was_running, 0::bigint
                    INTO got;
                END IF;
                IF got.was_running AND lease_sched.portable_notify_lost() THEN
                    PERFORM pg_notify('lease_sched_lost', got.id::text);
                END IF;
                outcome := 'stole'; execution_id := got.id; lease_token := got.lease_token; attempt := got.attempt;
                fencing_token := got.fencing_token; stale_after := got.stale_after;
                RETURN ROW(outcome, execution_id, lease_token, attempt, fencing_token, stale_after)::lease_sched.claim_result;
            END IF;
            -- Someone changed the row first: report it as it is now.
            SELECT e.id, e.status, e.attempt, e.stale_after INTO found_
              FROM lease_sched.sys_cron_executions e
             WHERE e.job_name = lease_try_claim.job_name AND e.scope_kind = lease_try_claim.scope_kind
               AND e.scope_id = lease_try_claim.scope_id AND e.plan_time = lease_try_claim.plan_time;
            IF NOT FOUND THEN
                outcome := 'conflicted'; execution_id := NULL; lease_token := NULL; attempt := NULL;
                fencing_token := NULL; stale_after := NULL;
                RETURN ROW(outcome, execution_id, lease_token, attempt, fencing_token, stale_after)::lease_sched.claim_result;
            END IF;
        END IF;
        outcome := 'conflicted'; execution_id := found_.id; attempt := found_.attempt;
        IF found_.status = 'RUNNING' THEN
            stale_after := found_.stale_after;
        END IF;
        RETURN ROW(outcome, execution_id, lease_token, attempt, fencing_token, stale_after)::lease_sched.claim_result;
    END LOOP;
    outcome := 'conflicted'; execution_id := NULL; lease_token := NULL; attempt := NULL;
    fencing_token := NULL; stale_after := NULL;
    RETURN ROW(outcome, execution_id, lease_token, attempt, fencing_token, stale_after)::lease_sched.claim_result;
END;
$claim$;

-- twin: lease_heartbeat
CREATE FUNCTION lease_sched.lease_heartbeat(
    execution_id uuid,
    lease_token  uuid
)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $heartbeat$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    IF lease_heartbeat.execution_id IS NULL OR lease_heartbeat.lease_token IS NULL THEN
        PERFORM lease_sched.portable_required(lease_heartbeat.execution_id IS NULL, 'execution_id');
        PERFORM lease_sched.portable_required(lease_heartbeat.lease_token IS NULL, 'lease_token');
    END IF;
    -- Only columns no index covers change: a HOT update.
    UPDATE lease_sched.sys_cron_executions
       SET heartbeat_at = now_, stale_after = now_ + stale_timeout, updated_at = now_
     WHERE id = lease_heartbeat.execution_id AND lease_token = lease_heartbeat.lease_token AND status = 'RUNNING';
    RETURN FOUND;
END;
$heartbeat$;

-- twin: lease_finish
CREATE FUNCTION lease_sched.lease_finish(
    execution_id  uuid,
    lease_token   uuid,
    status        text,
    result        jsonb    DEFAULT NULL,
    rows_affected bigint   DEFAULT NULL,
    error_code    text     DEFAULT NULL,
    error_msg     text     DEFAULT NULL,
    retry_in      interval DEFAULT NULL
)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $finish$
#variable_conflict use_column
DECLARE
    now_   timestamptz := clock_timestamp();
    failed boolean;
    size   int;
    base   interval;
    max_   interval;
BEGIN
    IF lease_finish.execution_id IS NULL OR lease_finish.lease_token IS NULL OR lease_finish.status IS NULL THEN
        PERFORM lease_sched.portable_required(lease_finish.execution_id IS NULL, 'execution_id');
        PERFORM lease_sched.portable_required(lease_finish.lease_token IS NULL, 'lease_token');
        PERFORM lease_sched.portable_required(lease_finish.status IS NULL, 'status');
    END IF;
    IF lease_finish.status NOT IN ('SUCCESS', 'FAILED') THEN
        RAISE EXCEPTION 'status must be ''SUCCESS'' or ''FAILED''' USING ERRCODE = '22023';
    END IF;
    IF lease_finish.result IS NOT NULL THEN
        size := octet_length(lease_finish.result::text);
        IF size > 16384 THEN
            RAISE EXCEPTION 'result is % bytes of JSON, more than the limit of 16384 bytes', size
                  USING ERRCODE = '22001', HINT = 'Keep results small; put large output in your own table or logs.';
        END IF;
    END IF;
    IF lease_finish.retry_in IS NOT NULL AND NOT lease_sched.portable_interval_ok(lease_finish.retry_in, true) THEN
        PERFORM lease_sched.portable_interval(lease_finish.retry_in, 'retry_in', true);
    END IF;
    failed := lease_finish.status = 'FAILED';
    IF failed THEN
        base := lease_sched.portable_interval_of(lease_sched.portable_setting_ms('lease_sched.retry_backoff_base', 10000) * 1000);
        max_ := lease_sched.portable_interval_of(lease_sched.portable_setting_ms('lease_sched.retry_backoff_max', 3600000) * 1000);
    END IF;
    UPDATE lease_sched.sys_cron_executions e
       SET status = lease_finish.status, finished_at = now_,
           duration_ms = greatest(0, (extract(epoch FROM now_ - e.started_at) * 1000)::bigint),
           result = lease_finish.result, rows_affected = lease_finish.rows_affected,
           -- Error fields describe failures only; a SUCCESS clears them.
           -- (cut at 200 characters, like error_msg at 4000: a finish is never refused for its error text)
           error_code = CASE WHEN failed THEN left(coalesce(nullif(lease_finish.error_code, ''), 'handler_error'), 200) END,
           error_msg = CASE WHEN failed THEN left(lease_finish.error_msg, 4000) END,
           next_retry_at = CASE WHEN failed AND e.attempt < e.max_attempts
               THEN now_ + coalesce(lease_finish.retry_in, lease_sched.retry_backoff(e.attempt, base, max_))
           END,
           updated_at = now_
     WHERE e.id = lease_finish.execution_id AND e.lease_token = lease_finish.lease_token AND e.status = 'RUNNING';
    RETURN FOUND;
END;
$finish$;

-- twin: retry_backoff
CREATE FUNCTION lease_sched.retry_backoff(attempt int, base interval, max interval)
RETURNS interval
LANGUAGE plpgsql IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $backoff$
DECLARE
    base_us numeric;
    max_us  numeric;
    delay   numeric;
BEGIN
    PERFORM lease_sched.portable_required(attempt IS NULL, 'attempt');
    IF attempt < 1 THEN
        RAISE EXCEPTION 'attempt must be at least 1' USING ERRCODE = '22023';
    END IF;
    base_us := lease_sched.portable_micros(lease_sched.portable_interval(base, 'base', true));
    max_us := lease_sched.portable_micros(lease_sched.portable_interval(max, 'max', true));
    -- base * 2^(attempt-1), saturating at the largest bigint, then capped at max
    -- (lease_model::retry_backoff): never an overflow, whatever the attempt.
    IF base_us = 0 THEN
        delay := 0;
    ELSIF attempt - 1 >= 63 THEN
        delay := 9223372036854775807;
    ELSE
        delay := least(base_us * (2::numeric ^ (attempt - 1)), 9223372036854775807);
    END IF;
    RETURN lease_sched.portable_interval_of(least(delay, max_us));
END;
$backoff$;

-- lease_sched.notify_lost (native: a superuser-only setting, default on). Here a
-- placeholder: set it in postgresql.conf or with ALTER DATABASE ... SET.
CREATE FUNCTION lease_sched.portable_notify_lost()
RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN coalesce(pg_catalog.lower(pg_catalog.btrim(pg_catalog.current_setting('lease_sched.notify_lost', true)))
                NOT IN ('off', 'false', 'no', '0', 'of', 'f', 'n'), true);
