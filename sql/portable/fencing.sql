-- Portable edition: the PL/pgSQL twins of the fence checks (native: src/lease/fence.rs,
-- src/lock/fence.rs, src/api/fence.rs, src/xact.rs).
--
-- Given the holder's secret (lease_token / lock_token) a fence keeps the row locked FOR
-- KEY SHARE until the transaction ends; given only the public fencing token it keeps
-- nothing: the row is read FOR KEY SHARE (so the check sees the newest version) in a
-- subtransaction rolled back at once, so a stranger who knows the token cannot hold off a
-- steal, a takeover or the sweep.
--
-- The fences a transaction passed (what require_lease / require_lock check) are rows of a
-- temporary table, `pg_temp.lease_sched_fences`, created in each session by the first
-- fence and owned by the role that owns lease_sched: rows written in a subtransaction that
-- rolls back are gone (so is the fence's row lock), and ON COMMIT DELETE ROWS forgets
-- them when the transaction ends, as the native backend-local list does. Only the owner
-- may write it; a table of that name that the session's own role created first (to forge
-- passed fences) is refused, never read. PostgreSQL refuses to PREPARE a transaction
-- that used a temporary table (SQLSTATE 0A000), which keeps the native guarantee that a
-- fenced transaction cannot be prepared.

-- The session's fence table, created when missing; NULL-safe owner check every time.
CREATE FUNCTION lease_sched.portable_fence_table(create_missing boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $table$
DECLARE
    owner_ pg_catalog.oid;
BEGIN
    SELECT c.relowner INTO owner_ FROM pg_catalog.pg_class c
     WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.pg_my_temp_schema()
       AND c.relname OPERATOR(pg_catalog.=) 'lease_sched_fences';
    IF owner_ IS NULL THEN
        IF NOT create_missing THEN
            RETURN false;
        END IF;
        CREATE TEMPORARY TABLE lease_sched_fences (
            kind   "char"  NOT NULL,  -- 'e': a lease of job `name`; 'l': lock `name`
            name   text    NOT NULL,
            proven boolean NOT NULL   -- passed with the holder's secret token
        ) ON COMMIT DELETE ROWS;
        RETURN true;
    END IF;
    IF owner_ OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER) THEN
        RAISE EXCEPTION 'lease_sched: pg_temp.lease_sched_fences was not created by lease_sched; drop it'
              USING ERRCODE = '42501';
    END IF;
    RETURN true;
END;
$table$;

-- twin: lease_fence_check
CREATE FUNCTION lease_sched.lease_fence_check(execution_id uuid, fencing_token bigint, lease_token uuid)
RETURNS text
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $check$
#variable_conflict use_column
DECLARE
    r      record;
    found_ boolean;
BEGIN
    PERFORM lease_sched.portable_required(lease_fence_check.execution_id IS NULL, 'execution_id');
    PERFORM lease_sched.portable_required(lease_fence_check.fencing_token IS NULL, 'fencing_token');
    IF lease_fence_check.lease_token IS NOT NULL THEN
        SELECT e.job_name, e.status, e.fencing_token, e.lease_token INTO r
          FROM lease_sched.sys_cron_executions e WHERE e.id = lease_fence_check.execution_id FOR KEY SHARE;
        found_ := FOUND;
    ELSE
        BEGIN
            SELECT e.job_name, e.status, e.fencing_token, e.lease_token INTO r
              FROM lease_sched.sys_cron_executions e WHERE e.id = lease_fence_check.execution_id FOR KEY SHARE;
            found_ := FOUND;
            RAISE EXCEPTION USING ERRCODE = 'LS998';  -- roll back: release the row lock now
        EXCEPTION WHEN SQLSTATE 'LS998' THEN
            NULL;
        END;
    END IF;
    IF NOT found_ THEN
        RETURN format('lease_sched: fenced out: there is no lease %s', lease_fence_check.execution_id);
    END IF;
    IF r.fencing_token <> lease_fence_check.fencing_token THEN
        RETURN format('lease_sched: fenced out: the lease %s of job "%s" is now held with fencing token %s, not %s (status %s)',
                      lease_fence_check.execution_id, r.job_name, r.fencing_token, lease_fence_check.fencing_token, r.status);
    END IF;
    IF r.status <> 'RUNNING' THEN
        RETURN format('lease_sched: fenced out: the lease %s of job "%s" has ended (%s)',
                      lease_fence_check.execution_id, r.job_name, r.status);
    END IF;
    IF lease_fence_check.lease_token IS NOT NULL AND lease_fence_check.lease_token <> r.lease_token THEN
        RETURN format('lease_sched: fenced out: the lease_token given does not hold the lease %s of job "%s"',
                      lease_fence_check.execution_id, r.job_name);
    END IF;
    PERFORM lease_sched.portable_fence_table(true);
    INSERT INTO pg_temp.lease_sched_fences VALUES ('e', r.job_name, lease_fence_check.lease_token IS NOT NULL);
    RETURN NULL;
END;
$check$;

-- twin: lock_fence_check
CREATE FUNCTION lease_sched.lock_fence_check(lock_name text, fencing_token bigint, lock_token uuid)
RETURNS text
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $check$
#variable_conflict use_column
DECLARE
    r      record;
    found_ boolean;
BEGIN
    PERFORM lease_sched.portable_name(lock_fence_check.lock_name, 'lock_name');
    PERFORM lease_sched.portable_required(lock_fence_check.fencing_token IS NULL, 'fencing_token');
    IF lock_fence_check.lock_token IS NOT NULL THEN
        SELECT l.fencing_token, l.lock_token INTO r
          FROM lease_sched.locks l WHERE l.name = lock_fence_check.lock_name FOR KEY SHARE;
        found_ := FOUND;
    ELSE
        BEGIN
            SELECT l.fencing_token, l.lock_token INTO r
              FROM lease_sched.locks l WHERE l.name = lock_fence_check.lock_name FOR KEY SHARE;
            found_ := FOUND;
            RAISE EXCEPTION USING ERRCODE = 'LS998';  -- roll back: release the row lock now
        EXCEPTION WHEN SQLSTATE 'LS998' THEN
            NULL;
        END;
    END IF;
    IF NOT found_ THEN
        RETURN format('lease_sched: fenced out: the lock "%s" is not held (fencing token %s no longer holds it)',
                      lock_fence_check.lock_name, lock_fence_check.fencing_token);
    END IF;
    IF r.fencing_token <> lock_fence_check.fencing_token THEN
        RETURN format('lease_sched: fenced out: the lock "%s" is now held with fencing token %s, not %s',
                      lock_fence_check.lock_name, r.fencing_token, lock_fence_check.fencing_token);
    END IF;
    IF lock_fence_check.lock_token IS NOT NULL AND lock_fence_check.lock_token <> r.lock_token THEN
        RETURN format('lease_sched: fenced out: the lock_token given does not hold the lock "%s"', lock_fence_check.lock_name);
    END IF;
    PERFORM lease_sched.portable_fence_table(true);
    INSERT INTO pg_temp.lease_sched_fences VALUES ('l', lock_fence_check.lock_name, lock_fence_check.lock_token IS NOT NULL);
    RETURN NULL;
END;
$check$;

-- twin: lock_fence_passed
CREATE FUNCTION lease_sched.lock_fence_passed(lock_name text, proven_only boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $passed$
BEGIN
    PERFORM lease_sched.portable_name(lock_name, 'lock_name');
    PERFORM lease_sched.portable_required(proven_only IS NULL, 'proven_only');
    IF NOT lease_sched.portable_fence_table(false) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_temp.lease_sched_fences f
                    WHERE f.kind = 'l' AND f.name = lock_name AND (f.proven OR NOT proven_only));
END;
$passed$;

-- twin: lease_fence_passed
CREATE FUNCTION lease_sched.lease_fence_passed(job_name text, proven_only boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $passed$
BEGIN
    PERFORM lease_sched.portable_name(job_name, 'job_name');
    PERFORM lease_sched.portable_required(proven_only IS NULL, 'proven_only');
    IF NOT lease_sched.portable_fence_table(false) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_temp.lease_sched_fences f
                    WHERE f.kind = 'e' AND f.name = job_name AND (f.proven OR NOT proven_only));
END;
$passed$;
