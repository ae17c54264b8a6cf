-- Fencing that protects data (src/lease/fence.rs, src/lock/fence.rs, src/api/fence.rs;
-- docs/api.md, "Fences").
--
-- lease_fence / lock_fence check a fencing token inside the writer's own transaction. Given
-- the holder's secret (lease_token / lock_token) they also keep the lease or lock row locked
-- FOR KEY SHARE until it ends: a steal or takeover waits for that transaction, a heartbeat
-- does not. Given only the public fencing token they lock nothing, so that a role that
-- merely knows the token cannot hold off a steal, a takeover or the sweep. The require_lock / require_lease triggers make
-- a table writable only by transactions that passed such a fence. A refusal is SQLSTATE
-- LS001 ("lease lost"), the same for leases and locks, raised here in PL/pgSQL because a
-- custom SQLSTATE cannot travel through the Rust side.

-- Tokens that never repeat: the fencing sequence is floored at the database clock (in
-- microseconds) before the first grant after each server start and on each timeline
-- (src/token_floor.rs). These sequences hold the timeline and the server start of the last
-- floor; 0 means "not floored yet": the state after CREATE EXTENSION (also after DROP
-- EXTENSION, and in a restored copy, since they are not dumped), so the next grant floors.
-- A copy started from a base backup or a volume snapshot is a new server start, and
-- promotion starts a new timeline, so the first grant there floors too. Sequences and not
-- a table row: setval is not transactional, so recording a floor holds no row lock that
-- other sessions would wait on.
CREATE SEQUENCE lease_sched.token_floor_timeline AS bigint MINVALUE 0 START 0 CACHE 1 NO CYCLE;
COMMENT ON SEQUENCE lease_sched.token_floor_timeline IS
    'The WAL timeline on which fencing_token_seq was last floored at the database clock (0: not yet). Not dumped on purpose.';
CREATE SEQUENCE lease_sched.token_floor_server_start AS bigint MINVALUE 0 START 0 CACHE 1 NO CYCLE;
COMMENT ON SEQUENCE lease_sched.token_floor_server_start IS
    'The server start (microseconds since 2000-01-01) after which fencing_token_seq was last floored (0: not yet). Not dumped on purpose.';
CREATE VIEW lease_sched.token_floor AS
SELECT t.last_value AS timeline,
       CASE WHEN s.last_value OPERATOR(pg_catalog.<>) 0
            THEN pg_catalog.to_timestamp(s.last_value::pg_catalog.float8 OPERATOR(pg_catalog./) 1000000 OPERATOR(pg_catalog.+) 946684800)
       END AS server_start
  FROM lease_sched.token_floor_timeline t, lease_sched.token_floor_server_start s;
COMMENT ON VIEW lease_sched.token_floor IS 'The WAL timeline and the server start after which fencing tokens were last floored at the database clock (0 and NULL: not yet).';
REVOKE ALL ON lease_sched.token_floor_timeline, lease_sched.token_floor_server_start, lease_sched.token_floor FROM PUBLIC;
-- Which copy of the database the last floor was taken in: the oid of the database << 32 |
-- the oid of fencing_token_seq. CREATE DATABASE ... TEMPLATE copies every sequence as it
-- is, these records included, on the same server and timeline; the copy has another
-- database oid, so it floors before its first grant and the two databases never hand out
-- the same tokens. (A restore creates new objects, so it floors too; the portable edition
-- relies on that, its sequences being dumped with their values.) Any bigint: the shift
-- may carry an oid's high bit into the sign.
CREATE SEQUENCE lease_sched.token_floor_copy AS bigint MINVALUE -9223372036854775808 START 0 CACHE 1 NO CYCLE;
COMMENT ON SEQUENCE lease_sched.token_floor_copy IS
    'The copy of the database (oid of the database << 32 | oid of fencing_token_seq) in which fencing_token_seq was last floored (0: not yet). A template copy or a restore floors again.';
REVOKE ALL ON lease_sched.token_floor_copy FROM PUBLIC;

CREATE FUNCTION lease_sched.lease_fence_check(execution_id uuid, fencing_token bigint, lease_token uuid)
RETURNS text
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lease_fence_check_wrapper';
COMMENT ON FUNCTION lease_sched.lease_fence_check(uuid, bigint, uuid) IS
    'Used by lease_fence: NULL when the token holds the RUNNING lease (with lease_token: row locked FOR KEY SHARE until the transaction ends), else why not.';

CREATE FUNCTION lease_sched.lock_fence_check(lock_name text, fencing_token bigint, lock_token uuid)
RETURNS text
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_fence_check_wrapper';
COMMENT ON FUNCTION lease_sched.lock_fence_check(text, bigint, uuid) IS
    'Used by lock_fence: NULL when the token holds the lock (with lock_token: row locked FOR KEY SHARE until the transaction ends), else why not.';

CREATE FUNCTION lease_sched.lock_fence_passed(lock_name text, proven_only boolean)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'lock_fence_passed_wrapper';
COMMENT ON FUNCTION lease_sched.lock_fence_passed(text, boolean) IS 'Has this transaction passed lock_fence for this lock (with its lock_token when proven_only)?';

CREATE FUNCTION lease_sched.lease_fence_passed(job_name text, proven_only boolean)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'lease_fence_passed_wrapper';
COMMENT ON FUNCTION lease_sched.lease_fence_passed(text, boolean) IS 'Has this transaction passed lease_fence for a lease of this job (with its lease_token when proven_only)?';

CREATE FUNCTION lease_sched.lease_fence(execution_id uuid, fencing_token bigint, lease_token uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fence$
DECLARE
    refusal text := lease_sched.lease_fence_check(execution_id, fencing_token, lease_token);
BEGIN
    IF refusal IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LS001', MESSAGE = refusal,
              HINT = 'A newer holder owns this plan, or the run has ended: stop, and write nothing on its behalf.';
    END IF;
END;
$fence$;
COMMENT ON FUNCTION lease_sched.lease_fence(uuid, bigint, uuid) IS
    'Pass only while fencing_token (and lease_token, when given) holds the RUNNING lease; with lease_token, keep it so until this transaction ends (no steal completes meanwhile). Else SQLSTATE LS001.';

CREATE FUNCTION lease_sched.lock_fence(lock_name text, fencing_token bigint, lock_token uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fence$
DECLARE
    refusal text := lease_sched.lock_fence_check(lock_name, fencing_token, lock_token);
BEGIN
    IF refusal IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'LS001', MESSAGE = refusal,
              HINT = 'Another holder has the lock (or nobody does): stop acting as its holder.';
    END IF;
END;
$fence$;
COMMENT ON FUNCTION lease_sched.lock_fence(text, bigint, uuid) IS
    'Pass only while fencing_token (and lock_token, when given) holds the lock; with lock_token, keep it so until this transaction ends (no takeover completes meanwhile). Else SQLSTATE LS001.';

-- Trigger functions for leader-only tables, e.g.
--   CREATE TRIGGER reports_leader_only BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON reports
--       FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.require_lock('reports-leader');
-- Work as row triggers too (they return the row unchanged). A second argument 'secret'
-- accepts only fences passed with the holder's secret token (lock_fence(name, token,
-- lock_token)): then knowing the public fencing token is not enough to write.
CREATE FUNCTION lease_sched.require_lock()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $require$
BEGIN
    IF TG_NARGS NOT IN (1, 2) OR (TG_NARGS = 2 AND TG_ARGV[1] <> 'secret') THEN
        RAISE EXCEPTION 'lease_sched.require_lock takes the lock name, and optionally ''secret'': EXECUTE FUNCTION lease_sched.require_lock(''<lock>'' [, ''secret''])'
              USING ERRCODE = '22023';
    END IF;
    IF NOT lease_sched.lock_fence_passed(TG_ARGV[0], TG_NARGS = 2) THEN
        RAISE EXCEPTION 'lease_sched: writes to %.% need the lock "%", and this transaction has not passed its fence',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
              USING ERRCODE = 'LS001',
                    HINT = format('Call lease_sched.lock_fence(%L, <fencing_token>) in the same transaction, before the write.', TG_ARGV[0]);
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$require$;
COMMENT ON FUNCTION lease_sched.require_lock() IS
    'Trigger: refuse writes (LS001) in a transaction that has not passed lock_fence(<lock name argument>, <current token>).';

CREATE FUNCTION lease_sched.require_lease()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $require$
BEGIN
    IF TG_NARGS NOT IN (1, 2) OR (TG_NARGS = 2 AND TG_ARGV[1] <> 'secret') THEN
        RAISE EXCEPTION 'lease_sched.require_lease takes the job name, and optionally ''secret'': EXECUTE FUNCTION lease_sched.require_lease(''<job>'' [, ''secret''])'
              USING ERRCODE = '22023';
    END IF;
    IF NOT lease_sched.lease_fence_passed(TG_ARGV[0], TG_NARGS = 2) THEN
        RAISE EXCEPTION 'lease_sched: writes to %.% need a lease of job "%", and this transaction has not passed its fence',
                        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
              USING ERRCODE = 'LS001',
                    HINT = 'Call lease_sched.lease_fence(<execution_id>, <fencing_token>) in the same transaction, before the write.';
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END IF;
    RETURN NULL;
END;
$require$;
COMMENT ON FUNCTION lease_sched.require_lease() IS
    'Trigger: refuse writes (LS001) in a transaction that has not passed lease_fence for a lease of the job named by its argument.';
