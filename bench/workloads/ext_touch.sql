-- Case 6 (extension): one runtime heartbeat, buffered in shared memory. :nrt runtimes,
-- picked at random; ids are md5('r' || k) (bench/fixtures/helpers.sql). bench/run.sh calls
-- lease_sched.runtime_flush() after the run and counts its WAL in.
\set k random(1, :nrt)
SELECT lease_sched.runtime_touch(md5('r' || :k)::uuid);
