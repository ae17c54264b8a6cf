-- Case 5 (baseline): the same claim (INSERT ... RETURNING; the key is new so no steal
-- UPDATE follows) and the hand-written token-guarded finish. Two round trips.
\set n :n + 1
\set pt :base + :client_id * 1000000 + :n
INSERT INTO baseline.sys_cron_executions AS e (
    job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
    lease_token, fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at, stale_after,
    started_at, updated_at)
VALUES (:job, 'global', '', to_timestamp(:pt), 'RUNNING', 1, 3, 'runner-' || :client_id,
        gen_random_uuid(), nextval('baseline.fencing_token_seq'), true, interval '5 minutes', now(),
        now() + interval '5 minutes', now(), now())
ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING
RETURNING id, lease_token \gset
UPDATE baseline.sys_cron_executions
   SET status = 'SUCCESS', finished_at = now(),
       duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,
       rows_affected = 1, updated_at = now()
 WHERE id = :id AND lease_token = :lease_token AND status = 'RUNNING';
