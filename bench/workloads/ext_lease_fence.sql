-- Case 13 (extension): a fence check with the holder's secret, inside the writer's
-- transaction (the write itself left out: it is the same on both sides). Client c cycles
-- through its own :per RUNNING leases, k = c * per + i: id md5('f' || k), lease token
-- md5('g' || k), fencing token 10^12 + k (bench.ensure_leases, bench.set_fencing_tokens).
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
\set ft 1000000000000 + :k
BEGIN;
SELECT lease_sched.lease_fence(md5('f' || :k)::uuid, :ft, md5('g' || :k)::uuid);
COMMIT;
