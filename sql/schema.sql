-- lease_sched schema: tables, indexes and the fencing sequence.
-- Loaded first by CREATE EXTENSION; the schema itself is created from the control file.

-- One sequence hands out every fencing token (leases and locks alike). CACHE 1, so
-- tokens increase in real-time order across sessions; a sequence is WAL-logged ahead
-- of use, so tokens keep increasing across crashes and restarts too.
CREATE SEQUENCE lease_sched.fencing_token_seq AS bigint CACHE 1 NO CYCLE;

CREATE TABLE lease_sched.sys_cron_executions (
    id                  uuid        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    job_name            text        NOT NULL,
    scope_kind          text        NOT NULL DEFAULT 'global',
    scope_id            text        NOT NULL DEFAULT '',
    plan_time           timestamptz NOT NULL,
    status              text        NOT NULL,
    attempt             int         NOT NULL DEFAULT 1,
    max_attempts        int         NOT NULL,
    runner_id           text        NOT NULL,
    lease_token         uuid        NOT NULL,
    fencing_token       bigint      NOT NULL,
    allow_stale_reentry boolean     NOT NULL DEFAULT true,
    stale_timeout       interval    NOT NULL,
    heartbeat_at        timestamptz,
    stale_after         timestamptz,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz,
    duration_ms         bigint,
    next_retry_at       timestamptz,
    error_code          text,
    error_msg           text,
    rows_affected       bigint,
    result              jsonb,
    updated_at          timestamptz NOT NULL,
    CONSTRAINT uq_sys_cron_execution UNIQUE (job_name, scope_kind, scope_id, plan_time)
    -- No CHECK constraint, on purpose. PostgreSQL re-reads (stringToNode) and re-plans every
    -- CHECK of a table for each statement that writes it, heartbeats included: one CHECK on
    -- status and attempt cost a heartbeat 68,000 of its 248,000 instructions (bench/profile.sh,
    -- docs/benchmarks.md). Only the extension's functions write this table (no role is
    -- granted more than SELECT), and they keep the invariants themselves: status is one of
    -- RUNNING, SUCCESS, FAILED, SKIPPED, and 1 <= attempt <= max_attempts (checked by the
    -- model in crates/lease_model and by the torture checker after every run).
)
-- Room on each page so a heartbeat's new row version fits beside the old one (HOT).
WITH (fillfactor = 70);

COMMENT ON TABLE lease_sched.sys_cron_executions IS
    'One row per (job_name, scope_kind, scope_id, plan_time): the lease and outcome of one scheduled run.';

-- Heartbeats write heartbeat_at, stale_after and updated_at. None of them is indexed, and
-- no index predicate names them, so every heartbeat can be a HOT update.
--
-- The sweeper finds RUNNING leases through this partial index: it holds only running
-- rows, and its key (id) never changes, so its size follows the live work, not history.
CREATE INDEX sys_cron_executions_running_idx
    ON lease_sched.sys_cron_executions (id) WHERE status = 'RUNNING';

-- Retention pruning walks finished rows oldest first; a heartbeat never touches these.
CREATE INDEX sys_cron_executions_finished_idx
    ON lease_sched.sys_cron_executions (finished_at) WHERE status <> 'RUNNING';

-- pg_dump keeps the rows (and the sequence position, so tokens stay increasing after a restore).
SELECT pg_catalog.pg_extension_config_dump('lease_sched.sys_cron_executions', '');
SELECT pg_catalog.pg_extension_config_dump('lease_sched.fencing_token_seq', '');

-- Nothing is reachable without an explicit grant (see docs/api.md, "Privileges").
REVOKE ALL ON SCHEMA lease_sched FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA lease_sched FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA lease_sched FROM PUBLIC;
