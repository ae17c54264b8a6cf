-- Case 6 (baseline): one UPDATE per runtime heartbeat (last_seen_at is indexed).
\set k random(1, :nrt)
UPDATE baseline.runtimes SET last_seen_at = now() WHERE id = md5('r' || :k)::uuid;
