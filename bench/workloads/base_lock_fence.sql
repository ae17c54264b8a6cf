-- Case 14 (baseline): the hand-written fence of the same locks: the row still carries the
-- token and the secret, locked FOR KEY SHARE until the transaction ends (a takeover's
-- UPDATE waits for it). \gset fails the transaction when no row comes back.
\set n :n + 1
\set k :client_id * :per + (:n % :per) + 1
\set ft 1000000000000 + :k
BEGIN;
SELECT 1 AS fenced FROM baseline.locks
 WHERE name = 'lock-' || :k AND fencing_token = :ft AND lock_token = md5('l' || :k)::uuid
   FOR KEY SHARE \gset
COMMIT;
