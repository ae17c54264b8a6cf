-- Nothing lease_sched installs resolves a name through the caller's search_path.
-- A look-alike domain is planted for every type name lease_sched's SQL mentions (and the
-- common aliases), first in a schema ahead of pg_catalog, then in pg_temp (which a session
-- searches first for types); each domain's CHECK records that it ran. Look-alike operators
-- and functions sit in the same schema. Then every procedure and function of the API is
-- called as this superuser (the identity a pg_cron job usually has), and nothing planted
-- may have run. tests/integration/tests/search_path.rs does the same as a runner role.
\set VERBOSITY terse
\set SHOW_CONTEXT never

CREATE SCHEMA evil;
-- What ran: its name in evil.ran, and a count in a sequence, which a rollback does not undo
-- (a planted domain can make the call fail after its CHECK ran).
CREATE TABLE evil.ran (what pg_catalog.text);
CREATE SEQUENCE evil.ran_count;
CREATE FUNCTION evil.pwn(what pg_catalog.text, v anyelement) RETURNS pg_catalog.bool
LANGUAGE sql SET search_path = pg_catalog AS $$
    SELECT pg_catalog.nextval('evil.ran_count'); INSERT INTO evil.ran VALUES (what); SELECT true $$;

CREATE TEMP TABLE planted_type (name text, base text);
INSERT INTO planted_type
SELECT n, CASE WHEN t.typtype = 'b' THEN 'pg_catalog.' || quote_ident(t.typname) ELSE 'pg_catalog.text' END
  FROM unnest(ARRAY['text', 'varchar', 'bpchar', 'char', 'name', 'uuid', 'timestamptz', 'timestamp',
                    'date', 'time', 'interval', 'int', 'integer', 'int2', 'int4', 'int8', 'smallint',
                    'bigint', 'bool', 'boolean', 'numeric', 'float4', 'float8', 'real', 'jsonb', 'json',
                    'bytea', 'oid', 'regclass', 'regtype', 'regnamespace', 'record', 'trigger', 'void']) AS n
  LEFT JOIN pg_catalog.pg_type t ON t.oid = to_regtype('pg_catalog.' || n)
     OR (n IN ('int', 'integer') AND t.oid = 'int4'::regtype) OR (n = 'smallint' AND t.oid = 'int2'::regtype)
     OR (n = 'bigint' AND t.oid = 'int8'::regtype) OR (n = 'boolean' AND t.oid = 'bool'::regtype)
     OR (n = 'real' AND t.oid = 'float4'::regtype);

CREATE FUNCTION pg_temp.plant(schema text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE t record;
BEGIN
    FOR t IN SELECT name, base FROM planted_type LOOP
        EXECUTE format('CREATE DOMAIN %s.%I AS %s CHECK (evil.pwn(%L, VALUE))', schema, t.name, t.base,
                       schema || '.' || t.name);
    END LOOP;
END $$;
SELECT pg_temp.plant('evil');

-- Operators over the types of the API, and functions its SQL calls, each recording a call.
DO $$
DECLARE o record; i int := 0;
BEGIN
    FOR o IN SELECT oprname, oprleft::regtype::text AS l, oprright::regtype::text AS r, oprresult::regtype::text AS res
               FROM pg_catalog.pg_operator
              WHERE oprnamespace = 'pg_catalog'::regnamespace AND oprkind = 'b'
                AND oprleft IN ('text'::regtype, 'timestamptz'::regtype, 'interval'::regtype, 'int4'::regtype,
                                'int8'::regtype, 'bool'::regtype, 'uuid'::regtype, 'jsonb'::regtype)
                AND oprright IN ('text'::regtype, 'timestamptz'::regtype, 'interval'::regtype, 'int4'::regtype,
                                 'int8'::regtype, 'bool'::regtype, 'uuid'::regtype, 'jsonb'::regtype, 'unknown'::regtype)
    LOOP
        i := i + 1;
        EXECUTE format('CREATE FUNCTION evil.op_%s(a %s, b %s) RETURNS %s LANGUAGE sql SET search_path = pg_catalog
                        AS $f$ SELECT evil.pwn(%L, 0); SELECT a OPERATOR(pg_catalog.%s) b $f$',
                       i, o.l, o.r, o.res, o.l || ' ' || o.oprname || ' ' || o.r, o.oprname);
        EXECUTE format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.op_%s)', o.oprname, o.l, o.r, i);
    END LOOP;
END $$;
CREATE FUNCTION evil.format(f text, a text, b int4) RETURNS text LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('format', 0); SELECT pg_catalog.format(f, a, b) $$;
CREATE FUNCTION evil.current_setting(s text) RETURNS text LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('current_setting', 0); SELECT pg_catalog.current_setting(s) $$;
CREATE FUNCTION evil.pg_backend_pid() RETURNS int4 LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('pg_backend_pid', 0); SELECT pg_catalog.pg_backend_pid() $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('clock_timestamp', 0); SELECT pg_catalog.clock_timestamp() $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('now', 0); SELECT pg_catalog.now() $$;
CREATE FUNCTION evil.nextval(s regclass) RETURNS int8 LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('nextval', 0); SELECT pg_catalog.nextval(s) $$;
CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql SET search_path = pg_catalog
AS $$ SELECT evil.pwn('gen_random_uuid', 0); SELECT pg_catalog.gen_random_uuid() $$;

CREATE TABLE public.sp_leader_writes (v pg_catalog.int4);
CREATE TRIGGER leader_only BEFORE INSERT ON public.sp_leader_writes
    FOR EACH ROW EXECUTE FUNCTION lease_sched.require_lock('sp-writer');
CREATE TABLE public.sp_lease_writes (v pg_catalog.int4);
CREATE TRIGGER lease_only BEFORE INSERT ON public.sp_lease_writes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.require_lease('sp-job', 'secret');

-- Every procedure and function of the API, on the hostile path. These helpers run with
-- that path too, so their own code names every type and operator with its schema.
CREATE PROCEDURE pg_temp.call_everything(job pg_catalog.text) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lease_sched.job_define(job, '1 hour', 'skip', '1 minute', 2, '5 minutes');
    PERFORM * FROM lease_sched.job_definition(job);
    PERFORM lease_sched.job_pause(job);
    PERFORM lease_sched.job_resume(job);
    PERFORM * FROM lease_sched.lease_latest_plan(job);
    PERFORM lease_sched.lease_next_plan(job);
    PERFORM lease_sched.job_drop(job);
    PERFORM lease_sched.retry_backoff(3, '10 seconds', '1 hour');
    PERFORM lease_sched.runtime_touch(lease_sched.runtime_register('sp-rt'));
    PERFORM lease_sched.runtime_touch_batch(ARRAY[lease_sched.runtime_register('sp-rt2')]);
    PERFORM lease_sched.runtime_pending();
    PERFORM lease_sched.runtime_flush();
    PERFORM * FROM lease_sched.stats();
    PERFORM * FROM lease_sched.sweep();
    PERFORM * FROM lease_sched.job_health;
    PERFORM * FROM lease_sched.active_leases;
    PERFORM * FROM lease_sched.job_summary;
    PERFORM * FROM lease_sched.executions;
    PERFORM * FROM lease_sched.job_definitions;
    PERFORM * FROM lease_sched.token_floor;
    PERFORM * FROM lease_sched.sweeper_status();
    -- A calendar job: its definition, its slots, a run-now plan, the one-call claim.
    PERFORM lease_sched.job_define(job OPERATOR(pg_catalog.||) '-cal', cron => '*/5 * * * *', timezone => 'Europe/Berlin');
    PERFORM * FROM lease_sched.job_next_runs(job OPERATOR(pg_catalog.||) '-cal', 3);
    PERFORM * FROM lease_sched.cron_next_runs('0 3 LW * ?', 'America/New_York', 3, '2024-11-01 00:00+00');
    PERFORM lease_sched.job_trigger(job OPERATOR(pg_catalog.||) '-cal');
    PERFORM * FROM lease_sched.lease_claim_next(job OPERATOR(pg_catalog.||) '-cal', 'sp-runner');
    PERFORM lease_sched.lease_next_plan(job OPERATOR(pg_catalog.||) '-cal');
    PERFORM lease_sched.job_drop(job OPERATOR(pg_catalog.||) '-cal');
END $$;

CREATE FUNCTION pg_temp.fence_everything(plan pg_catalog.timestamptz) RETURNS pg_catalog.text LANGUAGE plpgsql AS $$
DECLARE l pg_catalog.record; c pg_catalog.record;
BEGIN
    SELECT * INTO c FROM lease_sched.lease_try_claim('sp-job', plan, 'sp-runner', stale_timeout => '1 minute');
    PERFORM lease_sched.lease_heartbeat(c.execution_id, c.lease_token);
    PERFORM lease_sched.lease_fence(c.execution_id, c.fencing_token);
    PERFORM lease_sched.lease_fence(c.execution_id, c.fencing_token, c.lease_token);
    INSERT INTO public.sp_lease_writes VALUES (1);
    PERFORM lease_sched.lease_finish(c.execution_id, c.lease_token, 'FAILED', '{"a": 1}', 3, 'E1', 'boom', '1 second');
    SELECT * INTO l FROM lease_sched.lock_acquire('sp-writer', 'sp-node', '1 minute');
    PERFORM * FROM lease_sched.lock_info('sp-writer');
    PERFORM lease_sched.lock_heartbeat('sp-writer', l.lock_token);
    PERFORM lease_sched.lock_fence('sp-writer', l.fencing_token);
    PERFORM lease_sched.lock_fence('sp-writer', l.fencing_token, l.lock_token);
    INSERT INTO public.sp_leader_writes VALUES (1);
    PERFORM lease_sched.lock_release('sp-writer', l.lock_token);
    RETURN pg_catalog.format('%s, %s', c.outcome, l.acquired);
END $$;

-- Round 1: the look-alikes in a schema ahead of pg_catalog.
SET search_path = evil, pg_catalog;
CALL lease_sched.run('sp-run-1', 'SELECT 1', every => '1 hour');
CALL lease_sched.run('sp-run-fail-1', 'SELECT 1 OPERATOR(pg_catalog./) 0', every => '1 hour');
CALL pg_temp.call_everything('sp-defined-1');
SELECT pg_temp.fence_everything('2026-03-01 00:00+00');
RESET search_path;
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS planted_objects_that_ran FROM evil.ran_count;
SELECT DISTINCT what FROM evil.ran ORDER BY 1;

-- Round 2: the same domains in pg_temp too, searched first for types.
SELECT pg_temp.plant('pg_temp');
SET search_path = evil, pg_catalog;
CALL lease_sched.run('sp-run-2', 'SELECT 1', every => '1 hour');
CALL lease_sched.run('sp-run-fail-2', 'SELECT 1 OPERATOR(pg_catalog./) 0', every => '1 hour');
CALL pg_temp.call_everything('sp-defined-2');
SELECT pg_temp.fence_everything('2026-03-02 00:00+00');
RESET search_path;
SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS planted_objects_that_ran FROM evil.ran_count;
SELECT DISTINCT what FROM evil.ran ORDER BY 1;

-- The runs happened, with their real outcomes.
SELECT job_name, status, error_code FROM lease_sched.executions
 WHERE job_name OPERATOR(pg_catalog.~~) 'sp-run-%' ORDER BY job_name;

-- Every function and procedure lease_sched installs was called above (directly, or as
-- the internals of what was called): a new one must be added to this file.
SELECT p.proname FROM pg_catalog.pg_proc p
 WHERE p.pronamespace OPERATOR(pg_catalog.=) 'lease_sched'::pg_catalog.regnamespace
   AND p.proname::pg_catalog.text OPERATOR(pg_catalog.<>) ALL (ARRAY['run', 'job_define', 'job_definition', 'job_pause', 'job_resume', 'job_drop',
                         'lease_latest_plan', 'lease_next_plan', 'retry_backoff', 'runtime_register',
                         'runtime_touch', 'runtime_touch_batch', 'runtime_pending', 'runtime_flush', 'stats',
                         'sweep', 'lease_try_claim', 'lease_heartbeat', 'lease_fence', 'lease_finish',
                         'lock_acquire', 'lock_info', 'lock_heartbeat', 'lock_fence', 'lock_release',
                         'require_lock', 'require_lease',
                         -- internals of the above
                         'lease_fence_check', 'lock_fence_check', 'lease_fence_passed', 'lock_fence_passed',
                         'run_arm_deadline', 'run_disarm_deadline', 'sweeper_status', 'job_next_runs',
                         'cron_next_runs', 'job_trigger', 'lease_claim_next',
                         -- the calendar's internals, reached through the calls above
                         'calendar_next_plan', 'job_trigger_due', 'cron_check_timezone', 'cron_day_matches',
                         'cron_error', 'cron_field', 'cron_next_bit', 'cron_next_slot', 'cron_next_wall',
                         'cron_parse', 'cron_transition', 'cron_utc_offset', 'cron_value',
                         -- run by CREATE EXTENSION; schedule/unschedule need pg_cron (calendars.rs)
                         'sys_sweeper_announce', 'schedule', 'unschedule'])
   -- the portable edition's internals (docs/portable.md), called by its twins of the above
   AND p.proname::pg_catalog.text OPERATOR(pg_catalog.!~~) 'portable\_%'
 ORDER BY 1;

DROP TABLE public.sp_leader_writes, public.sp_lease_writes;
SET client_min_messages = warning;
DROP SCHEMA evil CASCADE;
RESET client_min_messages;
