-- Case 4 (baseline): the hand-written token-guarded heartbeat of the same leases.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
UPDATE baseline.sys_cron_executions
   SET heartbeat_at = now(), stale_after = now() + interval '5 minutes', updated_at = now()
 WHERE id = md5('h' || :k)::uuid AND lease_token = md5('t' || :k)::uuid AND status = 'RUNNING';
