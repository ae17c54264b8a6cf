-- Calendars: the cron grammar, its errors, and the daylight-saving rules at real
-- transitions (docs/api.md, "Calendars"). Every example starts from a fixed instant.
\set VERBOSITY default
\set SHOW_CONTEXT never
SET timezone = 'UTC';

-- The 5-field form: lists, ranges, steps, names.
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('*/20 9-10 * * mon-fri', 'UTC', 5, '2024-06-07 09:30+00');
SELECT local_time FROM lease_sched.cron_next_runs('0 0 1,15 jan,jul *', 'UTC', 4, '2024-01-01 00:00+00');
-- The 6-field form: seconds first.
SELECT local_time FROM lease_sched.cron_next_runs('*/15 0 12 * * *', 'UTC', 5, '2024-06-01 00:00+00');
-- Shorthands.
SELECT e, (SELECT array_agg(local_time) FROM lease_sched.cron_next_runs(e, 'UTC', 2, '2024-02-28 12:34+00')) AS next
  FROM unnest(ARRAY['@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly']) AS e;
-- L: the last day of the month; 5L: the last Friday; LW: the last weekday; 15W: the weekday
-- nearest the 15th (never in another month); 1W on a Saturday is Monday the 3rd.
SELECT local_time FROM lease_sched.cron_next_runs('0 18 L * ?', 'UTC', 3, '2024-01-15 00:00+00');
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 18 ? * 5L', 'UTC', 3, '2024-01-01 00:00+00');
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 18 LW * ?', 'UTC', 3, '2024-03-01 00:00+00');
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 9 15W * ?', 'UTC', 3, '2024-06-01 00:00+00');
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 9 1W * ?', 'UTC', 1, '2024-06-01 00:00+00');
-- #: the second Tuesday of the month; the fifth Monday exists only in some months.
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 9 ? * TUE#2', 'UTC', 3, '2024-01-01 00:00+00');
SELECT local_time FROM lease_sched.cron_next_runs('0 9 * * 1#5', 'UTC', 3, '2024-01-01 00:00+00');
-- Vixie cron: with both day fields restricted, a day matching either runs (the 13th, or a
-- Friday); with one of them * (even */2), only the other decides.
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 0 13 * 5', 'UTC', 4, '2024-10-01 00:00+00');
SELECT local_time, to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 0 */10 * 5', 'UTC', 3, '2024-09-01 00:00+00');
-- Sunday is 0 or 7; a range may end at 7.
SELECT to_char(local_time, 'Dy') AS dow FROM lease_sched.cron_next_runs('0 0 * * 5-7', 'UTC', 4, '2024-09-01 00:00+00');
-- 29 February comes every four years (and not in 2100).
SELECT local_time FROM lease_sched.cron_next_runs('0 0 29 2 *', 'UTC', 3, '2097-01-01 00:00+00');
-- Strictly after `after`, and `after` may be between seconds.
SELECT local_time FROM lease_sched.cron_next_runs('0 * * * *', 'UTC', 2, '2024-01-01 10:00+00');
SELECT local_time FROM lease_sched.cron_next_runs('* * * * * *', 'UTC', 2, '2024-01-01 10:00:00.5+00');

-- Bad expressions and zones: 22023 naming the argument and the position.
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('61 * * * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 25 * * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 * * * * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('*/0 * * * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 * foo *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 5-3 * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 1,,2 * *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 * * MON#6')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 30 2 *')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('@fortnightly')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs(NULL)$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 * * *', 'Mars/Olympus_Mons')$$);
SELECT regress.error_of($$SELECT lease_sched.cron_next_runs('0 0 * * *', 'UTC', 0)$$);
-- The error shows where: DETAIL has the expression and a caret.
SELECT lease_sched.cron_next_runs('0 0 1-40 * *');

-- Daylight saving. Europe/Berlin springs forward on 2024-03-31 at 02:00 CET (to 03:00 CEST)
-- and falls back on 2024-10-27 at 03:00 CEST (to 02:00 CET).
-- A daily 02:30 slot does not exist on 31 March: it runs at the instant of the jump
-- (03:00 CEST); on 27 October 02:30 exists twice: it runs once, at the first (CEST).
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 2 * * *', 'Europe/Berlin', 3, '2024-03-29 12:00+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 2 * * *', 'Europe/Berlin', 3, '2024-10-25 12:00+00');
-- A slot at 02:00 and one at 03:00 both fall on the jump: one run for both.
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('0 2,3 * * *', 'Europe/Berlin', 3, '2024-03-30 12:00+00');
-- A wildcard job (minute or hour starts with *) follows elapsed time: every 30 minutes
-- through both transitions, the repeated hour included.
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('*/30 * * * *', 'Europe/Berlin', 4, '2024-03-31 00:15+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('*/30 * * * *', 'Europe/Berlin', 6, '2024-10-26 23:45+00');
-- Hourly at minute 0 with the hour a step: 02:00 does not exist, so that slot runs at 03:00.
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('0 */2 * * *', 'Europe/Berlin', 3, '2024-03-30 23:30+00');
-- America/New_York: 2024-03-10 02:00 EST -> 03:00 EDT; 2024-11-03 02:00 EDT -> 01:00 EST.
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('15 2 * * *', 'America/New_York', 2, '2024-03-09 12:00+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 1 * * *', 'America/New_York', 2, '2024-11-02 12:00+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('0,30 * * * *', 'America/New_York', 5, '2024-11-03 04:45+00');
-- After the first 01:30 (EDT) of 3 November, a fixed 01:30 job's next run is the next day:
-- the second 01:30 (EST) is the same wall-clock slot.
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 1 * * *', 'America/New_York', 1, '2024-11-03 05:30+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 1 * * *', 'America/New_York', 1, '2024-11-03 06:10+00');
-- Australia/Lord_Howe shifts by 30 minutes: 2024-10-06 02:00 -> 02:30 (+10:30 -> +11), and
-- 2024-04-07 02:00 -> 01:30 (+11 -> +10:30).
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('15 2 * * *', 'Australia/Lord_Howe', 2, '2024-10-05 00:00+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('*/15 * * * *', 'Australia/Lord_Howe', 5, '2024-10-05 15:10+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('45 1 * * *', 'Australia/Lord_Howe', 2, '2024-04-06 00:00+00');
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('*/15 * * * *', 'Australia/Lord_Howe', 6, '2024-04-06 14:10+00');
-- A zone whose offset changed in its history: Pacific/Apia moved across the date line and
-- skipped 30 December 2011 altogether (-10 -> +14). The daily noon slot of that day runs
-- at the jump (31 December 00:00).
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('0 12 * * *', 'Pacific/Apia', 3, '2011-12-28 23:00+00');
-- Europe/Moscow went from +04 to +03 for good on 2014-10-26 at 02:00 (01:00-02:00 repeated).
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 1 * * *', 'Europe/Moscow', 2, '2014-10-25 00:00+00');
-- Rare slots are found without walking minute by minute: the fifth Monday of February
-- (next in 2044); with both day fields restricted, 29 February or any Monday of February.
SELECT plan_time FROM lease_sched.cron_next_runs('0 0 ? 2 MON#5', 'UTC', 1, '2024-03-01 00:00+00');
SELECT plan_time FROM lease_sched.cron_next_runs('0 0 29 2 mon', 'UTC', 2, '2024-03-01 00:00+00');
-- The session's TimeZone changes nothing but how results are shown.
SET timezone = 'Asia/Kolkata';
SELECT plan_time, local_time FROM lease_sched.cron_next_runs('30 2 * * *', 'Europe/Berlin', 2, '2024-03-30 12:00+00');
SET timezone = 'UTC';

-- A job on a calendar. Exactly one of every and cron.
SELECT regress.error_of($$SELECT lease_sched.job_define('nightly', every => '1 day', cron => '0 3 * * *')$$);
SELECT regress.error_of($$SELECT lease_sched.job_define('nightly')$$);
SELECT regress.error_of($$SELECT lease_sched.job_define('nightly', cron => '0 3 32 * *')$$);
SELECT regress.error_of($$SELECT lease_sched.job_define('nightly', cron => '0 3 * * *', timezone => 'Europe/Berlinn')$$);
SELECT count(*) AS nothing_written FROM lease_sched.job_definitions WHERE job_name = 'nightly';
-- (Asia/Tokyo: no daylight saving, so this output is the same on every day of the year.)
SELECT lease_sched.job_define('nightly', cron => '0 3 * * *', timezone => 'Asia/Tokyo', misfire => 'all') AS new_definition;
SELECT every, misfire, cron, timezone FROM lease_sched.job_definition('nightly');
SELECT count(*) AS slots, bool_and(to_char(local_time, 'HH24:MI') = '03:00') AS at_three_in_tokyo
  FROM lease_sched.job_next_runs('nightly', 5);
-- An explicit every is refused for it.
SELECT regress.error_of($$SELECT lease_sched.lease_next_plan('nightly', every => '1 hour')$$);
-- Its plans come from the calendar, on the database clock: with the definition made three
-- days ago, the three missed 03:00 slots run oldest first (misfire 'all'), one per plan.
UPDATE lease_sched.jobs SET created_at = clock_timestamp() - interval '3 days' WHERE job_name = 'nightly';
CREATE TEMP TABLE nightly_runs AS
SELECT c.outcome, c.plan_time FROM lease_sched.lease_claim_next('nightly', 'runner-1') c;
SELECT outcome, timezone('Asia/Tokyo', plan_time)::time AS local_time FROM nightly_runs;
-- While that run holds its lease, nothing else is due (no overlap).
SELECT outcome, plan_time FROM lease_sched.lease_claim_next('nightly', 'runner-2');
SELECT lease_sched.lease_finish(e.id, e.lease_token, 'SUCCESS')
  FROM lease_sched.sys_cron_executions e WHERE e.job_name = 'nightly' AND e.status = 'RUNNING';
SELECT (lease_sched.lease_next_plan('nightly') - plan_time) AS next_after_first FROM nightly_runs;
-- misfire 'skip': the missed slots are recorded SKIPPED, the current one runs.
SELECT lease_sched.job_define('nightly', cron => '0 3 * * *', timezone => 'Asia/Tokyo', misfire => 'skip');
SELECT lease_sched.lease_next_plan('nightly') = n.plan_time - interval '1 day' AS current_slot_offered
  FROM lease_sched.job_next_runs('nightly', 1) n;
SELECT status, error_code, count(*) FROM lease_sched.executions WHERE job_name = 'nightly' GROUP BY 1, 2 ORDER BY 1, 2;

-- Run now: one extra plan, taken first, that shifts no slot.
SELECT lease_sched.job_define('weekly', cron => '0 6 * * mon', timezone => 'America/New_York');
SELECT lease_sched.job_trigger('weekly') IS NOT NULL AS triggered;
SELECT c.outcome, c.plan_time = t.plan_time AS the_triggered_plan
  FROM lease_sched.lease_claim_next('weekly', 'runner-1') c, lease_sched.job_triggers t WHERE t.job_name = 'weekly';
SELECT outcome FROM lease_sched.lease_claim_next('weekly', 'runner-1');
SELECT regress.error_of($$SELECT lease_sched.job_trigger('no such job')$$);
SELECT regress.error_of($$SELECT * FROM lease_sched.lease_claim_next('no such job', 'runner-1')$$);
SELECT regress.error_of($$SELECT * FROM lease_sched.job_next_runs('no such job')$$);

-- job_health for a cron job: due by its next slot + grace + stale_timeout.
SELECT job_name, cron, timezone, overdue FROM lease_sched.job_health WHERE job_name IN ('nightly', 'weekly') ORDER BY 1;
SELECT lease_sched.job_drop('nightly'), lease_sched.job_drop('weekly');
