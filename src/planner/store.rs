//! Every SQL statement of the planner, each statement that returns rows beside the
//! decoder of its row (`Query`): its read of `sys_cron_executions` (the latest plan), its
//! inserts there (skipped slots), and its call of the calendar planner. The lease
//! subsystem's statements on that table are in src/lease/store.rs.
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::{INTERVALOID, TEXTOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZOID};

use crate::spi_plans::{Query, Statement};
use lease_model::planner::LatestPlan;
use lease_model::Status;

/// The latest execution of (job, scope) by plan_time at or before $4, through the unique
/// index. The plans of job_trigger ("run now") are not the schedule's cursor.
pub static LATEST: Query<LatestPlan> = Query {
    statement: Statement {
        sql: "SELECT e.plan_time, e.status, e.attempt, e.max_attempts, e.next_retry_at, e.stale_after
                FROM lease_sched.sys_cron_executions e
               WHERE e.job_name = $1 AND e.scope_kind = $2 AND e.scope_id = $3 AND e.plan_time <= $4
                 AND NOT EXISTS (SELECT 1 FROM lease_sched.job_triggers t
                                  WHERE t.job_name = $1 AND t.scope_kind = $2 AND t.scope_id = $3
                                    AND t.plan_time = e.plan_time)
               ORDER BY e.plan_time DESC LIMIT 1",
        arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
    },
    row: |r| {
        let ts = |i| r.get::<TimestampWithTimeZone>(i).ok().flatten().map(|t| t.into_inner());
        Some(LatestPlan {
            plan_time: ts(1)?,
            status: Status::from_sql(r.get::<&str>(2).ok()??)?,
            attempt: r.get(3).ok()??,
            max_attempts: r.get(4).ok()??,
            next_retry_at: ts(5),
            stale_after: ts(6),
        })
    },
};

/// The planner of a job defined with cron (sql/schedule.sql).
pub static CALENDAR_NEXT_PLAN: Statement =
    Statement { sql: "SELECT lease_sched.calendar_next_plan($1, $2, $3)", arg_types: &[TEXTOID, TEXTOID, TEXTOID] };

/// Skipped slots: final rows nobody holds (attempt 1 of max_attempts 1, so retention
/// treats them as finished), `error_code` = the reason. Each gets a fencing token from the
/// sequence like every row (so tokens stay unique across the table), never granted to
/// anyone. ON CONFLICT DO
/// NOTHING: a slot someone claimed meanwhile keeps its row. At most
/// `MAX_SKIPS_PER_CALL` slots per call; the row locks last until the caller's
/// transaction ends (the statement, in autocommit).
pub static SKIP: Statement = Statement {
    sql: "INSERT INTO lease_sched.sys_cron_executions (
              job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts, runner_id,
              lease_token, fencing_token, allow_stale_reentry, stale_timeout, started_at, finished_at,
              duration_ms, error_code, error_msg, updated_at)
          SELECT $1, $2, $3, t.plan_time, 'SKIPPED', 1, 1, 'lease_sched planner',
                 gen_random_uuid(), nextval('lease_sched.fencing_token_seq'), false, $5, $6, $6, 0, $7, $8, $6
            FROM unnest($4::timestamptz[]) AS t(plan_time)
          ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZARRAYOID, INTERVALOID, TIMESTAMPTZOID, TEXTOID, TEXTOID],
};
