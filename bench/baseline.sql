-- The baseline: the schema users write by hand today for the two jobs lease_sched does,
-- in schema `baseline`. bench/run.sh loads it next to CREATE EXTENSION lease_sched and
-- runs the same workloads against both (bench/base_*.sql hold the hand-written statements).
--
-- Deliberate choices (docs/benchmarks.md, "The baseline", says why):
--   * executions: primary key on id and the unique key on (job_name, scope_kind, scope_id,
--     plan_time) -- what the claim's ON CONFLICT needs -- and nothing else. No index on
--     stale_after or status: that is the choice most favourable to the baseline's
--     heartbeat (it can stay a HOT update), so the comparison is about the statements, not
--     about an index we chose to make the baseline slow. Default fillfactor (100): users
--     rarely tune it.
--   * runtimes: an index on last_seen_at, as the production system that inspired
--     lease_sched had (its "who is silent" query used it). That index is what turns every
--     per-beat UPDATE into a non-HOT update.
--   * now() (transaction start) as the clock, as hand-written SQL does.

CREATE SCHEMA baseline;

-- Fencing tokens: one ordinary sequence.
CREATE SEQUENCE baseline.fencing_token_seq;

CREATE TABLE baseline.sys_cron_executions (
    id                  uuid        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    job_name            text        NOT NULL,
    scope_kind          text        NOT NULL DEFAULT 'global',
    scope_id            text        NOT NULL DEFAULT '',
    plan_time           timestamptz NOT NULL,
    status              text        NOT NULL CHECK (status IN ('RUNNING', 'SUCCESS', 'FAILED')),
    attempt             int         NOT NULL DEFAULT 1,
    max_attempts        int         NOT NULL DEFAULT 3,
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
    CONSTRAINT uq_baseline_execution UNIQUE (job_name, scope_kind, scope_id, plan_time)
);

CREATE TABLE baseline.runtimes (
    id            uuid        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    name          text        NOT NULL,
    status        text        NOT NULL DEFAULT 'online',
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    registered_at timestamptz NOT NULL DEFAULT now(),
    metadata      jsonb       NOT NULL DEFAULT '{}'
);

-- "Which runtimes went silent?" -- the index the production system had.
CREATE INDEX runtimes_last_seen_at_idx ON baseline.runtimes (last_seen_at);
