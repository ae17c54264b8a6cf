-- Case 7 (baseline): the hand-written bulk UPDATE of the same 1000 runtimes.
UPDATE baseline.runtimes SET last_seen_at = now()
 WHERE id = ANY ((SELECT ids FROM bench.batches WHERE client = :client_id)::uuid[]) AND status = 'online';
