-- Case 14 (extension): a fence check with the holder's secret on a held lock, inside the
-- writer's transaction (the write left out). The locks of case 12: name 'lock-' || k, lock
-- token md5('l' || k), fencing token 10^12 + k (bench.ensure_locks).
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
\set ft 1000000000000 + :k
BEGIN;
SELECT lease_sched.lock_fence('lock-' || :k, :ft, md5('l' || :k)::uuid);
COMMIT;
