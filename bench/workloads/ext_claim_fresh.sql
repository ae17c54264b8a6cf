-- Case 1 (extension): claim a run nobody has claimed before -> outcome 'won'.
-- Every transaction claims a new key: plan_time = to_timestamp(:base + client * 10^6 + n),
-- with :base unique per pgbench run (-D base=...) and n counting this client's
-- transactions (-D n=0). One round trip.
-- Also case 9 (claim cost at each history size), with -D job=history-claim.
\set n :n + 1
\set pt :base + :client_id * 1000000 + :n
SELECT * FROM lease_sched.lease_try_claim(:job, to_timestamp(:pt), 'runner-' || :client_id,
                                          'global', '', interval '5 minutes', 3, true);
