-- Case 11 (baseline): the hand-written acquire of a single-holder lock with a TTL, of the
-- same new names as ext_lock_acquire.sql: insert the lock, or take it over when it has
-- expired; a new secret token and a fencing token from the sequence. One round trip. (When
-- a live holder has the lock no row comes back; the extension names that holder instead,
-- which the hand-written version would need a second SELECT for. Never the case here.)
\set n :n + 1
\set k :base + :client_id * 1000000 + :n
INSERT INTO baseline.locks AS l (name, holder, fencing_token, acquired_at, heartbeat_at, expires_at, ttl, lock_token)
VALUES ('free-' || :k, 'runner-' || :client_id, nextval('baseline.fencing_token_seq'), now(), now(),
        now() + interval '1 hour', interval '1 hour', gen_random_uuid())
ON CONFLICT (name) DO UPDATE
   SET holder = excluded.holder, fencing_token = excluded.fencing_token, acquired_at = now(),
       heartbeat_at = now(), expires_at = now() + excluded.ttl, ttl = excluded.ttl,
       lock_token = excluded.lock_token
 WHERE l.expires_at <= now()
RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at;
