-- The catch-up planner (src/planner/) and the pg_cron-friendly runner procedure.

CREATE FUNCTION lease_sched.lease_latest_plan(job_name text, scope_kind text DEFAULT 'global', scope_id text DEFAULT '')
RETURNS TABLE (plan_time timestamptz, status text, attempt int, max_attempts int, next_retry_at timestamptz,
               retry_eligible boolean)
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
ROWS 1
AS 'MODULE_PATHNAME', 'lease_latest_plan_wrapper';
COMMENT ON FUNCTION lease_sched.lease_latest_plan(text, text, text) IS
    'The latest execution of a job by plan_time (no row when none), and whether it is a retry due now.';

CREATE FUNCTION lease_sched.lease_next_plan(job_name text, every interval DEFAULT NULL, scope_kind text DEFAULT 'global',
                                            scope_id text DEFAULT '', catch_up boolean DEFAULT true)
RETURNS timestamptz
LANGUAGE c VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'lease_next_plan_wrapper';
COMMENT ON FUNCTION lease_sched.lease_next_plan(text, interval, text, text, boolean) IS
    'The plan_time to claim now (buckets of date_bin(every, t, ''epoch'')), or NULL when nothing is due. A job with a definition (job_define) follows it: every by default, its misfire policy and grace (skipped slots are recorded SKIPPED), nothing while paused.';
