-- A runner in plain psql: claim the current plan of a job, heartbeat while working,
-- finish. Run:  psql -v job=nightly-report -f examples/runner.sql
-- (a real runner would loop; psql shows each step once.)
\set ON_ERROR_STOP on
\if :{?job}
\else
  \set job example-report
\endif

-- 1. Which plan is due? (NULL: nothing to do now)
SELECT lease_sched.lease_next_plan(job_name => :'job', every => '1 minute') AS plan \gset
\if :{?plan}
\else
  \quit
\endif

-- 2. Claim it. Exactly one runner in the world gets 'won' (or 'stole') for this plan.
SELECT outcome, execution_id, lease_token, fencing_token
  FROM lease_sched.lease_try_claim(job_name => :'job', plan_time => :'plan',
                                   runner_id => 'psql-' || pg_backend_pid(),
                                   stale_timeout => '30 seconds') \gset
\echo claim: :outcome (fencing token :fencing_token)

SELECT :'outcome' IN ('won', 'stole') AS mine \gset
\if :mine
  -- 3. Work, heartbeating well inside stale_timeout. A false heartbeat means the lease
  --    was lost: stop, and do not finish.
  SELECT pg_sleep(0.2);
  SELECT lease_sched.lease_heartbeat(:'execution_id', :'lease_token') AS still_mine \gset
  \echo heartbeat: :still_mine
  -- 4. Finish with the token. false = someone else holds the run now.
  SELECT lease_sched.lease_finish(:'execution_id', :'lease_token', 'SUCCESS',
                                  result => '{"rows": 1}', rows_affected => 1) AS finished \gset
  \echo finished: :finished
\endif
