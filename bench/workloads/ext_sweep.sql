-- Case 8 (extension): one sweep on demand (what the background worker runs every
-- lease_sched.sweep_interval), timed at each history size.
SELECT * FROM lease_sched.sweep();
