-- lease_sched 0.1.0 -> 0.2.0 (ALTER EXTENSION lease_sched UPDATE). See CHANGELOG.md.
-- Every object below must end exactly as a fresh CREATE EXTENSION of 0.2.0 makes it
-- (scripts/upgrade_test.sh compares pg_dump --schema-only of both).

-- Locks: a holder proves itself with a secret lock_token, no longer with its public
-- fencing token. Locks held across the upgrade get a token nobody knows: their holder
-- cannot heartbeat or release them with the new API, so they expire after their ttl and
-- are taken over as usual (their fencing tokens stay, so fencing keeps increasing).
ALTER TABLE lease_sched.locks ADD COLUMN lock_token uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid();
ALTER TABLE lease_sched.locks ALTER COLUMN lock_token DROP DEFAULT;

DROP FUNCTION lease_sched.lock_acquire(text, text, interval);
DROP FUNCTION lease_sched.lock_heartbeat(text, bigint);
DROP FUNCTION lease_sched.lock_release(text, bigint);

CREATE FUNCTION lease_sched.lock_acquire(lock_name text, holder text, ttl interval DEFAULT '60 seconds')
RETURNS TABLE (acquired boolean, lock_token uuid, fencing_token bigint, holder text, expires_at timestamptz)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
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

COMMENT ON FUNCTION lease_sched.lock_info(text) IS 'Who holds the lock and until when (never the secret lock_token); no row when nobody holds it.';
COMMENT ON TABLE lease_sched.locks IS 'Held (or expired, not yet taken over) named locks; a released lock has no row.';

-- The default retry delay, the one definition used by lease_finish and the sweep (their
-- statements call it) and checked by the model (crates/lease_model, retry_backoff).
CREATE FUNCTION lease_sched.retry_backoff(attempt int, base interval, max interval)
RETURNS interval
LANGUAGE c IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'retry_backoff_wrapper';

COMMENT ON FUNCTION lease_sched.retry_backoff(int, interval, interval) IS
    'base * 2^(attempt-1), saturating at max for any attempt (never overflows): the default delay before a FAILED run may be retried.';

-- The history for readers: every column of sys_cron_executions except the holder's secret
-- lease_token (with it, anyone could heartbeat or finish the lease). Grant SELECT on this
-- view, never on the table (docs/api.md, "Privileges").
CREATE VIEW lease_sched.executions AS
SELECT id, job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
       fencing_token, allow_stale_reentry, stale_timeout, heartbeat_at, stale_after, started_at,
       finished_at, duration_ms, next_retry_at, error_code, error_msg, rows_affected, result, updated_at
  FROM lease_sched.sys_cron_executions;
COMMENT ON VIEW lease_sched.executions IS 'The execution history without the secret lease_token: what readers are granted.';

REVOKE ALL ON lease_sched.executions FROM PUBLIC;

-- Arm the statement timeout that bounds run()'s command by its lease: it fires
-- `margin` before stale_after (a tenth of stale_timeout, at most 1 second) unless the
-- caller's own statement_timeout fires earlier. Returns whether it armed anything.
CREATE FUNCTION lease_sched.run_arm_deadline(stale_after timestamptz, stale_timeout interval)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'run_arm_deadline_wrapper';
COMMENT ON FUNCTION lease_sched.run_arm_deadline(timestamptz, interval) IS
    'Used by run(): a statement timeout that fires just before the lease would go stale.';

CREATE FUNCTION lease_sched.run_disarm_deadline(armed boolean)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'run_disarm_deadline_wrapper';
COMMENT ON FUNCTION lease_sched.run_disarm_deadline(boolean) IS
    'Used by run(): cancel the timeout run_arm_deadline armed; true when it had fired (the command outlived its lease).';

-- run() is replaced below, with the job-definition defaults (see "run():").

-- Fencing that protects data (src/fencing.rs, src/api/fence.rs; docs/api.md, "Fences").
--
-- lease_fence / lock_fence check a fencing token inside the writer's own transaction and
-- keep the lease or lock row locked FOR KEY SHARE until it ends: a steal or takeover waits
-- for that transaction, a heartbeat does not. The require_lock / require_lease triggers make
-- a table writable only by transactions that passed such a fence. A refusal is SQLSTATE
-- LS001 ("lease lost"), the same for leases and locks, raised here in PL/pgSQL because a
-- custom SQLSTATE cannot travel through the Rust side.

-- Tokens that never repeat: the fencing sequence is floored at the database clock (in
-- microseconds) before the first grant on each timeline (src/fencing.rs). This sequence
-- holds the timeline of the last floor; 0 means "not floored yet": the state after CREATE
-- EXTENSION (also after DROP EXTENSION, and in a restored copy, since it is not dumped), so
-- the next grant floors. Promotion starts a new timeline, so the first grant on the
-- promoted server floors too. A sequence and not a table row: setval is not transactional,
-- so recording a floor holds no row lock that other sessions would wait on.
CREATE SEQUENCE lease_sched.token_floor_timeline AS bigint MINVALUE 0 START 0 CACHE 1 NO CYCLE;
COMMENT ON SEQUENCE lease_sched.token_floor_timeline IS
    'The WAL timeline on which fencing_token_seq was last floored at the database clock (0: not yet). Not dumped on purpose.';
CREATE VIEW lease_sched.token_floor AS
SELECT last_value AS timeline FROM lease_sched.token_floor_timeline;
COMMENT ON VIEW lease_sched.token_floor IS 'The WAL timeline on which fencing tokens were last floored at the database clock (0: not yet).';
REVOKE ALL ON lease_sched.token_floor_timeline, lease_sched.token_floor FROM PUBLIC;

CREATE FUNCTION lease_sched.lease_fence_check(execution_id uuid, fencing_token bigint, lease_token uuid)
RETURNS text
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lease_fence_check_wrapper';
COMMENT ON FUNCTION lease_sched.lease_fence_check(uuid, bigint, uuid) IS
    'Used by lease_fence: NULL when the token holds the RUNNING lease (row locked FOR KEY SHARE until the transaction ends), else why not.';

CREATE FUNCTION lease_sched.lock_fence_check(lock_name text, fencing_token bigint, lock_token uuid)
RETURNS text
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lock_fence_check_wrapper';
COMMENT ON FUNCTION lease_sched.lock_fence_check(text, bigint, uuid) IS
    'Used by lock_fence: NULL when the token holds the lock (row locked FOR KEY SHARE until the transaction ends), else why not.';

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
    'Pass only while fencing_token (and lease_token, when given) holds the RUNNING lease, and keep it so until this transaction ends (no steal completes meanwhile); else SQLSTATE LS001.';

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
    'Pass only while fencing_token (and lock_token, when given) holds the lock, and keep it so until this transaction ends (no takeover completes meanwhile); else SQLSTATE LS001.';

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

-- Job definitions, misfire policies and a dead-man's switch (issue 15; sql/jobs.sql,
-- docs/api.md "Jobs"). A skipped slot is a history row with status SKIPPED.
-- The table drops its CHECK (issue 13): PostgreSQL re-reads and re-plans a CHECK for every
-- statement that writes the table, and that was a quarter of a heartbeat's instructions.
-- The API is the table's only writer and enforces the same invariants (sql/schema.sql).
ALTER TABLE lease_sched.sys_cron_executions DROP CONSTRAINT valid_state;

-- One row per (job, scope). Written only through job_define / job_pause / job_resume /
-- job_drop; read through the views below (grant those, not the table).
CREATE TABLE lease_sched.jobs (
    job_name      text        NOT NULL,
    scope_kind    text        NOT NULL,
    scope_id      text        NOT NULL,
    every         interval    NOT NULL,
    misfire       text        NOT NULL,
    grace         interval,
    max_attempts  int         NOT NULL,
    stale_timeout interval    NOT NULL,
    paused        boolean     NOT NULL,
    paused_at     timestamptz,
    resumed_at    timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT jobs_pkey PRIMARY KEY (job_name, scope_kind, scope_id),
    CONSTRAINT valid_misfire CHECK (misfire IN ('all', 'latest', 'skip'))
);
COMMENT ON TABLE lease_sched.jobs IS
    'Job definitions: one row per (job_name, scope_kind, scope_id), written by job_define/job_pause/job_resume/job_drop.';

-- pg_dump keeps the definitions.
SELECT pg_catalog.pg_extension_config_dump('lease_sched.jobs', '');

CREATE FUNCTION lease_sched.job_define(job_name text, every interval, misfire text DEFAULT 'latest',
                                       grace interval DEFAULT NULL, max_attempts int DEFAULT 3,
                                       stale_timeout interval DEFAULT '5 minutes',
                                       scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'job_define_wrapper';
COMMENT ON FUNCTION lease_sched.job_define(text, interval, text, interval, int, interval, text, text) IS
    'Create or replace the definition of a job (and scope); true when it is new. Keeps its paused state.';

CREATE FUNCTION lease_sched.job_pause(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'job_pause_wrapper';
COMMENT ON FUNCTION lease_sched.job_pause(text, text, text) IS
    'Pause a defined job: lease_next_plan and run() offer it nothing until job_resume; false when it has no definition.';

CREATE FUNCTION lease_sched.job_resume(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'job_resume_wrapper';
COMMENT ON FUNCTION lease_sched.job_resume(text, text, text) IS
    'Resume a paused job: slots due before now that never ran are recorded SKIPPED (paused); false when it has no definition.';

CREATE FUNCTION lease_sched.job_drop(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'job_drop_wrapper';
COMMENT ON FUNCTION lease_sched.job_drop(text, text, text) IS
    'Drop the definition of a job (its history stays); false when it had none.';

CREATE FUNCTION lease_sched.job_definition(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS TABLE (every interval, misfire text, grace interval, max_attempts int, stale_timeout interval, paused boolean)
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'job_definition_wrapper';
COMMENT ON FUNCTION lease_sched.job_definition(text, text, text) IS
    'The definition of a job (no row when it has none): what run() and runners read instead of the table.';

CREATE VIEW lease_sched.job_definitions AS
SELECT job_name, scope_kind, scope_id, every, misfire, grace, max_attempts, stale_timeout, paused, paused_at,
       resumed_at, created_at, updated_at
  FROM lease_sched.jobs;
COMMENT ON VIEW lease_sched.job_definitions IS 'Job definitions (lease_sched.jobs), for readers.';

-- The dead-man's switch: one row per defined job and scope. `success_due_by` is when the
-- next SUCCESS is due: the first slot after the last successful plan (or after the
-- definition was created, or the job resumed, when later), plus every + grace +
-- stale_timeout. `overdue`: not paused and the database clock is past it.
CREATE VIEW lease_sched.job_health AS
SELECT j.job_name, j.scope_kind, j.scope_id, j.every, j.misfire, j.paused,
       s.plan_time AS last_success_plan, s.finished_at AS last_success_at,
       l.plan_time AS last_plan, l.status AS last_status, l.error_code AS last_error_code,
       f.consecutive_failures, k.skipped_24h,
       d.success_due_by,
       NOT j.paused AND clock_timestamp() > d.success_due_by AS overdue
  FROM lease_sched.jobs j
  LEFT JOIN LATERAL (
       SELECT e.plan_time, e.finished_at FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.status = 'SUCCESS'
        ORDER BY e.plan_time DESC LIMIT 1) s ON true
  LEFT JOIN LATERAL (
       SELECT e.plan_time, e.status, e.error_code FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.plan_time <= clock_timestamp()
        ORDER BY e.plan_time DESC LIMIT 1) l ON true
  CROSS JOIN LATERAL (
       SELECT count(*) AS consecutive_failures FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.status = 'FAILED' AND (s.plan_time IS NULL OR e.plan_time > s.plan_time)) f
  CROSS JOIN LATERAL (
       SELECT count(*) AS skipped_24h FROM lease_sched.sys_cron_executions e
        WHERE e.job_name = j.job_name AND e.scope_kind = j.scope_kind AND e.scope_id = j.scope_id
          AND e.status = 'SKIPPED' AND e.plan_time > clock_timestamp() - interval '24 hours'
          AND e.plan_time <= clock_timestamp()) k
  CROSS JOIN LATERAL (
       SELECT date_bin(j.every, greatest(s.plan_time, j.created_at, j.resumed_at), timestamptz 'epoch')
              + j.every + j.every + coalesce(j.grace, interval '0') + j.stale_timeout AS success_due_by) d;
COMMENT ON VIEW lease_sched.job_health IS
    'Per defined job and scope: last success, last status, consecutive failures, skipped slots in 24 h, and overdue (no SUCCESS within every + grace + stale_timeout of a due slot).';

REVOKE ALL ON lease_sched.jobs, lease_sched.job_definitions, lease_sched.job_health FROM PUBLIC;

-- lease_next_plan: every is optional (DEFAULT NULL = the job's definition) and the call may
-- write SKIPPED rows (PARALLEL UNSAFE). Same argument types, so CREATE OR REPLACE: grants
-- and dependent objects of the 0.1 function are kept.
CREATE OR REPLACE FUNCTION lease_sched.lease_next_plan(job_name text, every interval DEFAULT NULL, scope_kind text DEFAULT 'global',
                                            scope_id text DEFAULT '', catch_up boolean DEFAULT true)
RETURNS timestamptz
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lease_next_plan_wrapper';
COMMENT ON FUNCTION lease_sched.lease_next_plan(text, interval, text, text, boolean) IS
    'The plan_time to claim now (buckets of date_bin(every, t, ''epoch'')), or NULL when nothing is due. A job with a definition (job_define) follows it: every by default, its misfire policy and grace (skipped slots are recorded SKIPPED), nothing while paused.';

-- run(): every, max_attempts and stale_timeout default to NULL = the job's definition
-- (0.1's defaults without one). Same argument types: CREATE OR REPLACE keeps its grants.
CREATE OR REPLACE PROCEDURE lease_sched.run(
    job_name      text,
    command       text,
    every         interval DEFAULT NULL,
    scope_kind    text     DEFAULT 'global',
    scope_id      text     DEFAULT '',
    max_attempts  int      DEFAULT NULL,
    stale_timeout interval DEFAULT NULL
)
LANGUAGE plpgsql
AS $run$
DECLARE
    job_every         interval;
    job_max_attempts  int;
    job_stale_timeout interval;
    plan       timestamptz;
    lease      record;
    affected   bigint;
    armed      boolean := false;
    failed     boolean := false;
    deadline   boolean := false;
    finished   boolean;
    err_state  text;
    err_msg    text;
    err_detail text;
    err_hint   text;
BEGIN
    IF command IS NULL OR command OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'command must not be NULL or empty' USING ERRCODE = '22023';
    END IF;
    -- The job's definition (job_define), when it has one, fills in every argument left
    -- NULL; an argument given explicitly wins. Without a definition: '1 minute', 3 and
    -- '1 hour', as in 0.1. A paused job gets no plan from lease_next_plan.
    SELECT d.every, d.max_attempts, d.stale_timeout INTO job_every, job_max_attempts, job_stale_timeout
      FROM lease_sched.job_definition(job_name => run.job_name, scope_kind => run.scope_kind,
                                      scope_id => run.scope_id) AS d;
    job_every := coalesce(run.every, job_every, interval '1 minute');
    job_max_attempts := coalesce(run.max_attempts, job_max_attempts, 3);
    job_stale_timeout := coalesce(run.stale_timeout, job_stale_timeout, interval '1 hour');
    plan := lease_sched.lease_next_plan(job_name => run.job_name, every => job_every, scope_kind => run.scope_kind,
                                        scope_id => run.scope_id, catch_up => false);
    IF plan IS NULL THEN
        RETURN;  -- nothing due: this plan ran, runs now, or waits for its retry backoff
    END IF;
    SELECT * INTO lease
      FROM lease_sched.lease_try_claim(job_name => run.job_name, plan_time => plan,
               runner_id => pg_catalog.format('%s pid %s',
                   -- (no NULLIF: it would use the caller's `=`, which a role may have planted)
                   CASE WHEN pg_catalog.current_setting('application_name') OPERATOR(pg_catalog.=) ''
                        THEN 'session' ELSE pg_catalog.current_setting('application_name') END,
                   pg_catalog.pg_backend_pid()),
               scope_kind => run.scope_kind, scope_id => run.scope_id, stale_timeout => job_stale_timeout,
               max_attempts => job_max_attempts);
    IF lease.outcome OPERATOR(pg_catalog.=) 'conflicted' THEN
        RETURN;  -- another scheduler has this plan
    END IF;
    COMMIT;

    BEGIN
        armed := lease_sched.run_arm_deadline(lease.stale_after, job_stale_timeout);
        EXECUTE command;
        GET DIAGNOSTICS affected = ROW_COUNT;
        -- Deferred constraints and triggers fire here, inside this block, so that their
        -- failure is caught and recorded instead of escaping from the final COMMIT.
        SET CONSTRAINTS ALL IMMEDIATE;
        PERFORM lease_sched.run_disarm_deadline(armed);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_msg = MESSAGE_TEXT,
                                err_detail = PG_EXCEPTION_DETAIL, err_hint = PG_EXCEPTION_HINT;
        failed := true;
        -- Our own deadline (not the caller's statement_timeout) cancelled the command:
        -- the run outlived its lease, as a silent runner would. Like a stale lease it
        -- may be retried at once rather than after the backoff.
        deadline := lease_sched.run_disarm_deadline(armed);
    END;
    PERFORM lease_sched.run_disarm_deadline(armed);

    IF failed THEN
        finished := lease_sched.lease_finish(execution_id => lease.execution_id, lease_token => lease.lease_token,
                        status => 'FAILED', error_code => err_state,
                        error_msg => CASE WHEN deadline
                                          THEN 'command cancelled at its lease deadline (stale_timeout ' OPERATOR(pg_catalog.||) job_stale_timeout::text OPERATOR(pg_catalog.||) '): ' OPERATOR(pg_catalog.||) err_msg
                                          ELSE err_msg END,
                        retry_in => CASE WHEN deadline THEN interval '0' END);
        COMMIT;  -- the FAILED row stays, then the caller (pg_cron) sees the error too
        RAISE EXCEPTION USING ERRCODE = err_state, MESSAGE = err_msg,
                              DETAIL = coalesce(err_detail, ''), HINT = coalesce(err_hint, '');
    END IF;
    finished := lease_sched.lease_finish(execution_id => lease.execution_id, lease_token => lease.lease_token,
                                         status => 'SUCCESS', rows_affected => affected);
    IF NOT finished THEN
        -- The lease was taken over while the command ran: another runner owns this plan
        -- now. Raising here rolls the command's work back, so it never commits twice.
        RAISE EXCEPTION 'lease_sched.run: the lease of job "%" plan % was lost before the command finished; its work is rolled back',
                        run.job_name, plan
              USING ERRCODE = 'LS001',
                    HINT = 'The command outlived stale_timeout; raise stale_timeout or make the command faster.';
    END IF;
    COMMIT;
END;
$run$;

COMMENT ON PROCEDURE lease_sched.run(text, text, interval, text, text, int, interval) IS
    'Run a SQL command once per plan of a job (for cron.schedule): claim, commit, execute under a lease deadline, finish SUCCESS or FAILED (then re-raise); never commits the work of a lost lease.';

-- As finalize.sql does for a fresh install: nothing new is executable without a grant.
-- By name, only the routines this script created: a REVOKE ... ON ALL FUNCTIONS here would
-- record every function's current access list, runner grants included, as the
-- extension's initial privileges, and pg_dump would then leave those grants out.
REVOKE EXECUTE ON FUNCTION
    lease_sched.lock_acquire(text, text, interval),
    lease_sched.lock_heartbeat(text, uuid),
    lease_sched.lock_release(text, uuid),
    lease_sched.retry_backoff(int, interval, interval),
    lease_sched.run_arm_deadline(timestamptz, interval),
    lease_sched.run_disarm_deadline(boolean),
    lease_sched.lease_fence_check(uuid, bigint, uuid),
    lease_sched.lock_fence_check(text, bigint, uuid),
    lease_sched.lock_fence_passed(text, boolean),
    lease_sched.lease_fence_passed(text, boolean),
    lease_sched.lease_fence(uuid, bigint, uuid),
    lease_sched.lock_fence(text, bigint, uuid),
    lease_sched.require_lock(),
    lease_sched.require_lease(),
    lease_sched.job_define(text, interval, text, interval, int, interval, text, text),
    lease_sched.job_pause(text, text, text),
    lease_sched.job_resume(text, text, text),
    lease_sched.job_drop(text, text, text),
    lease_sched.job_definition(text, text, text)
FROM PUBLIC;

-- The hot calls pin no search_path (issue 13; sql/lease.sql says why): their statements
-- are schema-qualified. runtime_pending reads only shared memory: no definer rights either.
ALTER FUNCTION lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean) RESET search_path;
ALTER FUNCTION lease_sched.lease_heartbeat(uuid, uuid) RESET search_path;
ALTER FUNCTION lease_sched.lease_finish(uuid, uuid, text, jsonb, bigint, text, text, interval) RESET search_path;
ALTER FUNCTION lease_sched.runtime_touch(uuid) RESET search_path;
ALTER FUNCTION lease_sched.runtime_touch_batch(uuid[]) RESET search_path;
ALTER FUNCTION lease_sched.runtime_pending() RESET search_path SECURITY INVOKER;

-- Grants made here would be recorded as the extension's initial privileges (and so left
-- out of pg_dump), so the script grants nothing: it names the roles that need their
-- grants re-run for the new and re-created functions (docs/install.md, "Upgrading").
DO $grants$
DECLARE
    roles text;
BEGIN
    SELECT pg_catalog.string_agg(DISTINCT pg_catalog.quote_ident(a.rolname), ', ')
      INTO roles
      FROM pg_catalog.pg_proc p,
           LATERAL pg_catalog.aclexplode(p.proacl) AS x
      JOIN pg_catalog.pg_authid a ON a.oid OPERATOR(pg_catalog.=) x.grantee
     WHERE p.pronamespace OPERATOR(pg_catalog.=) 'lease_sched'::regnamespace
       AND p.proname OPERATOR(pg_catalog.=) 'lease_try_claim'
       AND x.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
       AND x.grantee OPERATOR(pg_catalog.<>) p.proowner;
    IF roles IS NOT NULL THEN
        RAISE NOTICE 'lease_sched 0.2.0: re-run your grants for the new and re-created functions (lock_*, fences, jobs, run helpers): GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched TO %;', roles;
    END IF;
END;
$grants$;
