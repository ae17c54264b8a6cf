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
