//! The planner: which plan_time a runner should claim now for a job that runs every
//! `every`, and, for a job with a definition (`job_define`), which missed slots to record
//! as SKIPPED first. The decisions are pure functions in `lease_model::planner` (unit-tested
//! and model-checked there); this module picks which one applies (`next_plan_to_claim`),
//! reads the latest execution row and writes the skipped slots.
mod store;

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use crate::clock::{db_clock, stride, timestamptz};
use crate::error::invalid_argument;
use crate::spi_plans::execute;
pub use lease_model::planner::{decide, next_plan, Decision, LatestPlan, Misfire, Policy, SkipReason};
use lease_model::DbTime;

/// What a job's definition (`lease_sched.jobs`, read by the caller) says about its plans.
pub struct Definition {
    /// None for a job defined with cron.
    pub every: Option<Interval>,
    /// Defined with cron: its calendar decides its plans.
    pub calendar: bool,
    pub misfire: Misfire,
    pub grace: Option<Interval>,
    pub stale_timeout: Interval,
    pub paused: bool,
    pub resumed_at: Option<TimestampWithTimeZone>,
    /// The oldest job_trigger plan still to run (not while paused).
    pub pending_trigger: Option<TimestampWithTimeZone>,
}

/// `lease_next_plan`: the plan_time to claim now, if any, for (job, scope). `every` is the
/// caller's stride (checked positive, without months), `definition` the job's, if it has
/// one. Without a definition this is exactly the 0.1 planner (`every` required); with one,
/// a pending "run now" plan goes first, then the calendar or the misfire policy decides,
/// and the slots that policy skips are recorded as SKIPPED.
pub fn next_plan_to_claim(
    job_name: &str,
    scope_kind: &str,
    scope_id: &str,
    every: Option<i64>,
    catch_up: bool,
    definition: Option<Definition>,
) -> Option<TimestampWithTimeZone> {
    let now = db_clock();
    let latest = latest_plan(job_name, scope_kind, scope_id, now);
    let Some(d) = definition else {
        // No definition: exactly the 0.1 planner.
        let every = every.unwrap_or_else(|| {
            invalid_argument(
                "every",
                "must be given for a job without a definition",
                Some("Pass every => '...', or define the job once with lease_sched.job_define."),
            )
        });
        return next_plan(latest.as_ref(), every, now, catch_up).map(timestamptz);
    };
    // A "run now" plan (job_trigger) goes first; none is offered while paused.
    if let Some(t) = d.pending_trigger {
        return Some(t);
    }
    // A calendar job: the one implementation of calendars, in SQL (sql/schedule.sql).
    if d.calendar {
        if every.is_some() {
            invalid_argument(
                "every",
                "must not be given for a job defined with cron",
                Some("Leave every NULL: the job's calendar decides its plans."),
            );
        }
        return calendar_next_plan(job_name, scope_kind, scope_id);
    }
    // A definition: its misfire policy (catch_up does not apply), its every unless one
    // is given here.
    let defined_every =
        d.every.unwrap_or_else(|| invalid_argument("every", "is missing from the job's definition", None));
    let policy = Policy {
        // An override below a second would make each call record up to 1000 SKIPPED slots
        // and run none of them, as job_define's own bound explains.
        every: every
            .inspect(|&e| {
                if e < crate::clock::MICROS_PER_SECOND {
                    invalid_argument("every", "must be at least 1 second for a job with a definition", None);
                }
            })
            .unwrap_or_else(|| stride(defined_every, "every")),
        misfire: d.misfire,
        grace: d.grace.map(|g| stride(g, "grace")),
        paused: d.paused,
        resumed_at: d.resumed_at.map(|t| t.into_inner()),
    };
    let decision = decide(latest.as_ref(), now, &policy);
    record_skips(job_name, scope_kind, scope_id, &decision, &policy, d.stale_timeout, now);
    decision.run.map(timestamptz)
}

/// The latest execution of (job, scope) by plan_time at or before `now`, through the
/// unique index. A row planned in the future (a claim with a plan_time ahead of the
/// clock) is not the cursor: it neither silences the job until then nor is offered early.
pub fn latest_plan(job_name: &str, scope_kind: &str, scope_id: &str, now: DbTime) -> Option<LatestPlan> {
    let now = timestamptz(now);
    Spi::connect_mut(|client| {
        store::LATEST.first(client, &[job_name.into(), scope_kind.into(), scope_id.into(), now.into()])
    })
}

/// The plan of a job defined with cron, decided by `lease_sched.calendar_next_plan`
/// (sql/schedule.sql), which also records its skipped slots.
fn calendar_next_plan(job_name: &str, scope_kind: &str, scope_id: &str) -> Option<TimestampWithTimeZone> {
    Spi::connect_mut(|client| {
        crate::token_floor::ensure_token_floor(client);
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
fn record_skips(
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
        crate::token_floor::ensure_token_floor(client);
        for range in &decision.skip {
            let slots: Vec<TimestampWithTimeZone> = range.slots(policy.every).map(timestamptz).collect();
            execute(
                client,
                &store::SKIP,
                &[
                    job_name.into(),
                    scope_kind.into(),
                    scope_id.into(),
                    slots.into(),
                    stale_timeout.into(),
                    timestamptz(now).into(),
                    range.reason.as_sql().into(),
                    skip_message(range.reason, policy).into(),
                ],
            );
        }
    });
}
