-- Case 1 (baseline): the hand-written claim of a new key. The INSERT returns the row, so
-- the application never sends the steal UPDATE: one round trip, like the extension.
-- (Same keys as ext_claim_fresh.sql; the full two-step claim is in base_claim_contended.sql.)
\set n :n + 1
\set pt :base + :client_id * 1000000 + :n
\set won 0
INSERT INTO baseline.sys_cron_executions AS e (
    job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
    lease_token, fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at, stale_after,
    started_at, updated_at)
VALUES (:job, 'global', '', to_timestamp(:pt), 'RUNNING', 1, 3, 'runner-' || :client_id,
        gen_random_uuid(), nextval('baseline.fencing_token_seq'), true, interval '5 minutes', now(),
        now() + interval '5 minutes', now(), now())
ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING
RETURNING id, lease_token, attempt, fencing_token, stale_after, 1 AS won \aset
-- No row came back: the key exists, try to take it over (retry of a FAILED run whose
-- backoff has passed, or a stale RUNNING lease). Never reached for fresh keys.
\if :won = 0
UPDATE baseline.sys_cron_executions
   SET status = 'RUNNING', attempt = attempt + 1, runner_id = 'runner-' || :client_id,
       lease_token = gen_random_uuid(), fencing_token = nextval('baseline.fencing_token_seq'),
       allow_stale_reentry = true, stale_timeout = interval '5 minutes', heartbeat_at = now(),
       stale_after = now() + interval '5 minutes', started_at = now(), finished_at = NULL,
       duration_ms = NULL, next_retry_at = NULL, error_code = NULL, error_msg = NULL,
       rows_affected = NULL, result = NULL, updated_at = now()
 WHERE job_name = :job AND scope_kind = 'global' AND scope_id = '' AND plan_time = to_timestamp(:pt)
   AND attempt < max_attempts
   AND ((status = 'FAILED' AND coalesce(next_retry_at, now()) <= now())
     OR (status = 'RUNNING' AND stale_after < now() AND true))
RETURNING id, lease_token, attempt, fencing_token, stale_after;
\endif
