-- Job definitions, misfire policies and a dead-man's switch (docs/api.md, "Jobs").
-- The planner (lease_next_plan, src/planner/) and run() read a job's definition when
-- it has one; lease_sched.job_health says when a defined job silently stopped succeeding.
-- A job runs `every` interval (buckets from the epoch) or on a `cron` calendar in its
-- `timezone` (sql/calendar.sql); cron_spec is the expression parsed once by job_define.

-- One row per (job, scope). Written only through job_define / job_pause / job_resume /
-- job_drop; read through the views below (grant those, not the table).
CREATE TABLE lease_sched.jobs (
    job_name      text        NOT NULL,
    scope_kind    text        NOT NULL,
    scope_id      text        NOT NULL,
    every         interval,
    misfire       text        NOT NULL,
    grace         interval,
    max_attempts  int         NOT NULL,
    stale_timeout interval    NOT NULL,
    paused        boolean     NOT NULL,
    paused_at     timestamptz,
    resumed_at    timestamptz,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    cron          text,
    timezone      text        NOT NULL DEFAULT 'UTC',
    cron_spec     bigint[],
    CONSTRAINT jobs_pkey PRIMARY KEY (job_name, scope_kind, scope_id),
    CONSTRAINT valid_misfire CHECK (misfire IN ('all', 'latest', 'skip')),
    CONSTRAINT one_schedule CHECK ((every IS NULL) <> (cron IS NULL) AND (cron IS NULL) = (cron_spec IS NULL))
);
COMMENT ON TABLE lease_sched.jobs IS
    'Job definitions: one row per (job_name, scope_kind, scope_id), written by job_define/job_pause/job_resume/job_drop.';

-- pg_dump keeps the definitions.
SELECT pg_catalog.pg_extension_config_dump('lease_sched.jobs', '');

-- "Run now" requests (job_trigger): each is one extra plan of its job at the instant it was
-- asked for. The planner offers a pending trigger before the schedule, and its execution
-- row (same plan_time) never counts as the schedule's cursor, so it neither consumes nor
-- shifts a scheduled slot. Rows stay as history (pruned with their job's executions).
CREATE TABLE lease_sched.job_triggers (
    job_name     text        NOT NULL,
    scope_kind   text        NOT NULL,
    scope_id     text        NOT NULL,
    plan_time    timestamptz NOT NULL,
    requested_by text        NOT NULL,
    CONSTRAINT job_triggers_pkey PRIMARY KEY (job_name, scope_kind, scope_id, plan_time)
);
COMMENT ON TABLE lease_sched.job_triggers IS
    'Runs asked for by job_trigger: their plan_time (the execution row of the run has the same one) and who asked.';
SELECT pg_catalog.pg_extension_config_dump('lease_sched.job_triggers', '');

CREATE FUNCTION lease_sched.job_define(job_name text, every interval DEFAULT NULL, misfire text DEFAULT 'latest',
                                       grace interval DEFAULT NULL, max_attempts int DEFAULT 3,
                                       stale_timeout interval DEFAULT '5 minutes',
                                       scope_kind text DEFAULT 'global', scope_id text DEFAULT '',
                                       cron text DEFAULT NULL, timezone text DEFAULT 'UTC')
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'job_define_every_or_cron_wrapper';
COMMENT ON FUNCTION lease_sched.job_define(text, interval, text, interval, int, interval, text, text, text, text) IS
    'Create or replace the definition of a job (and scope): every interval or a cron expression in a time zone (exactly one); true when it is new. Keeps its paused state.';

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
RETURNS TABLE (every interval, misfire text, grace interval, max_attempts int, stale_timeout interval, paused boolean,
               cron text, timezone text)
LANGUAGE c STABLE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'job_definition_wrapper';
COMMENT ON FUNCTION lease_sched.job_definition(text, text, text) IS
    'The definition of a job (no row when it has none): what run() and runners read instead of the table.';

CREATE VIEW lease_sched.job_definitions AS
SELECT job_name, scope_kind, scope_id, every, misfire, grace, max_attempts, stale_timeout, paused, paused_at,
       resumed_at, created_at, updated_at, cron, timezone
  FROM lease_sched.jobs;
COMMENT ON VIEW lease_sched.job_definitions IS 'Job definitions (lease_sched.jobs), for readers.';

-- The dead-man's switch: one row per defined job and scope. `success_due_by` is when the
-- next SUCCESS is due: the first slot after the last successful plan (or after the
-- definition was created, or the job resumed, when later), plus grace + stale_timeout,
-- plus every for an interval job (its slot may run anywhere in its bucket). `overdue`:
-- not paused and the database clock is past it. `swept`: a background worker sweeps this
-- database (if not, a dead runner's lease is never failed).
CREATE VIEW lease_sched.job_health AS
SELECT j.job_name, j.scope_kind, j.scope_id, j.every, j.misfire, j.paused,
       s.plan_time AS last_success_plan, s.finished_at AS last_success_at,
       l.plan_time AS last_plan, l.status AS last_status, l.error_code AS last_error_code,
       f.consecutive_failures, k.skipped_24h,
       d.success_due_by,
       NOT j.paused AND clock_timestamp() > d.success_due_by AS overdue,
       w.swept,
       j.cron, j.timezone
  FROM lease_sched.jobs j
  CROSS JOIN lease_sched.sweeper_status() w
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
       SELECT CASE WHEN j.cron IS NULL
                   THEN date_bin(j.every, greatest(s.plan_time, j.created_at, j.resumed_at), timestamptz 'epoch')
                        + j.every + j.every
                   ELSE lease_sched.cron_next_slot(j.cron_spec, j.timezone, greatest(s.plan_time, j.created_at, j.resumed_at))
              END + coalesce(j.grace, interval '0') + j.stale_timeout AS success_due_by) d;
COMMENT ON VIEW lease_sched.job_health IS
    'Per defined job and scope: last success, last status, consecutive failures, skipped slots in 24 h, overdue (no SUCCESS within every + grace + stale_timeout of a due slot), and swept (a background worker sweeps this database).';

REVOKE ALL ON lease_sched.jobs, lease_sched.job_triggers, lease_sched.job_definitions, lease_sched.job_health FROM PUBLIC;
