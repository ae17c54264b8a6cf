-- Job definitions and runtimes (the processes that run jobs).
\set VERBOSITY default
\set SHOW_CONTEXT never

SELECT lease_sched.job_define('cleanup', '1 hour', max_attempts => 5) AS new_definition;
SELECT lease_sched.job_define('cleanup', '2 hours', misfire => 'skip', grace => '10 minutes') AS new_definition;
SELECT * FROM lease_sched.job_definition('cleanup');
SELECT lease_sched.job_pause('cleanup') AS paused, lease_sched.job_pause('cleanup') AS paused_again;
SELECT lease_sched.lease_next_plan('cleanup') AS offered_while_paused;
SELECT job_name, every, misfire, paused FROM lease_sched.job_definitions;
-- Resumed, the slot that fell due while the job was paused is recorded SKIPPED, not run.
SELECT lease_sched.job_resume('cleanup') AS resumed;
SELECT lease_sched.lease_next_plan('cleanup') AS offered_after_resume;
SELECT plan_time = date_bin('2 hours', clock_timestamp(), 'epoch') AS current_slot, status, error_code
  FROM lease_sched.executions WHERE job_name = 'cleanup';

-- Without a pause, the current slot is offered.
SELECT lease_sched.job_define('hourly', '1 hour');
SELECT lease_sched.lease_next_plan('hourly') = date_bin('1 hour', clock_timestamp(), 'epoch') AS current_slot;
SELECT lease_sched.job_drop('cleanup') AS dropped, lease_sched.job_drop('cleanup') AS dropped_again;
SELECT count(*) FROM lease_sched.job_definition('cleanup');

-- A runtime registers once and touches while alive; unknown ids are reported, not errors.
CREATE TEMP TABLE rt AS SELECT lease_sched.runtime_register('worker-1', '{"host": "a"}') AS id;
SELECT lease_sched.runtime_touch(id) AS known FROM rt;
SELECT lease_sched.runtime_touch(gen_random_uuid()) AS known;
SELECT cardinality(lease_sched.runtime_touch_batch(ARRAY[id, '00000000-0000-0000-0000-000000000001'])) AS not_touched
  FROM rt;
SELECT name, status, metadata FROM lease_sched.runtimes WHERE id = (SELECT id FROM rt);
