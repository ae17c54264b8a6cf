-- Case 3 (baseline): the same steal by hand: the INSERT conflicts, the UPDATE takes the
-- stale lease over. Two round trips.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
\set won 0
INSERT INTO baseline.sys_cron_executions AS e (
    job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
    lease_token, fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at, stale_after,
    started_at, updated_at)
VALUES ('steal-' || :k, 'global', '', to_timestamp(:k), 'RUNNING', 1, 2147483647, 'runner-' || :client_id,
        gen_random_uuid(), nextval('baseline.fencing_token_seq'), true, interval '1 millisecond', now(),
        now() + interval '1 millisecond', now(), now())
ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING
RETURNING id, lease_token, attempt, fencing_token, stale_after, 1 AS won \aset
\if :won = 0
UPDATE baseline.sys_cron_executions
   SET status = 'RUNNING', attempt = attempt + 1, runner_id = 'runner-' || :client_id,
       lease_token = gen_random_uuid(), fencing_token = nextval('baseline.fencing_token_seq'),
       allow_stale_reentry = true, stale_timeout = interval '1 millisecond', heartbeat_at = now(),
       stale_after = now() + interval '1 millisecond', started_at = now(), finished_at = NULL,
       duration_ms = NULL, next_retry_at = NULL, error_code = NULL, error_msg = NULL,
       rows_affected = NULL, result = NULL, updated_at = now()
 WHERE job_name = 'steal-' || :k AND scope_kind = 'global' AND scope_id = '' AND plan_time = to_timestamp(:k)
   AND attempt < max_attempts
   AND ((status = 'FAILED' AND coalesce(next_retry_at, now()) <= now())
     OR (status = 'RUNNING' AND stale_after < now() AND true))
RETURNING id, lease_token, attempt, fencing_token, stale_after;
\endif
