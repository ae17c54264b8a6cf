-- A grant on a row never carries a token at or below that row's previous token: rows
-- restored from a database whose sequence was further on (sys_cron_executions and locks
-- are in pg_dump's data) carry tokens this database's sequence has not reached. The steal
-- or takeover of such a row moves the sequence above it, and every later grant stays above.
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE TEMP TABLE first AS
SELECT * FROM lease_sched.lease_try_claim('tokens-restored', '2026-05-01 00:00+00', 'runner-a');
-- As restored: a token far ahead of this sequence, and the lease gone stale.
UPDATE lease_sched.sys_cron_executions
   SET fencing_token = fencing_token + 1000000000000, stale_after = now() - interval '1 second'
 WHERE job_name = 'tokens-restored';
CREATE TEMP TABLE restored AS
SELECT fencing_token FROM lease_sched.sys_cron_executions WHERE job_name = 'tokens-restored';
CREATE TEMP TABLE second AS
SELECT * FROM lease_sched.lease_try_claim('tokens-restored', '2026-05-01 00:00+00', 'runner-b');
SELECT s.outcome, s.attempt, s.fencing_token > r.fencing_token AS above_the_restored_token
  FROM second s, restored r;
-- The row as it stands, and the next grant anywhere: above too.
SELECT e.fencing_token = s.fencing_token AS stored, e.stale_after > now() AS live
  FROM lease_sched.sys_cron_executions e, second s WHERE e.job_name = 'tokens-restored';
SELECT c.fencing_token > s.fencing_token AS next_grant_above
  FROM lease_sched.lease_try_claim('tokens-after', '2026-05-01 00:00+00', 'runner-c') c, second s;

-- The same for a lock taken over.
CREATE TEMP TABLE held AS SELECT * FROM lease_sched.lock_acquire('tokens-lock', 'node-a', '1 minute');
UPDATE lease_sched.locks SET fencing_token = fencing_token + 2000000000000, expires_at = now() - interval '1 second'
 WHERE name = 'tokens-lock';
CREATE TEMP TABLE restored_lock AS SELECT fencing_token FROM lease_sched.locks WHERE name = 'tokens-lock';
CREATE TEMP TABLE taken AS SELECT * FROM lease_sched.lock_acquire('tokens-lock', 'node-b', '1 minute');
SELECT t.acquired, t.holder, t.fencing_token > r.fencing_token AS above_the_restored_token,
       (SELECT fencing_token FROM lease_sched.locks WHERE name = 'tokens-lock') = t.fencing_token AS stored
  FROM taken t, restored_lock r;
SELECT a.fencing_token > t.fencing_token AS next_grant_above
  FROM lease_sched.lock_acquire('tokens-lock-2', 'node-c', '1 minute') a, taken t;

SELECT lease_sched.lock_release(name, lock_token) FROM lease_sched.locks WHERE name LIKE 'tokens-lock%' ORDER BY name;
