-- Case 7 (extension): touch 1000 runtimes in one call. Client c sends its own ids
-- (bench.batches, filled by bench/run.sh: runtimes c*1000+1 .. c*1000+1000); the array is
-- read in the same statement, as on the baseline side.
SELECT lease_sched.runtime_touch_batch(ids) FROM bench.batches WHERE client = :client_id;
