-- Case 3 (extension): take over a stale lease -> outcome 'stole'.
-- Client c cycles through its own :per leases (plan_time = to_timestamp(c * per + i)),
-- all made stale by bench/run.sh before the run. The steal asks for a 1 ms stale_timeout,
-- so by the time the client comes back to the same lease (:per transactions later) it is
-- stale again; max_attempts was set to 2^31-1 when the rows were created.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
SELECT * FROM lease_sched.lease_try_claim('steal-' || :k, to_timestamp(:k), 'runner-' || :client_id,
                                          'global', '', interval '1 millisecond', 2147483647, true);
