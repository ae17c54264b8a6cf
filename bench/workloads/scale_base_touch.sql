-- Case 10 (baseline), runtimes: one UPDATE per beat.
\set k random(1, :nrt)
UPDATE baseline.runtimes SET last_seen_at = now() WHERE id = md5('r' || :k)::uuid;
