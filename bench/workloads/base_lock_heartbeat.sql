-- Case 12 (baseline): the hand-written token-guarded heartbeat of the same locks.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
UPDATE baseline.locks SET heartbeat_at = now(), expires_at = now() + ttl
 WHERE name = 'lock-' || :k AND lock_token = md5('l' || :k)::uuid;
