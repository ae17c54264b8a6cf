-- Case 4 (extension): heartbeat a held lease by id + token. Client c cycles through its
-- own :per leases, k = c * per + i; their ids and tokens are md5('h' || k) and
-- md5('t' || k) (bench/fixtures/helpers.sql), computed inside the statement as on the baseline side.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
SELECT lease_sched.lease_heartbeat(md5('h' || :k)::uuid, md5('t' || :k)::uuid);
