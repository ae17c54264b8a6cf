//! The planner: which plan_time a runner should claim now for a job that runs every
//! `every`, and, for a job with a definition (`job_define`), which missed slots to record
//! as SKIPPED first. The decisions are pure functions in `lease_model::planner` (unit-tested
//! and model-checked there); this module reads the latest execution row and writes the
//! skipped slots.
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::{INTERVALOID, TEXTOID, TIMESTAMPTZARRAYOID, TIMESTAMPTZOID};
use pgrx::prelude::*;

pub use lease_model::planner::{decide, next_plan, Decision, LatestPlan, Policy, SkipReason};
use lease_model::{DbTime, Status};
use crate::spi_plans::{execute, Statement};

static LATEST: Statement = Statement {
    sql: "SELECT plan_time, status, attempt, max_attempts, next_retry_at, stale_after
            FROM lease_sched.sys_cron_executions
           WHERE job_name = $1 AND scope_kind = $2 AND scope_id = $3 AND plan_time <= $4
           ORDER BY plan_time DESC LIMIT 1",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
};

/// The latest execution of (job, scope) by plan_time at or before `now`, through the
/// unique index. A row planned in the future (a claim with a plan_time ahead of the
/// clock) is not the cursor: it neither silences the job until then nor is offered early.
pub fn latest_plan(job_name: &str, scope_kind: &str, scope_id: &str, now: DbTime) -> Option<LatestPlan> {
    Spi::connect_mut(|client| {
        let t = execute(
            client,
            &LATEST,
            &[job_name.into(), scope_kind.into(), scope_id.into(), crate::clock::timestamptz(now).into()],
        );
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        let ts = |i| r.get::<TimestampWithTimeZone>(i).unwrap().map(|t| t.into_inner());
        Some(LatestPlan {
            plan_time: ts(1)?,
            status: Status::from_sql(r.get::<&str>(2).unwrap()?)?,
            attempt: r.get(3).unwrap()?,
            max_attempts: r.get(4).unwrap()?,
            next_retry_at: ts(5),
            stale_after: ts(6),
        })
    })
}

/// Skipped slots: final rows nobody holds (attempt 1 of max_attempts 1, so retention
/// treats them as finished), `error_code` = the reason. Each gets a fencing token from the
/// sequence like every row (so tokens stay unique across the table), never granted to
/// anyone. ON CONFLICT DO
/// NOTHING: a slot someone claimed meanwhile keeps its row. At most
/// `MAX_SKIPS_PER_CALL` slots per call; the row locks last until the caller's
/// transaction ends (the statement, in autocommit).
static SKIP: Statement = Statement {
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

fn skip_message(reason: SkipReason, policy: &Policy) -> String {
    match reason {
        SkipReason::Misfire => format!("missed slot skipped by misfire policy '{}'", policy.misfire.as_sql()),
        SkipReason::Paused => "due while the job was paused".to_string(),
        SkipReason::Grace => "missed slot older than now - grace".to_string(),
    }
}

/// Write the SKIPPED rows of a decision.
pub fn record_skips(
    job_name: &str,
    scope_kind: &str,
    scope_id: &str,
    decision: &Decision,
    policy: &Policy,
    stale_timeout: Interval,
    now: DbTime,
) {
    if decision.skip.is_empty() {
        return;
    }
    Spi::connect_mut(|client| {
        crate::fencing::ensure_token_floor(client);
        for range in &decision.skip {
            let slots: Vec<TimestampWithTimeZone> =
                range.slots(policy.every).map(crate::clock::timestamptz).collect();
            execute(
                client,
                &SKIP,
                &[
                    job_name.into(),
                    scope_kind.into(),
                    scope_id.into(),
                    slots.into(),
                    stale_timeout.into(),
                    crate::clock::timestamptz(now).into(),
                    range.reason.as_sql().into(),
                    skip_message(range.reason, policy).into(),
                ],
            );
        }
    });
}
