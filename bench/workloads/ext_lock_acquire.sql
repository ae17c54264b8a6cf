-- Case 11 (extension): acquire a lock nobody holds -> acquired = true. Every transaction
-- names a new lock: 'free-' || (:base + client * 10^6 + n), with :base unique per pgbench
-- run (-D base=...) and n counting this client's transactions (-D n=0). One round trip.
\set n :n + 1
\set k :base + :client_id * 1000000 + :n
SELECT * FROM lease_sched.lock_acquire('free-' || :k, 'runner-' || :client_id, interval '1 hour');
