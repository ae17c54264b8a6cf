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
    'Whether a background worker sweeps this database (swept), its state (sweeping, starting, waiting for update, over max_databases, no worker slot, not lease_sched.database, template, not preloaded), the sweeper''s pid and its last sweep.';

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

-- Calendars: cron expressions in a time zone (sql/calendar.sql, sql/schedule.sql).
-- A job runs every interval or on a cron calendar; existing definitions keep every.
ALTER TABLE lease_sched.jobs ALTER COLUMN every DROP NOT NULL;
ALTER TABLE lease_sched.jobs ADD COLUMN cron pg_catalog.text;
-- (No default in ADD COLUMN: a "fast default" would leave a missing-value entry that a
-- fresh install does not have, and pg_upgrade's dump would tell them apart.)
ALTER TABLE lease_sched.jobs ADD COLUMN timezone pg_catalog.text;
UPDATE lease_sched.jobs SET timezone = 'UTC';
ALTER TABLE lease_sched.jobs ALTER COLUMN timezone SET DEFAULT 'UTC', ALTER COLUMN timezone SET NOT NULL;
ALTER TABLE lease_sched.jobs ADD COLUMN cron_spec pg_catalog.int8[];
ALTER TABLE lease_sched.jobs ADD CONSTRAINT one_schedule
    CHECK ((every IS NULL) OPERATOR(pg_catalog.<>) (cron IS NULL) AND (cron IS NULL) OPERATOR(pg_catalog.=) (cron_spec IS NULL));

-- "Run now" requests (job_trigger): each is one extra plan of its job at the instant it was
-- asked for. The planner offers a pending trigger before the schedule, and its execution
-- row (same plan_time) never counts as the schedule's cursor, so it neither consumes nor
-- shifts a scheduled slot. Rows stay as history (pruned with their job's executions).
CREATE TABLE lease_sched.job_triggers (
    job_name     text        NOT NULL,
    scope_kind   text        NOT NULL,
    scope_id     text        NOT NULL,
    plan_time    timestamptz NOT NULL,
    requested_by text        NOT NULL,
    CONSTRAINT job_triggers_pkey PRIMARY KEY (job_name, scope_kind, scope_id, plan_time)
);
COMMENT ON TABLE lease_sched.job_triggers IS
    'Runs asked for by job_trigger: their plan_time (the execution row of the run has the same one) and who asked.';
SELECT pg_catalog.pg_extension_config_dump('lease_sched.job_triggers', '');


-- Calendars: cron expressions evaluated in a time zone (docs/api.md, "Calendars").
--
-- One implementation in PL/pgSQL, used by both editions: the native planner
-- (lease_next_plan, src/planner/) calls calendar_next_plan for a job defined with
-- cron, and the portable edition uses these files verbatim. Not a hot path: one evaluation
-- per plan decision.
--
-- Every function pins `search_path = pg_catalog, pg_temp`, so no type, operator or
-- function a caller (or a hostile schema owner) puts on the path can stand in for ours.
-- Time zones are the server's own tz database: the one `AT TIME ZONE` reads
-- (pg_catalog.timezone(zone, t)), updated with the operating system's tzdata.
--
-- The normalized form (cron_parse), stored once per job in lease_sched.jobs.cron_spec:
-- a bigint[10] of bitmaps, so evaluating never parses text again.
--   [1] seconds 0-59        [2] minutes 0-59         [3] hours 0-23
--   [4] days of month 1-31 (bit 0: L, the last day)    [5] months 1-12
--   [6] days of week 0-6 (0 = Sunday)
--   [7] W days: bit N = the weekday nearest day N (bit 0: LW, the last weekday)
--   [8] last <weekday> of the month (5L): bit = weekday
--   [9] <weekday>#<n> (nth weekday of the month): bit weekday * 5 + n - 1
--   [10] flags: 1 day of month restricted, 2 day of week restricted,
--        4 minute or hour field starts with * (a "wildcard" job, see cron_next_slot),
--        8 six fields (seconds given)

-- Raise the one error every bad expression gets: 22023, naming the argument and the
-- 1-based character position of the problem, with a caret under it in DETAIL.
CREATE FUNCTION lease_sched.cron_error(argument text, expression text, pos int, problem text)
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '% has an error at position %: %', argument, pos, problem
          USING ERRCODE = '22023',
                DETAIL = format(E'%s\n%s\n%s^', argument, expression, repeat(' ', greatest(pos - 1, 0))),
                HINT = 'Fields: [second] minute hour day-of-month month day-of-week, or @daily and the like (docs/api.md, "Calendars").';
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_error(text, text, int, text) IS
    'Used by cron_parse: raise 22023 naming the argument and the position of the error.';

-- One value of a field: a number or (months, days of week) a three-letter name.
CREATE FUNCTION lease_sched.cron_value(token text, kind int, argument text, expression text, pos int)
RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    names  text[];
    lo     int := (ARRAY[0, 0, 0, 1, 1, 0])[kind];
    hi     int := (ARRAY[59, 59, 23, 31, 12, 7])[kind];
    label  text := (ARRAY['second', 'minute', 'hour', 'day of month', 'month', 'day of week'])[kind];
    v      int;
BEGIN
    IF token ~ '^[0-9]{1,4}$' THEN
        v := token::int;
    ELSE
        names := CASE kind
                 WHEN 5 THEN ARRAY['JAN','FEB','MAR','APR','MAY','JUN','JUL','AUG','SEP','OCT','NOV','DEC']
                 WHEN 6 THEN ARRAY['SUN','MON','TUE','WED','THU','FRI','SAT'] END;
        v := array_position(names, upper(token));
        IF v IS NULL THEN
            PERFORM lease_sched.cron_error(argument, expression, pos,
                CASE WHEN token = '' THEN format('%s value missing', label)
                     ELSE format('"%s" is not a %s', token, label) END);
        END IF;
        IF kind = 6 THEN v := v - 1; END IF;
    END IF;
    IF v < lo OR v > hi THEN
        PERFORM lease_sched.cron_error(argument, expression, pos,
            format('%s %s is out of range %s-%s', label, v, lo, hi));
    END IF;
    RETURN v;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_value(text, int, text, text, int) IS
    'Used by cron_parse: one value of a field (kind 1 second .. 6 day of week), checked against its range.';

-- One field: a comma list of *, ?, values, ranges a-b, steps (*/n, a/n, a-b/n), and the
-- day specials L, LW, nW (day of month), nL, n#k (day of week). Returns
-- {mask, special 1, special 2} (see the layout above).
CREATE FUNCTION lease_sched.cron_field(field text, kind int, argument text, expression text, field_pos int)
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lo     int := (ARRAY[0, 0, 0, 1, 1, 0])[kind];
    hi     int := (ARRAY[59, 59, 23, 31, 12, 7])[kind];
    label  text := (ARRAY['second', 'minute', 'hour', 'day of month', 'month', 'day of week'])[kind];
    mask   bigint := 0;
    s1     bigint := 0;
    s2     bigint := 0;
    item   text;
    ipos   int := field_pos;
    base   text;
    step   int;
    a      int;
    b      int;
    k      int;
    m      text[];
BEGIN
    FOREACH item IN ARRAY string_to_array(field, ',') LOOP
        IF item = '' THEN
            PERFORM lease_sched.cron_error(argument, expression, ipos, format('empty item in the %s field', label));
        END IF;
        IF item = '?' AND kind IN (4, 6) THEN
            mask := mask | (CASE kind WHEN 4 THEN x'FFFFFFFE'::bigint ELSE 127 END);
        ELSIF kind = 4 AND upper(item) = 'L' THEN
            mask := mask | 1;
        ELSIF kind = 4 AND upper(item) = 'LW' THEN
            s1 := s1 | 1;
        ELSIF kind = 4 AND upper(item) ~ '^[0-9]+W$' THEN
            k := lease_sched.cron_value(left(item, -1), 4, argument, expression, ipos);
            s1 := s1 | (1::bigint << k);
        ELSIF kind = 6 AND upper(item) ~ '^([0-9]+|[A-Z]{3})L$' THEN
            k := lease_sched.cron_value(left(item, -1), 6, argument, expression, ipos) % 7;
            s1 := s1 | (1::bigint << k);
        ELSIF kind = 6 AND item ~ '#' THEN
            m := regexp_match(item, '^([0-9]+|[A-Za-z]{3})#([0-9]+)$');
            IF m IS NULL THEN
                PERFORM lease_sched.cron_error(argument, expression, ipos, format('"%s" is not <weekday>#<1-5>', item));
            END IF;
            k := lease_sched.cron_value(m[1], 6, argument, expression, ipos) % 7;
            IF length(m[2]) > 1 OR m[2]::int NOT BETWEEN 1 AND 5 THEN
                PERFORM lease_sched.cron_error(argument, expression, ipos + length(m[1]) + 1,
                    format('weekday of the month #%s is out of range 1-5', m[2]));
            END IF;
            s2 := s2 | (1::bigint << (k * 5 + m[2]::int - 1));
        ELSE
            base := split_part(item, '/', 1);
            step := 1;
            IF item ~ '/' THEN
                IF split_part(item, '/', 2) !~ '^[0-9]{1,4}$' OR split_part(item, '/', 3) <> '' THEN
                    PERFORM lease_sched.cron_error(argument, expression, ipos + length(base) + 1,
                        format('step "%s" is not a number', substr(item, length(base) + 2)));
                END IF;
                step := split_part(item, '/', 2)::int;
                IF step < 1 OR step > hi - lo + 1 THEN
                    PERFORM lease_sched.cron_error(argument, expression, ipos + length(base) + 1,
                        format('step %s is out of range 1-%s for the %s field', step, hi - lo + 1, label));
                END IF;
            END IF;
            IF base = '*' THEN
                a := lo;
                b := CASE kind WHEN 6 THEN 6 ELSE hi END;
            ELSIF base ~ '-' THEN
                a := lease_sched.cron_value(split_part(base, '-', 1), kind, argument, expression, ipos);
                b := lease_sched.cron_value(substr(base, length(split_part(base, '-', 1)) + 2), kind, argument, expression,
                                            ipos + length(split_part(base, '-', 1)) + 1);
                IF b < a THEN
                    PERFORM lease_sched.cron_error(argument, expression, ipos,
                        format('range %s goes backwards', base));
                END IF;
            ELSE
                a := lease_sched.cron_value(base, kind, argument, expression, ipos);
                b := CASE WHEN item ~ '/' THEN CASE kind WHEN 6 THEN 6 ELSE hi END ELSE a END;
            END IF;
            k := a;
            WHILE k <= b LOOP
                mask := mask | (1::bigint << (CASE WHEN kind = 6 THEN k % 7 ELSE k END));
                k := k + step;
            END LOOP;
        END IF;
        ipos := ipos + length(item) + 1;
    END LOOP;
    RETURN ARRAY[mask, s1, s2];
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_field(text, int, text, text, int) IS
    'Used by cron_parse: one field as bitmaps (kind 1 second .. 6 day of week).';

CREATE FUNCTION lease_sched.cron_parse(expression text, argument text DEFAULT 'cron')
RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fields   text[] := '{}';
    starts   int[] := '{}';
    tok      text;
    tokstart int;
    c        text;
    i        int;
    n        int;
    six      boolean;
    o        int;
    sec      bigint[];
    mins     bigint[];
    hrs      bigint[];
    dom      bigint[];
    mon      bigint[];
    dow      bigint[];
    flags    bigint := 0;
    possible boolean := false;
BEGIN
    IF expression IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF length(expression) > 1000 THEN
        RAISE EXCEPTION '% must be at most 1000 characters (it is %)', argument, length(expression) USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. length(expression) LOOP
        c := substr(expression, i, 1);
        IF c IN (' ', E'\t', E'\n', E'\r') THEN
            IF tok IS NOT NULL THEN
                fields := fields || tok;
                starts := starts || tokstart;
                tok := NULL;
            END IF;
        ELSIF tok IS NULL THEN
            tok := c;
            tokstart := i;
        ELSE
            tok := tok || c;
        END IF;
    END LOOP;
    IF tok IS NOT NULL THEN
        fields := fields || tok;
        starts := starts || tokstart;
    END IF;
    n := cardinality(fields);
    IF n = 0 THEN
        RAISE EXCEPTION '% must not be empty', argument USING ERRCODE = '22023',
              HINT = 'Pass a cron expression such as ''0 3 * * *''.';
    END IF;
    IF left(fields[1], 1) = '@' THEN
        IF n > 1 THEN
            PERFORM lease_sched.cron_error(argument, expression, starts[2], 'nothing may follow a @ shorthand');
        END IF;
        c := CASE lower(fields[1])
             WHEN '@yearly' THEN '0 0 1 1 *' WHEN '@annually' THEN '0 0 1 1 *'
             WHEN '@monthly' THEN '0 0 1 * *' WHEN '@weekly' THEN '0 0 * * 0'
             WHEN '@daily' THEN '0 0 * * *' WHEN '@midnight' THEN '0 0 * * *'
             WHEN '@hourly' THEN '0 * * * *' END;
        IF c IS NULL THEN
            PERFORM lease_sched.cron_error(argument, expression, starts[1],
                format('unknown shorthand "%s" (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)', fields[1]));
        END IF;
        RETURN lease_sched.cron_parse(c, argument);
    END IF;
    IF n NOT IN (5, 6) THEN
        PERFORM lease_sched.cron_error(argument, expression,
            CASE WHEN n > 6 THEN starts[7] ELSE length(expression) + 1 END,
            format('%s fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)', n));
    END IF;
    six := n = 6;
    o := CASE WHEN six THEN 1 ELSE 0 END;
    sec := CASE WHEN six THEN lease_sched.cron_field(fields[1], 1, argument, expression, starts[1]) ELSE ARRAY[1, 0, 0]::bigint[] END;
    mins := lease_sched.cron_field(fields[1 + o], 2, argument, expression, starts[1 + o]);
    hrs := lease_sched.cron_field(fields[2 + o], 3, argument, expression, starts[2 + o]);
    dom := lease_sched.cron_field(fields[3 + o], 4, argument, expression, starts[3 + o]);
    mon := lease_sched.cron_field(fields[4 + o], 5, argument, expression, starts[4 + o]);
    dow := lease_sched.cron_field(fields[5 + o], 6, argument, expression, starts[5 + o]);
    -- Vixie cron's rule: a day field "is restricted" unless it starts with * (or is ?).
    IF left(fields[3 + o], 1) NOT IN ('*', '?') THEN flags := flags | 1; END IF;
    IF left(fields[5 + o], 1) NOT IN ('*', '?') THEN flags := flags | 2; END IF;
    IF left(fields[1 + o], 1) = '*' OR left(fields[2 + o], 1) = '*' THEN flags := flags | 4; END IF;
    IF six THEN flags := flags | 8; END IF;
    -- A day of month that no selected month has (30 February) would never run: refuse it
    -- now rather than accept a job that silently never fires.
    IF flags & 3 = 1 AND dom[1] & 1 = 0 AND dom[2] = 0 THEN
        FOR i IN 1 .. 12 LOOP
            IF mon[1] & (1::bigint << i) <> 0
               AND dom[1] & ((1::bigint << ((ARRAY[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[i] + 1)) - 1) <> 0 THEN
                possible := true;
            END IF;
        END LOOP;
        IF NOT possible THEN
            PERFORM lease_sched.cron_error(argument, expression, starts[3 + o],
                'no selected month has the selected day of month: the schedule would never run');
        END IF;
    END IF;
    RETURN ARRAY[sec[1], mins[1], hrs[1], dom[1], mon[1], dow[1], dom[2], dow[2], dow[3], flags];
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_parse(text, text) IS
    'Parse and validate a cron expression into its normalized form (bitmaps); 22023 naming argument and the position of the error.';

-- The time zone of a job: any name the server''s AT TIME ZONE accepts (prefer Area/City
-- names from pg_timezone_names; an abbreviation such as EST is a fixed offset).
CREATE FUNCTION lease_sched.cron_check_timezone(timezone text, argument text DEFAULT 'timezone')
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF timezone IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', argument USING ERRCODE = '22004';
    END IF;
    IF timezone = '' OR length(timezone) > 100 THEN
        RAISE EXCEPTION '% must be a time zone name of 1 to 100 characters', argument USING ERRCODE = '22023';
    END IF;
    BEGIN
        PERFORM pg_catalog.timezone(timezone, timestamptz 'epoch');
    EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
        RAISE EXCEPTION '% "%" is not a time zone this server knows', argument, timezone
              USING ERRCODE = '22023', HINT = 'See SELECT name FROM pg_timezone_names, e.g. ''Europe/Berlin''.';
    END;
    RETURN timezone;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_check_timezone(text, text) IS
    'Check that the server''s tz database knows a time zone; 22023 naming the argument otherwise.';

-- Whether day `d` of month `mo` of year `y` (with `dim` days) is a day the spec runs on.
-- Both day fields restricted: either may match (Vixie cron); one restricted: that one.
CREATE FUNCTION lease_sched.cron_day_matches(spec bigint[], y int, mo int, d int, dim int)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    flags bigint := spec[10];
    wd    int := extract(dow FROM make_date(y, mo, d))::int;
    dm    boolean := false;
    wm    boolean := false;
    n     int;
    t     int;
    twd   int;
BEGIN
    IF flags & 3 = 0 THEN
        RETURN true;
    END IF;
    IF flags & 1 <> 0 THEN
        dm := spec[4] & (1::bigint << d) <> 0 OR (spec[4] & 1 <> 0 AND d = dim);
        IF NOT dm AND spec[7] <> 0 AND wd BETWEEN 1 AND 5 THEN
            -- nW: the weekday nearest day n, never in another month; LW: the last weekday.
            FOR n IN 0 .. 31 LOOP
                CONTINUE WHEN spec[7] & (1::bigint << n) = 0;
                t := CASE WHEN n = 0 OR n > dim THEN dim ELSE n END;
                twd := extract(dow FROM make_date(y, mo, t))::int;
                IF n = 0 THEN
                    t := t - CASE twd WHEN 6 THEN 1 WHEN 0 THEN 2 ELSE 0 END;
                ELSIF twd = 6 THEN
                    t := CASE WHEN t = 1 THEN 3 ELSE t - 1 END;
                ELSIF twd = 0 THEN
                    t := CASE WHEN t = dim THEN t - 2 ELSE t + 1 END;
                END IF;
                IF t = d THEN
                    dm := true;
                    EXIT;
                END IF;
            END LOOP;
        END IF;
    END IF;
    IF flags & 2 <> 0 THEN
        wm := spec[6] & (1::bigint << wd) <> 0
              OR (spec[8] & (1::bigint << wd) <> 0 AND d + 7 > dim)
              OR spec[9] & (1::bigint << (wd * 5 + (d - 1) / 7)) <> 0;
    END IF;
    RETURN CASE flags & 3 WHEN 3 THEN dm OR wm WHEN 1 THEN dm ELSE wm END;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_day_matches(bigint[], int, int, int, int) IS
    'Used by cron_next_wall: whether a calendar day matches the day-of-month and day-of-week fields.';

-- The lowest set bit of `mask` in from_bit .. to_bit, or -1.
CREATE FUNCTION lease_sched.cron_next_bit(mask bigint, from_bit int, to_bit int)
RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k int := from_bit;
BEGIN
    IF mask >> from_bit = 0 THEN
        RETURN -1;
    END IF;
    WHILE k <= to_bit LOOP
        IF mask & (1::bigint << k) <> 0 THEN
            RETURN k;
        END IF;
        k := k + 1;
    END LOOP;
    RETURN -1;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_next_bit(bigint, int, int) IS 'Used by cron_next_wall: the lowest set bit in a range, or -1.';

-- The first wall-clock time (a timestamp without time zone) after `from_wall` (at or
-- after it when `inclusive`) that the spec matches, whole seconds; NULL when none comes
-- within 400 years. Field by field (month, day, hour, minute, second), each jumping to
-- its next allowed value, never minute by minute.
CREATE FUNCTION lease_sched.cron_next_wall(spec bigint[], from_wall timestamp, inclusive boolean)
RETURNS timestamp
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    start timestamp := date_trunc('second', from_wall);
    y     int;
    mo    int;
    d     int;
    h     int;
    mi    int;
    s     int;
    k     int;
    dim   int;
    last_year int;
BEGIN
    IF from_wall IS NULL OR NOT isfinite(from_wall) THEN
        RETURN NULL;
    END IF;
    IF NOT inclusive OR start <> from_wall THEN
        start := start + interval '1 second';
    END IF;
    y := extract(year FROM start)::int;
    mo := extract(month FROM start)::int;
    d := extract(day FROM start)::int;
    h := extract(hour FROM start)::int;
    mi := extract(minute FROM start)::int;
    s := floor(extract(second FROM start))::int;
    last_year := y + 400;
    LOOP
        IF y > last_year THEN
            RETURN NULL;
        END IF;
        k := lease_sched.cron_next_bit(spec[5], mo, 12);
        IF k < 0 THEN
            y := y + 1; mo := 1; d := 1; h := 0; mi := 0; s := 0;
            CONTINUE;
        ELSIF k <> mo THEN
            mo := k; d := 1; h := 0; mi := 0; s := 0;
        END IF;
        dim := CASE WHEN mo = 2 THEN CASE WHEN (y % 4 = 0 AND y % 100 <> 0) OR y % 400 = 0 THEN 29 ELSE 28 END
                    WHEN mo IN (4, 6, 9, 11) THEN 30 ELSE 31 END;
        WHILE d <= dim AND NOT lease_sched.cron_day_matches(spec, y, mo, d, dim) LOOP
            d := d + 1; h := 0; mi := 0; s := 0;
        END LOOP;
        IF d > dim THEN
            mo := mo + 1; d := 1; h := 0; mi := 0; s := 0;
            IF mo > 12 THEN y := y + 1; mo := 1; END IF;
            CONTINUE;
        END IF;
        k := lease_sched.cron_next_bit(spec[3], h, 23);
        IF k < 0 THEN
            d := d + 1; h := 0; mi := 0; s := 0;
            CONTINUE;
        ELSIF k <> h THEN
            h := k; mi := 0; s := 0;
        END IF;
        k := lease_sched.cron_next_bit(spec[2], mi, 59);
        IF k < 0 THEN
            h := h + 1; mi := 0; s := 0;
            IF h > 23 THEN d := d + 1; h := 0; END IF;
            CONTINUE;
        ELSIF k <> mi THEN
            mi := k; s := 0;
        END IF;
        k := lease_sched.cron_next_bit(spec[1], s, 59);
        IF k < 0 THEN
            mi := mi + 1; s := 0;
            IF mi > 59 THEN
                h := h + 1; mi := 0;
                IF h > 23 THEN d := d + 1; h := 0; END IF;
            END IF;
            CONTINUE;
        END IF;
        RETURN make_timestamp(y, mo, d, h, mi, k);
    END LOOP;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_next_wall(bigint[], timestamp, boolean) IS
    'The next wall-clock time a normalized cron spec matches (no time zone involved).';

-- The UTC offset of zone `timezone` at instant `u` (a UTC timestamp).
CREATE FUNCTION lease_sched.cron_utc_offset(timezone text, u timestamp)
RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
RETURN pg_catalog.timezone(timezone, pg_catalog.timezone('UTC', u)) - u;
COMMENT ON FUNCTION lease_sched.cron_utc_offset(text, timestamp) IS
    'Used by cron_next_slot: the UTC offset of a zone at an instant given as a UTC timestamp.';

-- The first instant in (lo, hi] whose UTC offset differs from the one at lo (the zone
-- changes its offset exactly once in that range), by bisection to the microsecond.
CREATE FUNCTION lease_sched.cron_transition(timezone text, lo timestamp, hi timestamp)
RETURNS timestamp
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    off interval := lease_sched.cron_utc_offset(timezone, lo);
    mid timestamp;
BEGIN
    WHILE hi - lo > interval '1 microsecond' LOOP
        mid := lo + (hi - lo) / 2;
        IF lease_sched.cron_utc_offset(timezone, mid) = off THEN
            lo := mid;
        ELSE
            hi := mid;
        END IF;
    END LOOP;
    RETURN hi;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_transition(text, timestamp, timestamp) IS
    'Used by cron_next_slot: the instant (a UTC timestamp) a zone changes its UTC offset within a range.';

-- The next slot strictly after `after`: the instant a job with this spec runs, in zone
-- `timezone`. The daylight-saving rules (docs/api.md, "Daylight saving"):
--  * a slot runs at the first instant the zone's wall clock reaches its time. So a slot
--    whose wall time does not exist (clocks jump forward over it) runs at the instant of
--    the jump (02:30 in Berlin on the spring-forward day runs at 03:00 CEST), and a slot
--    whose wall time exists twice (clocks go back) runs once, at the first of them;
--  * except that a "wildcard" job (its minute or hour field starts with *, as Vixie cron
--    counts it) follows real elapsed time: it also runs in the repeated hour, at the
--    second occurrence of each matching wall time.
-- The walk: assume the UTC offset at t holds, take the next matching wall time, and
-- check that the offset really holds until then (in steps of at most 7 days); when it
-- does not, find the transition by bisection and apply the rules above there. Cost:
-- one cron_next_wall per slot plus a bisection (about 40 offset look-ups) per transition
-- crossed. Assumes a zone changes its offset at most once within 7 days (true of every
-- zone in tzdata's modern history).
CREATE FUNCTION lease_sched.cron_next_slot(spec bigint[], timezone text, after timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- Instants as UTC timestamps: arithmetic on them is elapsed time, whatever the
    -- session's TimeZone setting.
    t        timestamp;
    off      interval;
    off2     interval;
    w        timestamp;
    c        timestamp;
    hi       timestamp;
    wildcard boolean := spec[10] & 4 <> 0;
    steps    int := 0;
BEGIN
    IF spec IS NULL OR timezone IS NULL OR after IS NULL OR NOT isfinite(after) THEN
        RETURN NULL;
    END IF;
    t := pg_catalog.timezone('UTC', after);
    off := lease_sched.cron_utc_offset(timezone, t);
    w := lease_sched.cron_next_wall(spec, t + off, false);
    IF NOT wildcard THEN
        -- In the second pass of a repeated hour, the wall times up to the end of the first
        -- pass have been shown already: the next slot's wall time comes after them.
        hi := t - interval '1 day';
        off2 := lease_sched.cron_utc_offset(timezone, hi);
        IF off2 > off AND lease_sched.cron_utc_offset(timezone, t + off - off2) = off2 AND t + off - off2 < t THEN
            hi := lease_sched.cron_transition(timezone, hi, t);
            w := lease_sched.cron_next_wall(spec, greatest(hi + off2, t + off), true);
        END IF;
    END IF;
    LOOP
        steps := steps + 1;
        IF w IS NULL OR steps > 30000 THEN
            RETURN NULL;
        END IF;
        c := w - off;
        IF c > t + interval '7 days' THEN
            hi := t + interval '7 days';
            IF lease_sched.cron_utc_offset(timezone, hi) = off THEN
                t := hi;
                CONTINUE;
            END IF;
        ELSIF lease_sched.cron_utc_offset(timezone, c) = off THEN
            RETURN pg_catalog.timezone('UTC', c);
        ELSE
            hi := c;
        END IF;
        -- The offset changes in (t, hi].
        hi := lease_sched.cron_transition(timezone, t, hi);
        off2 := lease_sched.cron_utc_offset(timezone, hi);
        IF off2 > off THEN
            -- Clocks jump forward at hi: wall times [hi + off, hi + off2) never show.
            -- w >= hi + off (its instant under the old offset was not before hi).
            IF w < hi + off2 THEN
                RETURN pg_catalog.timezone('UTC', hi);
            END IF;
        ELSIF wildcard THEN
            -- Clocks go back at hi: wall times [hi + off2, hi + off) show a second time,
            -- and a wildcard job runs in them again.
            w := lease_sched.cron_next_wall(spec, hi + off2, true);
        END IF;
        -- (otherwise w, not shown yet, stays the next slot's wall time)
        t := hi;
        off := off2;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_next_slot(bigint[], text, timestamptz) IS
    'The next slot of a normalized cron spec strictly after an instant, in a time zone, by the documented daylight-saving rules.';

CREATE FUNCTION lease_sched.cron_next_runs(expression text, timezone text DEFAULT 'UTC', n int DEFAULT 10,
                                           after timestamptz DEFAULT NULL)
RETURNS TABLE (plan_time timestamptz, local_time timestamp)
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    spec bigint[] := lease_sched.cron_parse(expression, 'expression');
    zone text := lease_sched.cron_check_timezone(timezone, 'timezone');
    t    timestamptz := coalesce(after, clock_timestamp());
    i    int;
BEGIN
    IF n IS NULL OR n < 1 OR n > 10000 THEN
        RAISE EXCEPTION 'n must be between 1 and 10000' USING ERRCODE = CASE WHEN n IS NULL THEN '22004' ELSE '22023' END;
    END IF;
    IF NOT isfinite(t) THEN
        RAISE EXCEPTION 'after must be a finite timestamp' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1 .. n LOOP
        t := lease_sched.cron_next_slot(spec, zone, t);
        EXIT WHEN t IS NULL;
        plan_time := t;
        local_time := pg_catalog.timezone(zone, t);
        RETURN NEXT;
    END LOOP;
END;
$$;
COMMENT ON FUNCTION lease_sched.cron_next_runs(text, text, int, timestamptz) IS
    'The next n slots of a cron expression in a time zone, strictly after `after` (NULL: the database clock), with their wall time.';

-- job_define gains cron and timezone, job_definition returns them: both are re-created,
-- keeping the grants users made on them.
SELECT pg_catalog.set_config('lease_sched_upgrade.acl_job_define', coalesce(p.proacl::pg_catalog.text, ''), true)
  FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) 'lease_sched.job_define(text, interval, text, interval, int, interval, text, text)'::pg_catalog.regprocedure;
SELECT pg_catalog.set_config('lease_sched_upgrade.acl_job_definition', coalesce(p.proacl::pg_catalog.text, ''), true)
  FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) 'lease_sched.job_definition(text, text, text)'::pg_catalog.regprocedure;
DROP FUNCTION lease_sched.job_define(text, interval, text, interval, int, interval, text, text);
DROP FUNCTION lease_sched.job_definition(text, text, text);

CREATE FUNCTION lease_sched.job_define(job_name text, every interval DEFAULT NULL, misfire text DEFAULT 'latest',
                                       grace interval DEFAULT NULL, max_attempts int DEFAULT 3,
                                       stale_timeout interval DEFAULT '5 minutes',
                                       scope_kind text DEFAULT 'global', scope_id text DEFAULT '',
                                       cron text DEFAULT NULL, timezone text DEFAULT 'UTC')
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'job_define_every_or_cron_wrapper';
COMMENT ON FUNCTION lease_sched.job_define(text, interval, text, interval, int, interval, text, text, text, text) IS
    'Create or replace the definition of a job (and scope): every interval or a cron expression in a time zone (exactly one); true when it is new. Keeps its paused state.';

CREATE FUNCTION lease_sched.job_definition(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS TABLE (every interval, misfire text, grace interval, max_attempts int, stale_timeout interval, paused boolean,
               cron text, timezone text)
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'job_definition_wrapper';
COMMENT ON FUNCTION lease_sched.job_definition(text, text, text) IS
    'The definition of a job (no row when it has none): what run() and runners read instead of the table.';

CREATE OR REPLACE VIEW lease_sched.job_definitions AS
SELECT job_name, scope_kind, scope_id, every, misfire, grace, max_attempts, stale_timeout, paused, paused_at,
       resumed_at, created_at, updated_at, cron, timezone
  FROM lease_sched.jobs;
COMMENT ON VIEW lease_sched.job_definitions IS 'Job definitions (lease_sched.jobs), for readers.';

-- The dead-man's switch: one row per defined job and scope. `success_due_by` is when the
-- next SUCCESS is due: the first slot after the last successful plan (or after the
-- definition was created, or the job resumed, when later), plus grace + stale_timeout,
-- plus every for an interval job (its slot may run anywhere in its bucket). `overdue`:
-- not paused and the database clock is past it.
CREATE OR REPLACE VIEW lease_sched.job_health AS
SELECT j.job_name, j.scope_kind, j.scope_id, j.every, j.misfire, j.paused,
       s.plan_time AS last_success_plan, s.finished_at AS last_success_at,
       l.plan_time AS last_plan, l.status AS last_status, l.error_code AS last_error_code,
       f.consecutive_failures, k.skipped_24h,
       d.success_due_by,
       NOT j.paused AND clock_timestamp() > d.success_due_by AS overdue,
       w.swept,
       j.cron, j.timezone
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
       SELECT CASE WHEN j.cron IS NULL
                   THEN date_bin(j.every, greatest(s.plan_time, j.created_at, j.resumed_at), timestamptz 'epoch')
                        + j.every + j.every
                   ELSE lease_sched.cron_next_slot(j.cron_spec, j.timezone, greatest(s.plan_time, j.created_at, j.resumed_at))
              END + coalesce(j.grace, interval '0') + j.stale_timeout AS success_due_by) d;
COMMENT ON VIEW lease_sched.job_health IS
    'Per defined job and scope: last success, last status, consecutive failures, skipped slots in 24 h, overdue (no SUCCESS within every + grace + stale_timeout of a due slot), and swept (a background worker sweeps this database).';


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

-- runtime_touch buffers a touch of a runtime known online without reading its row
-- (src/runtime/mod.rs). Every statement that may take a row out of 'online' forgets all
-- that knowledge here, after changing the rows and before it commits, so the next touch
-- of an offline runtime reads the row and brings it back online at once. Statement
-- triggers: a row trigger would make every UPDATE of the table (each touch and flush)
-- fetch the old row again for it; the touches name status only when they flip an offline
-- row online, and the flushes never. ENABLE ALWAYS: also under
-- session_replication_role = replica (a restore, a replication apply).
CREATE FUNCTION lease_sched.runtime_left_online()
RETURNS trigger
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'runtime_left_online_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_left_online() IS
    'Trigger: after a statement that may take runtimes out of online (status or id updated, rows deleted, truncated), no runtime is known online to runtime_touch.';
CREATE TRIGGER runtimes_left_online AFTER UPDATE OF status, id ON lease_sched.runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.runtime_left_online();
CREATE TRIGGER runtimes_deleted AFTER DELETE ON lease_sched.runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.runtime_left_online();
CREATE TRIGGER runtimes_truncated AFTER TRUNCATE ON lease_sched.runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.runtime_left_online();
ALTER TABLE lease_sched.runtimes ENABLE ALWAYS TRIGGER runtimes_left_online;
ALTER TABLE lease_sched.runtimes ENABLE ALWAYS TRIGGER runtimes_deleted;
ALTER TABLE lease_sched.runtimes ENABLE ALWAYS TRIGGER runtimes_truncated;

-- lease_try_claim and lock_acquire return one row of a named composite type instead of a
-- set: the executor calls them once per statement, without the set-returning protocol.
-- A function's result type cannot be changed in place, so both are re-created, keeping the
-- grants users made on them (restored below, with job_define's).
SELECT pg_catalog.set_config('lease_sched_upgrade.acl_lease_try_claim', coalesce(p.proacl::pg_catalog.text, ''), true)
  FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) 'lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean)'::pg_catalog.regprocedure;
SELECT pg_catalog.set_config('lease_sched_upgrade.acl_lock_acquire', coalesce(p.proacl::pg_catalog.text, ''), true)
  FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) 'lease_sched.lock_acquire(text, text, interval)'::pg_catalog.regprocedure;
DROP FUNCTION lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean);
DROP FUNCTION lease_sched.lock_acquire(text, text, interval);

-- The claim's one row. A named composite type, not RETURNS TABLE or OUT parameters: the
-- executor then calls the function once per statement, without the set-returning
-- protocol, and finds its result's shape in the type cache instead of rebuilding it from
-- pg_proc for every statement (docs/benchmarks.md, "0.3.0 levers").
CREATE TYPE lease_sched.claim_result AS (
    outcome       text,
    execution_id  uuid,
    lease_token   uuid,
    attempt       int,
    fencing_token bigint,
    stale_after   timestamptz
);
COMMENT ON TYPE lease_sched.claim_result IS 'The row lease_try_claim returns.';

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
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'lease_try_claim_wrapper';
COMMENT ON FUNCTION lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean) IS
    'Claim one scheduled run: won (new row), stole (stale RUNNING lease or due FAILED retry), or conflicted. Always one row.';

-- One row, always: a named composite type, not a set (see lease_sched.claim_result).
CREATE TYPE lease_sched.lock_acquire_result AS (acquired boolean, lock_token uuid, fencing_token bigint, holder text,
                                                expires_at timestamptz);
COMMENT ON TYPE lease_sched.lock_acquire_result IS 'The row lock_acquire returns.';

CREATE FUNCTION lease_sched.lock_acquire(lock_name text, holder text, ttl interval DEFAULT '60 seconds')
RETURNS lease_sched.lock_acquire_result
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_acquire_row_wrapper';
COMMENT ON FUNCTION lease_sched.lock_acquire(text, text, interval) IS
    'Take the lock if free, released or expired. Always one row: acquired with the secret lock_token and a new fencing token, or not acquired with the current holder and its expiry.';

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

-- run(): a defined cron job leaves every to the planner.

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

-- Fences: only a fence given the holder's secret pins the row until its transaction ends;
-- one given only the public fencing token checks it and pins nothing (src/lease/fence.rs).
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
-- Tokens are floored in a template copy of the database too (a new database oid): the new
-- record starts at 0, so the first grant after this update floors once more.
CREATE SEQUENCE lease_sched.token_floor_copy AS bigint MINVALUE -9223372036854775808 START 0 CACHE 1 NO CYCLE;
COMMENT ON SEQUENCE lease_sched.token_floor_copy IS
    'The copy of the database (oid of the database << 32 | oid of fencing_token_seq) in which fencing_token_seq was last floored (0: not yet). A template copy or a restore floors again.';
REVOKE ALL ON lease_sched.token_floor_copy FROM PUBLIC;

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

-- As finalize.sql does for a fresh install.
REVOKE EXECUTE ON FUNCTION lease_sched.job_define(text, interval, text, interval, int, interval, text, text, text, text), lease_sched.job_definition(text, text, text),
    lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean),
    lease_sched.lock_acquire(text, text, interval),
    lease_sched.runtime_left_online(),
    lease_sched.cron_error,
    lease_sched.cron_value,
    lease_sched.cron_field,
    lease_sched.cron_parse,
    lease_sched.cron_check_timezone,
    lease_sched.cron_day_matches,
    lease_sched.cron_next_bit,
    lease_sched.cron_next_wall,
    lease_sched.cron_utc_offset,
    lease_sched.cron_transition,
    lease_sched.cron_next_slot,
    lease_sched.cron_next_runs,
    lease_sched.calendar_next_plan,
    lease_sched.job_trigger_due,
    lease_sched.job_trigger,
    lease_sched.job_next_runs,
    lease_sched.lease_claim_next,
    lease_sched.schedule,
    lease_sched.unschedule
  FROM PUBLIC;
REVOKE ALL ON lease_sched.job_triggers FROM PUBLIC;
GRANT EXECUTE ON FUNCTION lease_sched.cron_next_slot(bigint[], text, timestamptz),
                          lease_sched.cron_next_wall(bigint[], timestamp, boolean),
                          lease_sched.cron_day_matches(bigint[], int, int, int, int),
                          lease_sched.cron_next_bit(bigint, int, int),
                          lease_sched.cron_utc_offset(text, timestamp),
                          lease_sched.cron_transition(text, timestamp, timestamp),
                          lease_sched.cron_parse(text, text),
                          lease_sched.cron_field(text, int, text, text, int),
                          lease_sched.cron_value(text, int, text, text, int),
                          lease_sched.cron_error(text, text, int, text),
                          lease_sched.cron_check_timezone(text, text),
                          lease_sched.cron_next_runs(text, text, int, timestamptz)
   TO PUBLIC;

-- Every function this update re-creates (DROP and CREATE: its arguments or result changed)
-- gets back the grants users made on it, saved from pg_proc before the drop into
-- lease_sched_upgrade.acl_<name>.
DO $acl$
DECLARE
    f       record;
    saved   pg_catalog.text;
    initial pg_catalog.aclitem[];
    g       record;
BEGIN
    FOR f IN SELECT v.setting, v.signature::pg_catalog.regprocedure AS fn
               FROM (VALUES
                   ('job_define', 'lease_sched.job_define(text, interval, text, interval, int, interval, text, text, text, text)'),
                   ('job_definition', 'lease_sched.job_definition(text, text, text)'),
                   ('lease_try_claim', 'lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean)'),
                   ('lock_acquire', 'lease_sched.lock_acquire(text, text, interval)')) AS v(setting, signature) LOOP
        saved := pg_catalog.current_setting('lease_sched_upgrade.acl_' OPERATOR(pg_catalog.||) f.setting);
        SELECT p.proacl INTO initial FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=) f.fn;
        CONTINUE WHEN saved OPERATOR(pg_catalog.=) '';
        FOR g IN SELECT x.grantee, x.is_grantable
                   FROM pg_catalog.aclexplode(saved::pg_catalog.aclitem[]) AS x, pg_catalog.pg_proc p
                  WHERE p.oid OPERATOR(pg_catalog.=) f.fn AND x.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
                    AND x.grantee OPERATOR(pg_catalog.<>) p.proowner LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s%s', f.fn,
                        CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                             ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                        CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        -- A GRANT inside an extension script is recorded as the extension's initial privileges
        -- (and so left out of pg_dump): the initial privileges stay those of a fresh install,
        -- and the users' grants stay theirs.
        UPDATE pg_catalog.pg_init_privs i SET initprivs = initial
         WHERE i.objoid OPERATOR(pg_catalog.=) f.fn AND i.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND i.objsubid OPERATOR(pg_catalog.=) 0;
    END LOOP;
END;
$acl$;
