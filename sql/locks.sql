-- Named single-holder locks with a TTL (leader election). Implemented in Rust
-- (src/api/lock.rs). Unlike advisory locks they are rows: they survive reconnects and
-- work through transaction-pooling connection poolers.
--
-- A holder proves itself with `lock_token`, a random secret returned only by the
-- lock_acquire that granted it (like a lease's lease_token). The fencing token is public
-- (lock_info shows it) and is never accepted in place of the secret.

CREATE TABLE lease_sched.locks (
    name          text        NOT NULL PRIMARY KEY CHECK (name <> ''),
    holder        text        NOT NULL,
    fencing_token bigint      NOT NULL,
    acquired_at   timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    ttl           interval    NOT NULL CHECK (ttl > interval '0'),
    -- Last: 0.1.0 had no such column, and the upgrade appends it (a fresh install and an
    -- upgraded one must have the same column order).
    lock_token    uuid        NOT NULL
) WITH (fillfactor = 70);

COMMENT ON TABLE lease_sched.locks IS 'Held (or expired, not yet taken over) named locks; a released lock has no row.';

SELECT pg_catalog.pg_extension_config_dump('lease_sched.locks', '');
REVOKE ALL ON lease_sched.locks FROM PUBLIC;

-- One row, always: a named composite type, not a set (see lease_sched.claim_result).
CREATE TYPE lease_sched.lock_acquire_result AS (acquired boolean, lock_token uuid, fencing_token bigint, holder text,
                                                expires_at timestamptz);
COMMENT ON TYPE lease_sched.lock_acquire_result IS 'The row lock_acquire returns.';

CREATE FUNCTION lease_sched.lock_acquire(lock_name text, holder text, ttl interval DEFAULT '60 seconds')
RETURNS lease_sched.lock_acquire_result
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_acquire_row_wrapper';
COMMENT ON FUNCTION lease_sched.lock_acquire(text, text, interval) IS
    'Take the lock if free, released or expired. Always one row: acquired with the secret lock_token and a new fencing token, or not acquired with the current holder and its expiry.';

CREATE FUNCTION lease_sched.lock_heartbeat(lock_name text, lock_token uuid)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_heartbeat_by_token_wrapper';
COMMENT ON FUNCTION lease_sched.lock_heartbeat(text, uuid) IS 'Extend the lock by its ttl; false unless that lock_token holds it.';

CREATE FUNCTION lease_sched.lock_release(lock_name text, lock_token uuid)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_release_by_token_wrapper';
COMMENT ON FUNCTION lease_sched.lock_release(text, uuid) IS 'Release the lock; false (no error) unless that lock_token holds it.';

CREATE FUNCTION lease_sched.lock_info(lock_name text)
RETURNS TABLE (holder text, fencing_token bigint, acquired_at timestamptz, heartbeat_at timestamptz,
               expires_at timestamptz, expired boolean)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'lock_info_wrapper';
COMMENT ON FUNCTION lease_sched.lock_info(text) IS 'Who holds the lock and until when (never the secret lock_token); no row when nobody holds it.';
