-- Fences: a write on behalf of a lease or lock passes only while it is still held.
-- Refusals are SQLSTATE LS001 (shown through regress.error_of, setup.sql).
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE TEMP TABLE run AS
SELECT * FROM lease_sched.lease_try_claim('fenced-job', '2026-02-01 00:00+00', 'runner-a');

BEGIN;
SELECT lease_sched.lease_fence(execution_id, fencing_token) FROM run;
SELECT lease_sched.lease_fence(execution_id, fencing_token, lease_token) FROM run;
COMMIT;

-- An old token, a wrong secret, a finished run: refused.
SELECT regress.error_of(format('SELECT lease_sched.lease_fence(%L, %s)', execution_id, fencing_token - 1)) FROM run;
SELECT regress.error_of(format('SELECT lease_sched.lease_fence(%L, %s, %L)', execution_id, fencing_token, gen_random_uuid()))
  FROM run;
SELECT lease_sched.lease_finish(execution_id, lease_token, 'SUCCESS') FROM run;
SELECT regress.error_of(format('SELECT lease_sched.lease_fence(%L, %s)', execution_id, fencing_token)) FROM run;

-- A table only the current holder of a lock may write.
CREATE TABLE leader_writes (v int);
CREATE TRIGGER leader_only BEFORE INSERT OR UPDATE OR DELETE ON leader_writes
    FOR EACH ROW EXECUTE FUNCTION lease_sched.require_lock('writer');
CREATE TEMP TABLE writer AS SELECT * FROM lease_sched.lock_acquire('writer', 'node-1');
INSERT INTO leader_writes VALUES (1);
BEGIN;
SELECT lease_sched.lock_fence('writer', fencing_token) FROM writer;
INSERT INTO leader_writes VALUES (2);
COMMIT;
-- The fence lasts one transaction.
INSERT INTO leader_writes VALUES (3);
-- A rolled-back savepoint takes its fence with it.
BEGIN;
SAVEPOINT s;
SELECT lease_sched.lock_fence('writer', fencing_token) FROM writer;
ROLLBACK TO SAVEPOINT s;
INSERT INTO leader_writes VALUES (4);
ROLLBACK;
SELECT v FROM leader_writes ORDER BY v;
DROP TABLE leader_writes;
