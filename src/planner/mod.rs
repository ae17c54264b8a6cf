//! The planner: which plan_time a runner should claim now for a job that runs every
//! `every`, and, for a job with a definition (`job_define`), which missed slots to record
//! as SKIPPED first. The decisions are pure functions in `lease_model::planner` (unit-tested
//! and model-checked there); this module reads the latest execution row and writes the
//! skipped slots.
mod store;

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

pub use lease_model::planner::{decide, next_plan, Decision, LatestPlan, Policy, SkipReason};
use lease_model::DbTime;
use crate::spi_plans::execute;

/// The latest execution of (job, scope) by plan_time at or before `now`, through the
/// unique index. A row planned in the future (a claim with a plan_time ahead of the
/// clock) is not the cursor: it neither silences the job until then nor is offered early.
pub fn latest_plan(job_name: &str, scope_kind: &str, scope_id: &str, now: DbTime) -> Option<LatestPlan> {
    let now = crate::clock::timestamptz(now);
    Spi::connect_mut(|client| {
        store::LATEST.first(client, &[job_name.into(), scope_kind.into(), scope_id.into(), now.into()])
    })
}

/// The plan of a job defined with cron, decided by `lease_sched.calendar_next_plan`
/// (sql/schedule.sql), which also records its skipped slots.
pub fn calendar_next_plan(job_name: &str, scope_kind: &str, scope_id: &str) -> Option<TimestampWithTimeZone> {
    Spi::connect_mut(|client| {
        crate::fencing::ensure_token_floor(client);
        execute(client, &store::CALENDAR_NEXT_PLAN, &[job_name.into(), scope_kind.into(), scope_id.into()])
            .first()
            .get::<TimestampWithTimeZone>(1)
            .ok()
            .flatten()
    })
}

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
                &store::SKIP,
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
