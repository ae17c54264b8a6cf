-- Case 13 (baseline): the hand-written fence of the same leases: the row still carries the
-- token and the secret and is RUNNING, locked FOR KEY SHARE until the transaction ends (a
-- steal's UPDATE waits for it). \gset fails the transaction when no row comes back, as
-- the application would.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
\set ft 1000000000000 + :k
BEGIN;
SELECT 1 AS fenced FROM baseline.sys_cron_executions
 WHERE id = md5('f' || :k)::uuid AND fencing_token = :ft AND lease_token = md5('g' || :k)::uuid
   AND status = 'RUNNING'
   FOR KEY SHARE \gset
COMMIT;
