-- Arguments that passed a check of their total and then broke things: intervals whose parts
-- have opposite signs (PostgreSQL compares an interval's total but adds it part by part),
-- months, infinity; an `every` override under a second on a defined job; an unbounded
-- error_code. Each is refused with 22023 naming the argument (or, for error_code, cut), and
-- nothing accepted makes a view or a later call fail.
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE TEMP TABLE before AS SELECT count(*) AS executions FROM lease_sched.sys_cron_executions;
SELECT lease_sched.job_define('bounds-defined', '1 hour');

SELECT regress.error_of(statement) FROM (VALUES
    -- one day in total, but 106751992 days first: far past the end of the timestamp range
    ($s$SELECT lease_sched.job_define('bounds', '1 hour', stale_timeout => '106751992 days -2562047784 hours')$s$),
    ($s$SELECT lease_sched.job_define('bounds', '106751992 days -2562047784 hours')$s$),
    ($s$SELECT lease_sched.job_define('bounds', '1 hour', grace => '2 days -1 hour')$s$),
    ($s$SELECT lease_sched.job_define('bounds', '1 hour', stale_timeout => '1 month')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('bounds', '2026-01-01', 'r', stale_timeout => '106751992 days -2562047784 hours')$s$),
    -- +2 days in total, but a year back first: the lease would be born expired
    ($s$SELECT * FROM lease_sched.lease_try_claim('bounds', '2026-01-01', 'r', stale_timeout => '-12 months 362 days')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('bounds', '2026-01-01', 'r', stale_timeout => '1 day -1 hour')$s$),
    ($s$SELECT * FROM lease_sched.lock_acquire('bounds', 'h', ttl => '-12 months 362 days')$s$),
    ($s$SELECT * FROM lease_sched.lock_acquire('bounds', 'h', ttl => '1 day -1 hour')$s$),
    ($s$SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), 'FAILED', retry_in => '2 days -1 hour')$s$),
    ($s$SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), 'FAILED', retry_in => '1 month')$s$),
    ($s$SELECT lease_sched.lease_next_plan('bounds', '1 day -1 hour')$s$),
    ($s$SELECT lease_sched.retry_backoff(1, '1 month', '1 day')$s$),
    ($s$CALL lease_sched.run('bounds', 'SELECT 1', every => '1 day -1 hour')$s$),
    ($s$CALL lease_sched.run('bounds', 'SELECT 1', every => '1 hour', stale_timeout => '-12 months 362 days')$s$),
    -- an every override under a second on a defined job (job_define refuses it too)
    ($s$CALL lease_sched.run('bounds-defined', 'SELECT 1', every => '1 millisecond')$s$),
    ($s$SELECT lease_sched.lease_next_plan('bounds-defined', '1 millisecond')$s$)
) AS bad(statement);

-- Infinite intervals (PostgreSQL 17+; earlier majors cannot even parse them): refused with
-- a class-22 error either way.
SELECT left(regress.error_of($s$SELECT * FROM lease_sched.lock_acquire('bounds', 'h', ttl => 'infinity')$s$), 2) AS class,
       left(regress.error_of($s$SELECT lease_sched.job_define('bounds', 'infinity')$s$), 2) AS class;

SELECT count(*) - (SELECT executions FROM before) AS executions_written FROM lease_sched.sys_cron_executions;
SELECT job_name FROM lease_sched.job_definitions WHERE job_name LIKE 'bounds%' ORDER BY 1;

-- What is accepted works to the end: days and time of one sign, each added as given.
SELECT lease_sched.job_define('bounds', '1 day 1 hour', grace => '1 hour 30 minutes', stale_timeout => '1 day 2 hours');
SELECT job_name, every, success_due_by IS NOT NULL AS due_by_computed, overdue
  FROM lease_sched.job_health WHERE job_name LIKE 'bounds%' ORDER BY 1;
SELECT outcome, stale_after > now() + interval '1 day 1 hour 59 minutes' AS lasts_1_day_2_hours
  FROM lease_sched.lease_try_claim('bounds', '2026-01-01', 'r', stale_timeout => '1 day 2 hours');
SELECT acquired, expires_at > now() + interval '1 day 59 minutes' AS lasts_1_day_1_hour
  FROM lease_sched.lock_acquire('bounds', 'h', ttl => '1 day 1 hour');

-- error_code is cut to 200 characters, like error_msg to 4000: a finish is never refused
-- for its error text (that would leave the run RUNNING).
SELECT lease_sched.lease_finish(execution_id, lease_token, 'FAILED', error_code => repeat('x', 5000000),
                                error_msg => repeat('y', 5000000))
  FROM lease_sched.lease_try_claim('bounds-error', '2026-01-01', 'r');
SELECT status, length(error_code) AS error_code_chars, length(error_msg) AS error_msg_chars
  FROM lease_sched.executions WHERE job_name = 'bounds-error';

SELECT lease_sched.job_drop('bounds'), lease_sched.job_drop('bounds-defined');
SELECT lease_sched.lock_release('bounds', lock_token) FROM lease_sched.locks WHERE name = 'bounds';
