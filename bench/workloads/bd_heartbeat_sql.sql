-- Breakdown (single client): the UPDATE lease_heartbeat runs (store::HEARTBEAT), sent
-- directly as superuser on the extension's table, same leases as ext_heartbeat.sql.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
UPDATE lease_sched.sys_cron_executions
   SET heartbeat_at = clock_timestamp(), stale_after = clock_timestamp() + stale_timeout,
       updated_at = clock_timestamp()
 WHERE id = md5('h' || :k)::uuid AND lease_token = md5('t' || :k)::uuid AND status = 'RUNNING';
