-- Breakdown (single client): the bare cost of calling a lease_sched function -- a pgrx
-- wrapper, SECURITY DEFINER with SET search_path -- whose body does almost nothing
-- (reads one counter under a shared lock; no SQL).
SELECT lease_sched.runtime_pending();
