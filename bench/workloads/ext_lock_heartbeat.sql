-- Case 12 (extension): heartbeat a held lock by name + secret. Client c cycles through its
-- own :per locks, k = c * per + i; their names and lock tokens are 'lock-' || k and
-- md5('l' || k) (bench/fixtures/helpers.sql, bench.ensure_locks). Returns true.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
SELECT lease_sched.lock_heartbeat('lock-' || :k, md5('l' || :k)::uuid);
