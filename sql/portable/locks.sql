-- Portable edition: the PL/pgSQL twins of the lock API (native: src/api/lock.rs,
-- src/lock/), running the native statements (src/lock/store.rs) in the same order.

-- twin: lock_acquire
-- An SQL function around portable_lock_acquire: PL/pgSQL refuses a parameter named like a
-- result column (holder), which the native signature has.
CREATE FUNCTION lease_sched.lock_acquire(lock_name text, holder text, ttl interval DEFAULT '60 seconds')
RETURNS lease_sched.lock_acquire_result
LANGUAGE sql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $acquire$
SELECT * FROM lease_sched.portable_lock_acquire(lock_name, holder, ttl);
$acquire$;

CREATE FUNCTION lease_sched.portable_lock_acquire(lock_name text, holder_name text, ttl interval)
RETURNS TABLE (acquired boolean, lock_token uuid, fencing_token bigint, holder text, expires_at timestamptz)
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
ROWS 1
AS $acquire$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
    got  record;
BEGIN
    PERFORM lease_sched.portable_name(portable_lock_acquire.lock_name, 'lock_name');
    PERFORM lease_sched.portable_name(portable_lock_acquire.holder_name, 'holder');
    PERFORM lease_sched.portable_interval(portable_lock_acquire.ttl, 'ttl');
    PERFORM lease_sched.portable_token_floor();
    FOR round IN 1..2 LOOP
        -- Take over an expired lock: the row locked FOR UPDATE first (waiting for every
        -- transaction that passed lock_fence on it), the new holder's times read after.
        WITH held AS (
            SELECT l.name, l.fencing_token AS previous_token FROM lease_sched.locks l
             WHERE l.name = portable_lock_acquire.lock_name AND l.expires_at <= now_ FOR UPDATE)
        UPDATE lease_sched.locks l
           SET holder = portable_lock_acquire.holder_name, fencing_token = nextval('lease_sched.fencing_token_seq'),
               lock_token = gen_random_uuid(), acquired_at = (SELECT clock_timestamp()),
               heartbeat_at = (SELECT clock_timestamp()), expires_at = (SELECT clock_timestamp()) + portable_lock_acquire.ttl,
               ttl = portable_lock_acquire.ttl
          FROM held
         WHERE l.name = held.name
        RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at, held.previous_token INTO got;
        IF FOUND THEN
            -- A row restored from a database whose sequence was further on: move the
            -- sequence above its token (as a floor does) and draw again.
            IF got.fencing_token <= got.previous_token THEN
                PERFORM lease_sched.portable_floor_above(got.previous_token);
                UPDATE lease_sched.locks l SET fencing_token = nextval('lease_sched.fencing_token_seq')
                 WHERE l.name = portable_lock_acquire.lock_name
                RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at, 0::bigint INTO got;
            END IF;
            -- The expired holder never released: tell it (delivered at commit).
            IF lease_sched.portable_notify_lost() THEN
                PERFORM pg_notify('lease_sched_lost', 'lock:' || portable_lock_acquire.lock_name);
            END IF;
            RETURN QUERY SELECT true, got.lock_token, got.fencing_token, got.holder, got.expires_at;
            RETURN;
        END IF;
        -- A free lock: inserted with no token yet; the token is drawn after the insert,
        -- which may have waited for a concurrent inserter of the same name.
        INSERT INTO lease_sched.locks (name, holder, fencing_token, acquired_at, heartbeat_at, expires_at, ttl, lock_token)
        VALUES (portable_lock_acquire.lock_name, portable_lock_acquire.holder_name, 0, now_, now_, now_ + portable_lock_acquire.ttl, portable_lock_acquire.ttl,
                gen_random_uuid())
        ON CONFLICT (name) DO NOTHING;
        IF FOUND THEN
            UPDATE lease_sched.locks l SET fencing_token = nextval('lease_sched.fencing_token_seq'),
                   acquired_at = (SELECT clock_timestamp()), heartbeat_at = (SELECT clock_timestamp()),
                   expires_at = (SELECT clock_timestamp()) + l.ttl
             WHERE l.name = portable_lock_acquire.lock_name
            RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at INTO got;
            RETURN QUERY SELECT true, got.lock_token, got.fencing_token, got.holder, got.expires_at;
            RETURN;
        END IF;
        SELECT l.holder, l.expires_at INTO got FROM lease_sched.locks l WHERE l.name = portable_lock_acquire.lock_name;
        IF FOUND AND got.expires_at > now_ THEN
            RETURN QUERY SELECT false, NULL::uuid, NULL::bigint, got.holder, got.expires_at;
            RETURN;
        END IF;
        -- Expired between our two statements: the next round takes it over.
    END LOOP;
    RETURN QUERY SELECT false, NULL::uuid, NULL::bigint, NULL::text, NULL::timestamptz;
END;
$acquire$;

-- twin: lock_heartbeat
CREATE FUNCTION lease_sched.lock_heartbeat(lock_name text, lock_token uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $heartbeat$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    PERFORM lease_sched.portable_name(lock_heartbeat.lock_name, 'lock_name');
    PERFORM lease_sched.portable_required(lock_heartbeat.lock_token IS NULL, 'lock_token');
    -- Like a lease's heartbeat, this also revives an expired lock nobody has taken over.
    UPDATE lease_sched.locks SET heartbeat_at = now_, expires_at = now_ + ttl
     WHERE name = lock_heartbeat.lock_name AND lock_token = lock_heartbeat.lock_token;
    RETURN FOUND;
END;
$heartbeat$;

-- twin: lock_release
CREATE FUNCTION lease_sched.lock_release(lock_name text, lock_token uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $release$
#variable_conflict use_column
BEGIN
    PERFORM lease_sched.portable_name(lock_release.lock_name, 'lock_name');
    PERFORM lease_sched.portable_required(lock_release.lock_token IS NULL, 'lock_token');
    DELETE FROM lease_sched.locks WHERE name = lock_release.lock_name AND lock_token = lock_release.lock_token;
    RETURN FOUND;
END;
$release$;

-- twin: lock_info
CREATE FUNCTION lease_sched.lock_info(lock_name text)
RETURNS TABLE (holder text, fencing_token bigint, acquired_at timestamptz, heartbeat_at timestamptz,
               expires_at timestamptz, expired boolean)
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS $info$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
BEGIN
    PERFORM lease_sched.portable_name(lock_info.lock_name, 'lock_name');
    RETURN QUERY SELECT l.holder, l.fencing_token, l.acquired_at, l.heartbeat_at, l.expires_at, l.expires_at <= now_
                   FROM lease_sched.locks l WHERE l.name = lock_info.lock_name;
END;
$info$;
