-- Named single-holder locks with a TTL (leader election).
\set VERBOSITY default
\set SHOW_CONTEXT never

CREATE TEMP TABLE leader AS SELECT * FROM lease_sched.lock_acquire('reports-leader', 'node-1', ttl => '1 minute');
SELECT acquired, holder, lock_token IS NOT NULL AS has_lock_token, fencing_token > 0 AS has_fencing_token,
       expires_at > now() AS expires_later
  FROM leader;

-- While it is held, others are told who holds it and until when; no token.
SELECT acquired, holder, lock_token, fencing_token, expires_at = (SELECT expires_at FROM leader) AS same_expiry
  FROM lease_sched.lock_acquire('reports-leader', 'node-2');

SELECT holder, fencing_token = (SELECT fencing_token FROM leader) AS same_token, expired
  FROM lease_sched.lock_info('reports-leader');

-- Only the secret lock_token keeps it alive or releases it.
SELECT lease_sched.lock_heartbeat('reports-leader', gen_random_uuid()) AS kept;
SELECT lease_sched.lock_heartbeat('reports-leader', lock_token) AS kept FROM leader;
SELECT lease_sched.lock_release('reports-leader', gen_random_uuid()) AS released;
SELECT lease_sched.lock_release('reports-leader', lock_token) AS released FROM leader;
SELECT count(*) AS rows_left FROM lease_sched.lock_info('reports-leader');

-- Released, it goes to the next caller with a higher fencing token.
SELECT acquired, holder, fencing_token > (SELECT fencing_token FROM leader) AS higher_token
  FROM lease_sched.lock_acquire('reports-leader', 'node-2');

-- An expired lock is taken over by the next caller.
SELECT acquired FROM lease_sched.lock_acquire('short', 'node-1', ttl => '1 millisecond');
SELECT pg_sleep(0.01);
SELECT expired FROM lease_sched.lock_info('short');
SELECT acquired, holder FROM lease_sched.lock_acquire('short', 'node-2');
