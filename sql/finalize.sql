-- Runs last: functions are created with EXECUTE for PUBLIC by default; take it back so a
-- role gets the API only through the documented grants.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched FROM PUBLIC;
REVOKE EXECUTE ON ALL PROCEDURES IN SCHEMA lease_sched FROM PUBLIC;
-- Every role may ask whether this database is swept (readers of job_health do).
GRANT EXECUTE ON FUNCTION lease_sched.sweeper_status() TO PUBLIC;
-- Wake the background worker when this CREATE EXTENSION commits; warn now if nothing
-- will sweep this database.
SELECT lease_sched.sys_sweeper_announce();

-- Except the calendar's pure functions: they read and write nothing, and readers of the
-- job_health view (which evaluates calendars) need them. USAGE on the schema still gates them.
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
