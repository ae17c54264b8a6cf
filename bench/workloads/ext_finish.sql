-- Case 5 (extension): claim a new run, then finish it SUCCESS with the token the claim
-- returned. Two round trips, each its own transaction, as a runner does (the claim must
-- commit before the job runs). Keys as in ext_claim_fresh.sql.
\set n :n + 1
\set pt :base + :client_id * 1000000 + :n
SELECT execution_id, lease_token FROM lease_sched.lease_try_claim(:job, to_timestamp(:pt),
    'runner-' || :client_id, 'global', '', interval '5 minutes', 3, true) \gset
SELECT lease_sched.lease_finish(:execution_id, :lease_token, 'SUCCESS', NULL, 1);
