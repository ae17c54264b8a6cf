-- The lease API: claim, heartbeat, finish. Implemented in Rust (src/api/lease.rs).
-- Every function is SECURITY DEFINER, so a runner role needs only EXECUTE (never table
-- privileges). These three pin no search_path: a SET clause saves, sets and restores the
-- setting on every call (about 13,000 instructions, 6 % of a heartbeat; docs/benchmarks.md).
-- Their statements (src/lease/store.rs) name every object and operator with its schema
-- instead, so a hostile search_path cannot redirect them either.
-- None is STRICT: a NULL argument is an error that names it, never a silent NULL.

-- The claim's one row. A named composite type, not RETURNS TABLE or OUT parameters: the
-- executor then calls the function once per statement, without the set-returning
-- protocol, and finds its result's shape in the type cache instead of rebuilding it from
-- pg_proc for every statement (docs/benchmarks.md, "0.3.0 levers").
CREATE TYPE lease_sched.claim_result AS (
    outcome       text,
    execution_id  uuid,
    lease_token   uuid,
    attempt       int,
    fencing_token bigint,
    stale_after   timestamptz
);
COMMENT ON TYPE lease_sched.claim_result IS 'The row lease_try_claim returns.';

CREATE FUNCTION lease_sched.lease_try_claim(
    job_name            text,
    plan_time           timestamptz,
    runner_id           text,
    scope_kind          text     DEFAULT 'global',
    scope_id            text     DEFAULT '',
    stale_timeout       interval DEFAULT '5 minutes',
    max_attempts        int      DEFAULT 3,
    allow_stale_reentry boolean  DEFAULT true
)
RETURNS lease_sched.claim_result
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'lease_try_claim_wrapper';
COMMENT ON FUNCTION lease_sched.lease_try_claim(text, timestamptz, text, text, text, interval, int, boolean) IS
    'Claim one scheduled run: won (new row), stole (stale RUNNING lease or due FAILED retry), or conflicted. Always one row.';

CREATE FUNCTION lease_sched.lease_heartbeat(
    execution_id uuid,
    lease_token  uuid
)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'lease_heartbeat_wrapper';
COMMENT ON FUNCTION lease_sched.lease_heartbeat(uuid, uuid) IS
    'Extend a held lease to now + its stale_timeout; false when the lease is lost.';

CREATE FUNCTION lease_sched.lease_finish(
    execution_id  uuid,
    lease_token   uuid,
    status        text,
    result        jsonb    DEFAULT NULL,
    rows_affected bigint   DEFAULT NULL,
    error_code    text     DEFAULT NULL,
    error_msg     text     DEFAULT NULL,
    retry_in      interval DEFAULT NULL
)
RETURNS boolean
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER
AS 'MODULE_PATHNAME', 'lease_finish_wrapper';
COMMENT ON FUNCTION lease_sched.lease_finish(uuid, uuid, text, jsonb, bigint, text, text, interval) IS
    'Write the terminal SUCCESS or FAILED state of a held lease; false (and nothing written) when the lease is lost.';

-- The default retry delay, the one definition used by lease_finish and the sweep (their
-- statements call it) and checked by the model (crates/lease_model, retry_backoff).
CREATE FUNCTION lease_sched.retry_backoff(attempt int, base interval, max interval)
RETURNS interval
LANGUAGE c IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'retry_backoff_wrapper';
COMMENT ON FUNCTION lease_sched.retry_backoff(int, interval, interval) IS
    'base * 2^(attempt-1), saturating at max for any attempt (never overflows): the default delay before a FAILED run may be retried.';
