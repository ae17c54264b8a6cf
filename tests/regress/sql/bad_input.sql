-- Every bad argument is an error that names the argument: SQLSTATE 22004 for a NULL,
-- 22023 for any other bad value; and it writes nothing. Each statement runs through
-- regress.error_of() (setup.sql), which shows the SQLSTATE, message and hint a client gets, one row per
-- statement in the order listed.
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE TEMP TABLE before AS SELECT count(*) AS executions FROM lease_sched.sys_cron_executions;

SELECT regress.error_of(statement) FROM (VALUES
    ($s$SELECT * FROM lease_sched.lease_try_claim(NULL, '2026-01-01', 'r')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('', '2026-01-01', 'r')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', NULL, 'r')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', 'infinity', 'r')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', '2026-01-01', NULL)$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', '2026-01-01', 'r', stale_timeout => '0 seconds')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', '2026-01-01', 'r', stale_timeout => '-1 second')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', '2026-01-01', 'r', stale_timeout => '367 days')$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', '2026-01-01', 'r', max_attempts => 0)$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim('j', '2026-01-01', 'r', scope_kind => NULL)$s$),
    ($s$SELECT * FROM lease_sched.lease_try_claim(repeat('x', 1000), '2026-01-01', 'r')$s$),
    ($s$SELECT lease_sched.lease_heartbeat(NULL, gen_random_uuid())$s$),
    ($s$SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), 'DONE')$s$),
    ($s$SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), NULL)$s$),
    ($s$SELECT lease_sched.lease_finish(gen_random_uuid(), gen_random_uuid(), 'FAILED', retry_in => '-1 second')$s$),
    ($s$SELECT lease_sched.lease_next_plan('j', '1 month')$s$),
    ($s$SELECT lease_sched.lease_next_plan('j', '0 seconds')$s$),
    ($s$SELECT lease_sched.lease_next_plan('j')$s$),
    ($s$SELECT * FROM lease_sched.lock_acquire('l', 'me', ttl => '0 seconds')$s$),
    ($s$SELECT * FROM lease_sched.lock_acquire(NULL, 'me')$s$),
    ($s$SELECT lease_sched.runtime_touch(NULL)$s$),
    ($s$SELECT lease_sched.runtime_touch_batch(ARRAY[NULL]::uuid[])$s$),
    ($s$SELECT lease_sched.job_define('j', '1 hour', misfire => 'sometimes')$s$)
) AS bad(statement);

SELECT count(*) - (SELECT executions FROM before) AS executions_written FROM lease_sched.sys_cron_executions;
