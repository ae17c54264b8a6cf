-- Portable edition: the twins of run()'s deadline (native: src/api/run.rs). The native
-- edition arms PostgreSQL's own statement timer in the middle of the CALL, which no SQL
-- or PL/pgSQL can do (statement_timeout is armed only when a top-level statement starts).
-- Here nothing is armed: run()'s command is not cancelled at its lease deadline. What
-- still holds: a command that outlives its lease and is stolen meanwhile cannot commit
-- (its lease_finish fails and run() raises LS001, rolling the work back). Set
-- statement_timeout on the role or the pg_cron job to bound commands (docs/portable.md).

-- twin: run_arm_deadline
CREATE FUNCTION lease_sched.run_arm_deadline(stale_after timestamptz, stale_timeout interval)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $arm$
BEGIN
    PERFORM lease_sched.portable_required(stale_after IS NULL, 'stale_after');
    PERFORM lease_sched.portable_interval(stale_timeout, 'stale_timeout');
    PERFORM lease_sched.portable_finite_time(stale_after, 'stale_after');
    RETURN false;  -- nothing armed
END;
$arm$;

-- twin: run_disarm_deadline
CREATE FUNCTION lease_sched.run_disarm_deadline(armed boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $disarm$
BEGIN
    RETURN false;  -- nothing was armed, so nothing fired
END;
$disarm$;
