-- Runtimes (the processes that run jobs) and their heartbeats. Implemented in Rust
-- (src/api/runtime.rs); see docs/api.md, "Runtimes".

CREATE TABLE lease_sched.runtimes (
    id            uuid        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    name          text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('online', 'offline')),
    last_seen_at  timestamptz NOT NULL,
    registered_at timestamptz NOT NULL,
    metadata      jsonb       NOT NULL DEFAULT '{}'
)
-- Room for the new row version of a touch on the same page (HOT). A flush rewrites most
-- rows of a page at once, so half of each page is kept free (70 % kept only ~2/3 HOT).
WITH (fillfactor = 50);

COMMENT ON TABLE lease_sched.runtimes IS 'Runtimes and when they were last seen; touched by runtime_touch / runtime_touch_batch.';

-- last_seen_at is deliberately in no index: every touch and flush stays a HOT update.
-- The sweep finds online runtimes through this partial index, whose key never changes.
CREATE INDEX runtimes_online_idx ON lease_sched.runtimes (id) WHERE status = 'online';

SELECT pg_catalog.pg_extension_config_dump('lease_sched.runtimes', '');
REVOKE ALL ON lease_sched.runtimes FROM PUBLIC;

-- runtime_touch buffers a touch of a runtime known online without reading its row
-- (src/runtime/mod.rs). Every statement that may take a row out of 'online' forgets all
-- that knowledge here, after changing the rows and before it commits, so the next touch
-- of an offline runtime reads the row and brings it back online at once. Statement
-- triggers: a row trigger would make every UPDATE of the table (each touch and flush)
-- fetch the old row again for it; the touches name status only when they flip an offline
-- row online, and the flushes never. ENABLE ALWAYS: also under
-- session_replication_role = replica (a restore, a replication apply).
CREATE FUNCTION lease_sched.runtime_left_online()
RETURNS trigger
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'runtime_left_online_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_left_online() IS
    'Trigger: after a statement that may take runtimes out of online (status or id updated, rows deleted, truncated), no runtime is known online to runtime_touch.';
CREATE TRIGGER runtimes_left_online AFTER UPDATE OF status, id ON lease_sched.runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.runtime_left_online();
CREATE TRIGGER runtimes_deleted AFTER DELETE ON lease_sched.runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.runtime_left_online();
CREATE TRIGGER runtimes_truncated AFTER TRUNCATE ON lease_sched.runtimes
    FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.runtime_left_online();
ALTER TABLE lease_sched.runtimes ENABLE ALWAYS TRIGGER runtimes_left_online;
ALTER TABLE lease_sched.runtimes ENABLE ALWAYS TRIGGER runtimes_deleted;
ALTER TABLE lease_sched.runtimes ENABLE ALWAYS TRIGGER runtimes_truncated;
-- An installation that follows a dropped one in this database: the old table's runtimes may
-- still be known online in shared memory (this database's sweeper keeps its buffer across
-- DROP EXTENSION, which fires no trigger). Forget them, as every TRUNCATE does; the table
-- is empty.
TRUNCATE lease_sched.runtimes;

CREATE FUNCTION lease_sched.runtime_register(name text, metadata jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'runtime_register_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_register(text, jsonb) IS 'Register a runtime, online now; returns its id.';

-- runtime_touch and runtime_touch_batch pin no search_path (see sql/lease.sql): their
-- statements are schema-qualified (src/runtime/store.rs). runtime_pending runs no SQL
-- and reads no table: it needs neither SECURITY DEFINER nor a search_path.
CREATE FUNCTION lease_sched.runtime_touch(runtime_id uuid)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'runtime_touch_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_touch(uuid) IS
    'A live heartbeat: offline rows flip online at once; online rows are buffered in shared memory. False for an unknown id.';

CREATE FUNCTION lease_sched.runtime_touch_batch(runtime_ids uuid[])
RETURNS uuid[]
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'runtime_touch_batch_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_touch_batch(uuid[]) IS
    'Bump all online runtimes among the ids in one UPDATE; returns the ids not touched (offline or unknown).';

-- An admin function: SECURITY INVOKER (see sweep() in observability.sql).
CREATE FUNCTION lease_sched.runtime_flush()
RETURNS bigint
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'runtime_flush_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_flush() IS 'Write every buffered touch now, in one UPDATE; returns rows written.';

CREATE FUNCTION lease_sched.runtime_pending()
RETURNS bigint
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'runtime_pending_wrapper';
COMMENT ON FUNCTION lease_sched.runtime_pending() IS 'Runtime ids with a touch waiting in the buffer.';
