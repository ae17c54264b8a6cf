-- Case 10 (extension), leases: a heartbeat of one of :nleases held leases, at random.
\set k random(1, :nleases)
SELECT lease_sched.lease_heartbeat(md5('h' || :k)::uuid, md5('t' || :k)::uuid);
