-- Case 10 (baseline), leases: the hand-written heartbeat.
\set k random(1, :nleases)
UPDATE baseline.sys_cron_executions
   SET heartbeat_at = now(), stale_after = now() + interval '5 minutes', updated_at = now()
 WHERE id = md5('h' || :k)::uuid AND lease_token = md5('t' || :k)::uuid AND status = 'RUNNING';
