-- Named single-holder locks with a TTL (leader election), seed 001. Implemented in Rust
-- (src/api/lock.rs). Unlike advisory locks they are rows: they survive reconnects and
-- work through transaction-pooling connection poolers.

CREATE TABLE lease_sched.locks (
    name          text        NOT NULL PRIMARY KEY CHECK (name <> ''),
    holder        text        NOT NULL,
    fencing_token bigint      NOT NULL,
    acquired_at   timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    ttl           interval    NOT NULL CHECK (ttl > interval '0')
) WITH (fillfactor = 70);

COMMENT ON TABLE lease_sched.locks IS 'Held (or expired, not yet taken over) named locks; a released lock has no row.';

SELECT pg_catalog.pg_extension_config_dump('lease_sched.locks', '');
REVOKE ALL ON lease_sched.locks FROM PUBLIC;

CREATE FUNCTION lease_sched.lock_acquire(lock_name text, holder text, ttl interval DEFAULT '60 seconds')
RETURNS bigint
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_acquire_wrapper';
COMMENT ON FUNCTION lease_sched.lock_acquire(text, text, interval) IS
    'Take the lock if free, released or expired: returns a new fencing token, or NULL while a live holder (any holder) has it.';

CREATE FUNCTION lease_sched.lock_heartbeat(lock_name text, fencing_token bigint)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_heartbeat_wrapper';
COMMENT ON FUNCTION lease_sched.lock_heartbeat(text, bigint) IS 'Extend the lock by its ttl; false unless that token holds it.';

CREATE FUNCTION lease_sched.lock_release(lock_name text, fencing_token bigint)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_release_wrapper';
COMMENT ON FUNCTION lease_sched.lock_release(text, bigint) IS 'Release the lock; false (no error) unless that token holds it.';

CREATE FUNCTION lease_sched.lock_info(lock_name text)
RETURNS TABLE (holder text, fencing_token bigint, acquired_at timestamptz, heartbeat_at timestamptz,
               expires_at timestamptz, expired boolean)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'lock_info_wrapper';
COMMENT ON FUNCTION lease_sched.lock_info(text) IS 'Who holds the lock and until when; no row when nobody holds it.';
