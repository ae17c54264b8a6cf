-- Breakdown (single client): the one SQL statement runtime_touch runs (store::STATUS),
-- sent directly as superuser; the rest of a buffered touch is a shared-memory insert.
\set k random(1, :nrt)
SELECT status FROM lease_sched.runtimes WHERE id = md5('r' || :k)::uuid;
