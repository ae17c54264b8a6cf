-- Case 10 (extension), runtimes: a touch of one of :nrt runtimes, picked at random.
-- Run open-loop (pgbench --rate) beside scale_ext_heartbeat.sql, weighted so that every
-- runtime beats once per :touch_every seconds on average.
\set k random(1, :nrt)
SELECT lease_sched.runtime_touch(md5('r' || :k)::uuid);
