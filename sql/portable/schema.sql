-- Portable edition (docs/portable.md): what the native library provides to every concern,
-- in PL/pgSQL. Appended to sql/schema.sql by scripts/portable.py.
--
-- The helpers below are SECURITY INVOKER and pin no search_path: they are called only by
-- the API's SECURITY DEFINER functions, whose pinned search_path they run under, and they
-- name every function and operator with its schema all the same (a caller who runs one
-- directly runs it with their own rights, and a planted operator still cannot stand in).

-- Argument checks: the same SQLSTATEs and messages as the native edition's
-- (src/api/args.rs): 22004 "<argument> must not be NULL", 22023 for any other bad value.
CREATE FUNCTION lease_sched.portable_required(is_null boolean, argument text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $check$
BEGIN
    IF is_null THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
END;
$check$;

-- A name (job, scope, lock, runner, holder, runtime): at most 512 bytes, so that keys of
-- three names and a plan time fit one btree entry; empty only where may_be_empty.
CREATE FUNCTION lease_sched.portable_name(value text, argument text, may_be_empty boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $check$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF NOT may_be_empty AND value OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION '% must not be empty', argument USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.octet_length(value) OPERATOR(pg_catalog.>) 512 THEN
        RAISE EXCEPTION '% must be at most 512 bytes (it is %)', argument, pg_catalog.octet_length(value)
              USING ERRCODE = '22023';
    END IF;
    RETURN value;
END;
$check$;

CREATE FUNCTION lease_sched.portable_finite_time(value timestamptz, argument text)
RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $check$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF NOT pg_catalog.isfinite(value) THEN
        RAISE EXCEPTION '% must be a finite timestamp', argument USING ERRCODE = '22023';
    END IF;
    RETURN value;
END;
$check$;

-- An interval argument that becomes an instant (now + value) or a stride (the native
-- src/api/args.rs, interval_in_range): no months (a month has no fixed length; an
-- infinite interval has infinite months), positive (or not negative, when allow_zero),
-- every part with the sign of the total (PostgreSQL adds intervals part by part, so
-- '106751992 days -2562047784 hours' is one day in total and still overflows), and at most
-- 366 days.
CREATE FUNCTION lease_sched.portable_interval(value interval, argument text, allow_zero boolean DEFAULT false)
RETURNS interval
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $check$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF value::pg_catalog.text OPERATOR(pg_catalog.~) 'infinity'
       OR EXTRACT(year FROM value) OPERATOR(pg_catalog.<>) 0 OR EXTRACT(month FROM value) OPERATOR(pg_catalog.<>) 0 THEN
        RAISE EXCEPTION '% must not contain months or years', argument
              USING ERRCODE = '22023', HINT = 'Use days instead, e.g. ''30 days''.';
    END IF;
    IF allow_zero AND value OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION '% must not be negative', argument
              USING ERRCODE = '22023', HINT = 'Pass an interval such as ''30 seconds''.';
    END IF;
    IF NOT allow_zero AND value OPERATOR(pg_catalog.<=) interval '0' THEN
        RAISE EXCEPTION '% must be positive', argument
              USING ERRCODE = '22023', HINT = 'Pass an interval such as ''30 seconds''.';
    END IF;
    IF EXTRACT(day FROM value) OPERATOR(pg_catalog.<) 0
       OR (value OPERATOR(pg_catalog.-) pg_catalog.date_trunc('day', value)) OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION '% must not have parts of opposite signs', argument
              USING ERRCODE = '22023', HINT = 'Write the interval with one sign, e.g. ''23 hours'' rather than ''1 day -1 hour''.';
    END IF;
    IF value OPERATOR(pg_catalog.>) interval '366 days' THEN
        RAISE EXCEPTION '% must be at most 366 days', argument USING ERRCODE = '22023';
    END IF;
    RETURN value;
END;
$check$;

-- The same checks as one test, for the fast path of the hot calls (the precise error comes
-- from portable_interval).
CREATE FUNCTION lease_sched.portable_interval_ok(value interval, allow_zero boolean DEFAULT false)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN value IS NOT NULL AND value::text !~ 'infinity'
       AND EXTRACT(year FROM value) = 0 AND EXTRACT(month FROM value) = 0
       AND (value > interval '0' OR (allow_zero AND value = interval '0'))
       AND EXTRACT(day FROM value) >= 0 AND value - date_trunc('day', value) >= interval '0'
       AND value <= interval '366 days';

CREATE FUNCTION lease_sched.portable_at_least_one(value int, argument text)
RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $check$
BEGIN
    IF value IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF value OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION '% must be at least 1', argument USING ERRCODE = '22023';
    END IF;
    RETURN value;
END;
$check$;

-- An interval as microseconds, a month counting 30 days (as PostgreSQL compares them).
-- (Functions with an SQL-standard body, RETURN ..., bind their operators and functions
-- when they are created, under the install script's pinned search_path.)
CREATE FUNCTION lease_sched.portable_micros(value interval)
RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ((EXTRACT(year FROM value) * 12 + EXTRACT(month FROM value))
            * 2592000000000
        + EXTRACT(day FROM value) * 86400000000
        + EXTRACT(hour FROM value) * 3600000000
        + EXTRACT(minute FROM value) * 60000000
        + EXTRACT(microseconds FROM value));

-- Microseconds as an interval of time only (no days or months), as the native edition
-- builds its intervals.
CREATE FUNCTION lease_sched.portable_interval_of(micros numeric)
RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN pg_catalog.trunc(micros / 1000000)::float8 * interval '1 second'
       + pg_catalog.mod(micros, 1000000)::float8 * interval '1 microsecond';

-- A stride: positive, without months or years (whose length depends on the calendar),
-- in microseconds.
CREATE FUNCTION lease_sched.portable_stride(value interval, argument text)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $check$
DECLARE
    micros numeric;
BEGIN
    IF EXTRACT(year FROM value) OPERATOR(pg_catalog.<>) 0 OR EXTRACT(month FROM value) OPERATOR(pg_catalog.<>) 0 THEN
        RAISE EXCEPTION '% must not contain months or years', argument
              USING ERRCODE = '22023', HINT = 'Use days instead, e.g. ''30 days''.';
    END IF;
    micros := lease_sched.portable_micros(value);
    IF micros OPERATOR(pg_catalog.<=) 0 THEN
        RAISE EXCEPTION '% must be positive', argument USING ERRCODE = '22023';
    END IF;
    RETURN micros::bigint;
END;
$check$;

-- A lease_sched.* duration setting in milliseconds. The native library defines these
-- settings; here they are placeholders (postgresql.conf, ALTER DATABASE ... SET,
-- ALTER ROLE ... SET) read as PostgreSQL would read them: a bare number in the
-- setting's unit, or a value with a unit ('10s', '5min'). A value the native edition would
-- refuse (not a duration, below the setting's minimum, above the largest int4 in its unit)
-- is ignored with a WARNING, as the native edition ignores it in postgresql.conf: the
-- default applies.
CREATE FUNCTION lease_sched.portable_setting_ms(name text, default_ms bigint, unit_ms bigint DEFAULT 1,
                                                min_ms bigint DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE
AS $setting$
DECLARE
    raw pg_catalog.text := pg_catalog.btrim(pg_catalog.current_setting(name, true));
    ms  pg_catalog.numeric;
BEGIN
    IF raw IS NULL OR raw OPERATOR(pg_catalog.=) '' THEN
        RETURN default_ms;
    END IF;
    IF raw OPERATOR(pg_catalog.~) '^[0-9]+$' THEN
        ms := raw::pg_catalog.numeric OPERATOR(pg_catalog.*) unit_ms;
    ELSE
        ms := lease_sched.portable_micros(pg_catalog.replace(raw, 'ms', ' milliseconds')::interval)
              OPERATOR(pg_catalog./) 1000;
    END IF;
    IF ms OPERATOR(pg_catalog.<) min_ms OR ms OPERATOR(pg_catalog.>) (2147483647 OPERATOR(pg_catalog.*) unit_ms) THEN
        RAISE WARNING 'lease_sched: setting % = % is outside the valid range (% to % ms); using % ms', name, raw, min_ms,
                      (2147483647 OPERATOR(pg_catalog.*) unit_ms), default_ms;
        RETURN default_ms;
    END IF;
    RETURN pg_catalog.round(ms)::bigint;
EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_text_representation
               OR numeric_value_out_of_range OR interval_field_overflow THEN
    RAISE WARNING 'lease_sched: setting % = % is not a duration; using % ms', name, raw, default_ms;
    RETURN default_ms;
END;
$setting$;

-- The database clock as the native edition counts it: microseconds since 2000-01-01
-- (PostgreSQL's TimestampTz), so fencing-token floors agree between the two editions.
CREATE FUNCTION lease_sched.portable_db_micros(t timestamptz)
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (EXTRACT(epoch FROM t) * 1000000)::bigint - 946684800000000;

-- And back: microseconds since 2000-01-01 as a timestamptz.
CREATE FUNCTION lease_sched.portable_time_of(micros bigint)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN timestamptz '2000-01-01 00:00:00+00' + lease_sched.portable_interval_of(micros);

-- Fencing tokens that never repeat (the native src/token_floor.rs): before the first grant
-- after CREATE, after each server start and on each WAL timeline, the token sequence is
-- floored at the database clock in microseconds. Everything is read without superuser: the
-- timeline is the first 8 hex digits of the current WAL file's name, the start
-- pg_postmaster_start_time(); the last floor is recorded in the native edition's sequences
-- (token_floor_timeline, token_floor_server_start, token_floor_copy, sql/fencing.sql).
--
-- The native edition's records are extension members pg_dump leaves out, so a restored
-- copy starts them at 0 and floors. Here they are plain sequences, dumped with their
-- values: a dump restored on the same server (same start, same timeline) would carry them
-- as "floored" and continue the token sequence from the dump, below every token the
-- original granted after it. token_floor_copy (sql/fencing.sql) tells the copies apart: it
-- records the oids of the database and of fencing_token_seq at the last floor, which a
-- restore (new objects) and CREATE DATABASE ... TEMPLATE (a new database) both change.

-- This copy of the database, as token_floor_copy records it.
CREATE FUNCTION lease_sched.portable_database_copy()
RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN ((SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())::bigint << 32)
       | 'lease_sched.fencing_token_seq'::regclass::oid::bigint;

-- Floors are serialised by a lock on this empty table, taken in a subtransaction that is
-- rolled back right after the floor (setval is not transactional: the floor stays, the
-- lock goes). Not an advisory lock: any role that can connect may take any advisory lock
-- and keep it, and every grant after a server start would wait for it; this table can be
-- locked in a mode that conflicts only by roles that may write lease_sched's tables.
CREATE TABLE lease_sched.token_floor_lock ();
COMMENT ON TABLE lease_sched.token_floor_lock IS
    'Portable edition: locked (EXCLUSIVE, for the length of one floor) to serialise fencing-token floors. Always empty.';
REVOKE ALL ON lease_sched.token_floor_lock FROM PUBLIC;

CREATE FUNCTION lease_sched.portable_token_floor()
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $floor$
DECLARE
    timeline bigint;
    started  bigint;
    copy     bigint;
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RETURN;  -- a standby grants nothing: the write fails as read-only
    END IF;
    timeline := ('x' OPERATOR(pg_catalog.||)
                 pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::bigint;
    started := lease_sched.portable_db_micros(pg_catalog.pg_postmaster_start_time());
    copy := lease_sched.portable_database_copy();
    IF (SELECT s.last_value FROM lease_sched.token_floor_timeline s) OPERATOR(pg_catalog.=) timeline
       AND (SELECT s.last_value FROM lease_sched.token_floor_server_start s) OPERATOR(pg_catalog.=) started
       AND (SELECT s.last_value FROM lease_sched.token_floor_copy s) OPERATOR(pg_catalog.=) copy THEN
        RETURN;
    END IF;
    BEGIN
        LOCK TABLE lease_sched.token_floor_lock IN EXCLUSIVE MODE;
        -- Re-read under the lock: another session may have floored meanwhile.
        IF (SELECT s.last_value FROM lease_sched.token_floor_timeline s) OPERATOR(pg_catalog.<>) timeline
           OR (SELECT s.last_value FROM lease_sched.token_floor_server_start s) OPERATOR(pg_catalog.<>) started
           OR (SELECT s.last_value FROM lease_sched.token_floor_copy s) OPERATOR(pg_catalog.<>) copy THEN
            PERFORM pg_catalog.setval('lease_sched.fencing_token_seq',
                        greatest((SELECT s.last_value FROM lease_sched.fencing_token_seq s),
                                 lease_sched.portable_db_micros(pg_catalog.clock_timestamp()))),
                    pg_catalog.setval('lease_sched.token_floor_timeline', timeline),
                    pg_catalog.setval('lease_sched.token_floor_server_start', started),
                    pg_catalog.setval('lease_sched.token_floor_copy', copy);
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'LS998';  -- roll back: release the lock now (the setvals stay)
    EXCEPTION WHEN SQLSTATE 'LS998' THEN
        NULL;
    END;
END;
$floor$;

-- Move the token sequence above `token`, a token a row already carries although the
-- sequence never reached it (rows restored from a database floored later than this one):
-- to the clock, or to `token` if that is higher, as a floor does (the native
-- token_floor::floor_above), so the next token drawn is above both. Under the floor lock.
CREATE FUNCTION lease_sched.portable_floor_above(token bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $above$
BEGIN
    BEGIN
        LOCK TABLE lease_sched.token_floor_lock IN EXCLUSIVE MODE;
        PERFORM pg_catalog.setval('lease_sched.fencing_token_seq',
                    greatest((SELECT s.last_value FROM lease_sched.fencing_token_seq s), token,
                             lease_sched.portable_db_micros(pg_catalog.clock_timestamp())));
        RAISE EXCEPTION USING ERRCODE = 'LS998';  -- roll back: release the lock now (the setval stays)
    EXCEPTION WHEN SQLSTATE 'LS998' THEN
        NULL;
    END;
END;
$above$;

-- Admin functions (sweep, runtime_flush) run with the caller's rights; refuse callers who
-- may not write lease_sched's tables up front (the native src/api/mod.rs, require_admin).
CREATE FUNCTION lease_sched.portable_require_admin(function_name text)
RETURNS void
LANGUAGE plpgsql STABLE
AS $admin$
BEGIN
    IF NOT (pg_catalog.has_table_privilege('lease_sched.sys_cron_executions', 'UPDATE, DELETE')
            AND pg_catalog.has_table_privilege('lease_sched.runtimes', 'UPDATE')) THEN
        RAISE EXCEPTION 'permission denied for %: it needs UPDATE and DELETE on lease_sched''s tables', function_name
              USING ERRCODE = '42501',
                    HINT = 'Admin functions run with the caller''s rights; call them as the extension owner or from pg_cron.';
    END IF;
END;
$admin$;
