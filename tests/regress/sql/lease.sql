-- The lease API as a user calls it: claim a scheduled run exactly once, keep it alive,
-- finish it, retry it. Plan times are fixed instants in the past; lease and fencing
-- tokens and times are random or clock-dependent, so they are shown as facts about
-- them, never as values.
\set VERBOSITY default
\set SHOW_CONTEXT never

-- The first claim of a plan wins: attempt 1, a lease token, a fencing token.
CREATE TEMP TABLE first AS
SELECT * FROM lease_sched.lease_try_claim('nightly-report', '2026-01-01 00:00+00', 'runner-a');
SELECT outcome, attempt, lease_token IS NOT NULL AS has_lease_token, fencing_token > 0 AS has_fencing_token,
       stale_after > now() AS lease_in_future
  FROM first;

-- A second runner asking for the same plan is told who is there, and gets no token.
SELECT outcome, execution_id = (SELECT execution_id FROM first) AS same_execution, lease_token, fencing_token, attempt
  FROM lease_sched.lease_try_claim('nightly-report', '2026-01-01 00:00+00', 'runner-b');

-- Another plan, another scope: independent rows.
SELECT outcome FROM lease_sched.lease_try_claim('nightly-report', '2026-01-02 00:00+00', 'runner-b');
SELECT outcome FROM lease_sched.lease_try_claim('nightly-report', '2026-01-01 00:00+00', 'runner-b',
                                                scope_kind => 'tenant', scope_id => '42');

-- The holder's heartbeat extends the lease; a wrong token extends nothing.
SELECT lease_sched.lease_heartbeat(execution_id, lease_token) AS extended FROM first;
SELECT lease_sched.lease_heartbeat(execution_id, gen_random_uuid()) AS extended FROM first;

-- Finishing FAILED with attempts left schedules a retry (the default backoff), and the
-- retry is not due yet: the plan stays conflicted until next_retry_at.
SELECT lease_sched.lease_finish(execution_id, lease_token, 'FAILED', error_code => 'timeout') AS finished FROM first;
SELECT status, attempt, error_code, next_retry_at > finished_at AS retry_later
  FROM lease_sched.executions WHERE id = (SELECT execution_id FROM first);
SELECT outcome FROM lease_sched.lease_try_claim('nightly-report', '2026-01-01 00:00+00', 'runner-b');

-- A finished lease cannot be finished, or kept alive, again.
SELECT lease_sched.lease_finish(execution_id, lease_token, 'SUCCESS') AS finished_again FROM first;
SELECT lease_sched.lease_heartbeat(execution_id, lease_token) AS extended FROM first;

-- retry_in overrides the backoff; a retry that is due is stolen: attempt 2, new tokens.
CREATE TEMP TABLE second AS
SELECT * FROM lease_sched.lease_try_claim('weekly-export', '2026-01-05 00:00+00', 'runner-a');
SELECT lease_sched.lease_finish(execution_id, lease_token, 'FAILED', retry_in => '0 seconds') FROM second;
CREATE TEMP TABLE retried AS
SELECT * FROM lease_sched.lease_try_claim('weekly-export', '2026-01-05 00:00+00', 'runner-b');
SELECT r.outcome, r.attempt, r.execution_id = s.execution_id AS same_execution,
       r.lease_token <> s.lease_token AS new_lease_token, r.fencing_token > s.fencing_token AS higher_fencing_token
  FROM retried r, second s;
SELECT lease_sched.lease_finish(execution_id, lease_token, 'SUCCESS', result => '{"rows": 3}', rows_affected => 3)
  FROM retried;
SELECT status, attempt, result, rows_affected, next_retry_at FROM lease_sched.executions
 WHERE id = (SELECT execution_id FROM retried);

-- A stale RUNNING lease is stolen from its silent holder (allow_stale_reentry, the
-- default); with allow_stale_reentry => false it stays conflicted.
SELECT outcome FROM lease_sched.lease_try_claim('hourly-sync', '2026-01-06 00:00+00', 'runner-a',
                                                stale_timeout => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT outcome, attempt FROM lease_sched.lease_try_claim('hourly-sync', '2026-01-06 00:00+00', 'runner-b');
SELECT outcome FROM lease_sched.lease_try_claim('hourly-sync', '2026-01-06 01:00+00', 'runner-a',
                                                stale_timeout => '1 millisecond', allow_stale_reentry => false);
SELECT pg_sleep(0.01);
SELECT outcome FROM lease_sched.lease_try_claim('hourly-sync', '2026-01-06 01:00+00', 'runner-b');

-- After max_attempts the run is final: nobody can claim it again.
SELECT outcome FROM lease_sched.lease_try_claim('once', '2026-01-07 00:00+00', 'runner-a', max_attempts => 1);
SELECT lease_sched.lease_finish(id, lease_token, 'FAILED', retry_in => '0 seconds')
  FROM lease_sched.sys_cron_executions WHERE job_name = 'once';
SELECT outcome FROM lease_sched.lease_try_claim('once', '2026-01-07 00:00+00', 'runner-b', max_attempts => 1);

-- The default backoff: base * 2^(attempt-1), saturating at max.
SELECT attempt, lease_sched.retry_backoff(attempt, '10 seconds', '1 hour')
  FROM unnest(ARRAY[1, 2, 3, 9, 2147483647]) AS attempt;
