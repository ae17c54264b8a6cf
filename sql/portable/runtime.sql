-- Portable edition: the PL/pgSQL twins of the runtime API (native: src/api/runtime.rs,
-- src/runtime/).
--
-- The touch buffer. The native edition coalesces touches of online runtimes in shared
-- memory and writes them in one UPDATE per flush. Without shared memory the buffer is
-- this UNLOGGED table: a buffered touch writes no WAL (an upsert of one small row, which
-- many touches of one runtime coalesce into), and is lost on a crash exactly as the
-- native buffer is (a clean shutdown keeps it; the first sweep after the start writes it,
-- as the native sweeper's exit drain would have). Touches are buffered only while
-- lease_sched.sweep() runs in this database (a sweep in the last 2 minutes): without
-- sweeps nobody would write the buffer out, so touches are written directly, as the
-- native edition does without its sweeper. docs/portable.md compares the two paths.
CREATE UNLOGGED TABLE lease_sched.runtime_touch_buffer (
    runtime_id     uuid        NOT NULL PRIMARY KEY,
    seen_at        timestamptz NOT NULL,
    -- pg_postmaster_start_time() when the latest touch was buffered: an entry of an
    -- earlier start was kept by a clean shutdown, which the native edition drains.
    server_started timestamptz NOT NULL
);
COMMENT ON TABLE lease_sched.runtime_touch_buffer IS
    'Portable edition: runtime touches waiting for the next flush (the native edition keeps them in shared memory).';
REVOKE ALL ON lease_sched.runtime_touch_buffer FROM PUBLIC;

-- twin: runtime_register
CREATE FUNCTION lease_sched.runtime_register(name text, metadata jsonb DEFAULT '{}')
RETURNS uuid
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $register$
#variable_conflict use_column
DECLARE
    now_ timestamptz := clock_timestamp();
    id_  uuid;
BEGIN
    PERFORM lease_sched.portable_name(runtime_register.name, 'name');
    PERFORM lease_sched.portable_required(runtime_register.metadata IS NULL, 'metadata');
    INSERT INTO lease_sched.runtime_rows (name, status, last_seen_at, registered_at, metadata)
    VALUES (runtime_register.name, 'online', now_, now_, runtime_register.metadata)
    RETURNING id INTO id_;
    RETURN id_;
END;
$register$;

-- twin: runtime_touch
CREATE FUNCTION lease_sched.runtime_touch(runtime_id uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $touch$
#variable_conflict use_column
DECLARE
    now_    timestamptz := clock_timestamp();
    status_ text;
    swept   boolean;
BEGIN
    IF runtime_touch.runtime_id IS NULL THEN
        PERFORM lease_sched.portable_required(true, 'runtime_id');
    END IF;
    SELECT r.status, EXISTS (SELECT 1 FROM lease_sched.portable_sweep_state s
                              WHERE s.last_sweep_at > now_ - interval '2 minutes')
      INTO status_, swept
      FROM lease_sched.runtime_rows r WHERE r.id = runtime_touch.runtime_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF status_ = 'online' AND swept THEN
        INSERT INTO lease_sched.runtime_touch_buffer AS b (runtime_id, seen_at, server_started)
        VALUES (runtime_touch.runtime_id, now_, pg_postmaster_start_time())
        ON CONFLICT (runtime_id) DO UPDATE
           SET seen_at = greatest(b.seen_at, excluded.seen_at), server_started = excluded.server_started;
    ELSE
        -- The synchronous path: online now, seen now.
        UPDATE lease_sched.runtime_rows SET status = 'online', last_seen_at = greatest(last_seen_at, now_)
         WHERE id = runtime_touch.runtime_id;
    END IF;
    RETURN true;
END;
$touch$;

-- twin: runtime_touch_batch
CREATE FUNCTION lease_sched.runtime_touch_batch(runtime_ids uuid[])
RETURNS uuid[]
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $batch$
DECLARE
    now_      timestamptz := clock_timestamp();
    untouched uuid[];
BEGIN
    PERFORM lease_sched.portable_required(runtime_ids IS NULL, 'runtime_ids');
    IF array_position(runtime_ids, NULL) IS NOT NULL THEN
        PERFORM lease_sched.portable_required(true, 'an element of runtime_ids');
    END IF;
    WITH touched AS (
        UPDATE lease_sched.runtime_rows SET last_seen_at = greatest(last_seen_at, now_)
         WHERE id = ANY(runtime_ids) AND status = 'online'
        RETURNING id)
    SELECT coalesce(array_agg(DISTINCT u.id), '{}') INTO untouched
      FROM unnest(runtime_ids) AS u(id)
     WHERE NOT EXISTS (SELECT 1 FROM touched t WHERE t.id = u.id);
    RETURN untouched;
END;
$batch$;

-- twin: runtime_flush
CREATE FUNCTION lease_sched.runtime_flush()
RETURNS bigint
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY INVOKER SET search_path = pg_catalog, pg_temp
AS $flush$
BEGIN
    PERFORM lease_sched.portable_require_admin('runtime_flush');
    RETURN lease_sched.portable_flush(NULL);
END;
$flush$;

-- twin: runtime_pending
CREATE FUNCTION lease_sched.runtime_pending()
RETURNS bigint
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $pending$
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN 0;  -- an unlogged table cannot be read on a standby, and holds nothing there
    END IF;
    RETURN (SELECT count(*) FROM lease_sched.runtime_touch_buffer);
END;
$pending$;

-- Write buffered touches (all of them, or those of `only_ids`) in one statement; returns
-- rows written (the native FLUSH, src/runtime/store.rs). Each row gets its own latest
-- touch, online rows only, never moved back. Rows someone holds locked (a runner's open
-- transaction, a prepared one) are skipped, not waited for, and their touches stay
-- buffered; so do buffer entries a touch is writing right now. Every other entry taken
-- here leaves the buffer in the same transaction as the write: a flush that fails or is
-- rolled back loses no touch.
CREATE FUNCTION lease_sched.portable_flush(only_ids uuid[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $flush$
DECLARE
    written_rows bigint;
BEGIN
    WITH taken AS (
        SELECT b.runtime_id, b.seen_at FROM lease_sched.runtime_touch_buffer b
         WHERE only_ids IS NULL OR b.runtime_id OPERATOR(pg_catalog.=) ANY (only_ids)
           FOR UPDATE SKIP LOCKED),
    ready AS (
        SELECT r.id, t.seen_at FROM lease_sched.runtime_rows r JOIN taken t ON t.runtime_id OPERATOR(pg_catalog.=) r.id
         WHERE r.status OPERATOR(pg_catalog.=) 'online' AND r.last_seen_at OPERATOR(pg_catalog.<) t.seen_at
           FOR UPDATE OF r SKIP LOCKED),
    written AS (
        UPDATE lease_sched.runtime_rows r SET last_seen_at = ready.seen_at
          FROM ready WHERE r.id OPERATOR(pg_catalog.=) ready.id
        RETURNING r.id),
    forgotten AS (
        DELETE FROM lease_sched.runtime_touch_buffer b USING taken t
         WHERE b.runtime_id OPERATOR(pg_catalog.=) t.runtime_id
           AND NOT EXISTS (  -- skipped for a row lock: it waits for the next flush
               SELECT 1 FROM lease_sched.runtime_rows r
                WHERE r.id OPERATOR(pg_catalog.=) t.runtime_id AND r.status OPERATOR(pg_catalog.=) 'online'
                  AND r.last_seen_at OPERATOR(pg_catalog.<) t.seen_at
                  AND NOT EXISTS (SELECT 1 FROM written w WHERE w.id OPERATOR(pg_catalog.=) t.runtime_id))
        RETURNING 1)
    -- (forgotten runs whether or not it is read: every data-modifying WITH does)
    SELECT pg_catalog.count(*) INTO written_rows FROM written;
    RETURN written_rows;
END;
$flush$;

-- The sweep's offline pass (native runtime::sweep_offline): silent online runtimes go
-- offline, except those with a touch still buffered, whose touch is written instead.
-- Returns (offline, touches written).
CREATE FUNCTION lease_sched.portable_sweep_offline(now_ timestamptz, OUT offline bigint, OUT touches_written bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $offline$
DECLARE
    cutoff     pg_catalog.timestamptz := now_ OPERATOR(pg_catalog.-)
                   (lease_sched.portable_setting_ms('lease_sched.runtime_offline_after', 150000, min_ms => 1000)
                    OPERATOR(pg_catalog.*) interval '1 millisecond');
    candidates pg_catalog.uuid[];
    rescued    pg_catalog.uuid[];
BEGIN
    offline := 0;
    touches_written := 0;
    candidates := ARRAY(SELECT r.id FROM lease_sched.runtime_rows r
                         WHERE r.status OPERATOR(pg_catalog.=) 'online' AND r.last_seen_at OPERATOR(pg_catalog.<) cutoff);
    IF pg_catalog.cardinality(candidates) OPERATOR(pg_catalog.=) 0 THEN
        RETURN;
    END IF;
    rescued := ARRAY(SELECT b.runtime_id FROM lease_sched.runtime_touch_buffer b
                      WHERE b.runtime_id OPERATOR(pg_catalog.=) ANY (candidates));
    IF pg_catalog.cardinality(rescued) OPERATOR(pg_catalog.>) 0 THEN
        touches_written := lease_sched.portable_flush(rescued);
    END IF;
    UPDATE lease_sched.runtime_rows SET status = 'offline'
     WHERE id IN (SELECT r.id FROM lease_sched.runtime_rows r
                   WHERE r.id OPERATOR(pg_catalog.=) ANY (candidates)
                     AND NOT r.id OPERATOR(pg_catalog.=) ANY (rescued)
                     AND r.status OPERATOR(pg_catalog.=) 'online' AND r.last_seen_at OPERATOR(pg_catalog.<) cutoff
                     FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS offline = ROW_COUNT;
END;
$offline$;

-- What readers see as lease_sched.runtimes. The native sweeper writes the touch buffer
-- out when the server stops; no SQL runs at a shutdown, so here the table keeps its rows
-- under the name runtime_rows (the API writes it), and lease_sched.runtimes is this view:
-- the rows, with the touches a clean shutdown left in the buffer (buffered before the
-- server started) already applied, as the native drain would have written them. The
-- first sweep after the start writes them for real. INSTEAD OF triggers pass an owner's
-- writes through to the table.
ALTER TABLE lease_sched.runtimes RENAME TO runtime_rows;
-- The touch a clean shutdown left buffered for a runtime (buffered before the server
-- started), or NULL. A function, not a subquery in the view: a standby cannot open an
-- UNLOGGED table at all (even to plan a query that would read no row of it), and its
-- buffer is empty anyway; a read replica must answer lease_sched.runtimes as the native
-- edition's table does. (PL/pgSQL: never inlined into the view's query.) SECURITY DEFINER
-- and executable by every role that may use the schema (sql/portable/finalize.sql): a view
-- calls functions with its reader's rights, and readers are granted the view only.
CREATE FUNCTION lease_sched.portable_kept_touch(runtime_id uuid)
RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $kept$
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT b.seen_at FROM lease_sched.runtime_touch_buffer b
             WHERE b.runtime_id = portable_kept_touch.runtime_id AND b.server_started < pg_postmaster_start_time());
END;
$kept$;
CREATE VIEW lease_sched.runtimes AS
SELECT r.id, r.name, r.status,
       CASE WHEN r.status = 'online' THEN greatest(r.last_seen_at, lease_sched.portable_kept_touch(r.id))
            ELSE r.last_seen_at END AS last_seen_at,
       r.registered_at, r.metadata
  FROM lease_sched.runtime_rows r;
COMMENT ON VIEW lease_sched.runtimes IS
    'Runtimes and when they were last seen (portable edition: lease_sched.runtime_rows, with the touches a clean shutdown left buffered).';
REVOKE ALL ON lease_sched.runtimes FROM PUBLIC;

CREATE FUNCTION lease_sched.portable_runtimes_write()
RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $write$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO lease_sched.runtime_rows (id, name, status, last_seen_at, registered_at, metadata)
        VALUES (coalesce(NEW.id, gen_random_uuid()), NEW.name, NEW.status, NEW.last_seen_at, NEW.registered_at,
                coalesce(NEW.metadata, '{}'))
        RETURNING id INTO NEW.id;
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE lease_sched.runtime_rows
           SET id = NEW.id, name = NEW.name, status = NEW.status, last_seen_at = NEW.last_seen_at,
               registered_at = NEW.registered_at, metadata = NEW.metadata
         WHERE id = OLD.id;
        RETURN CASE WHEN FOUND THEN NEW END;
    END IF;
    DELETE FROM lease_sched.runtime_rows WHERE id = OLD.id;
    RETURN CASE WHEN FOUND THEN OLD END;
END;
$write$;
CREATE TRIGGER runtimes_write INSTEAD OF INSERT OR UPDATE OR DELETE ON lease_sched.runtimes
    FOR EACH ROW EXECUTE FUNCTION lease_sched.portable_runtimes_write();

-- twin: runtime_left_online
-- The portable edition keeps no knowledge of runtimes known online (every touch reads its
-- row), so there is nothing to forget.
CREATE FUNCTION lease_sched.runtime_left_online()
RETURNS trigger
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $left$
BEGIN
    RETURN NULL;
END;
$left$;
