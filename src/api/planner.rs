//! lease_latest_plan and lease_next_plan (declared in sql/planner.sql).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use super::args::{short_name, non_empty, positive_interval, required, stride};
use crate::error::invalid_argument;
use crate::jobs::{self, JobKey};
use crate::clock::{db_clock, timestamptz};
use crate::planner;

#[pg_extern(sql = false)]
fn lease_latest_plan(
    job_name: Option<&str>,
    scope_kind: Option<&str>,
    scope_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(plan_time, TimestampWithTimeZone),
        name!(status, String),
        name!(attempt, i32),
        name!(max_attempts, i32),
        name!(next_retry_at, Option<TimestampWithTimeZone>),
        name!(retry_eligible, bool),
    ),
> {
    let now = db_clock();
    let latest = planner::latest_plan(
        non_empty(job_name, "job_name"),
        non_empty(scope_kind, "scope_kind"),
        short_name(scope_id, "scope_id"),
        now,
    );
    TableIterator::new(latest.map(|l| {
        (
            timestamptz(l.plan_time),
            l.status.as_sql().to_string(),
            l.attempt,
            l.max_attempts,
            l.next_retry_at.map(timestamptz),
            l.retry_eligible(now),
        )
    }))
}

#[pg_extern(sql = false)]
fn lease_next_plan(
    job_name: Option<&str>,
    every: Option<Interval>,
    scope_kind: Option<&str>,
    scope_id: Option<&str>,
    catch_up: Option<bool>,
) -> Option<TimestampWithTimeZone> {
    let job_name = non_empty(job_name, "job_name");
    let every = every.map(|e| stride(positive_interval(Some(e), "every"), "every"));
    let scope_kind = non_empty(scope_kind, "scope_kind");
    let scope_id = short_name(scope_id, "scope_id");
    let catch_up = required(catch_up, "catch_up");
    let definition = jobs::definition(&JobKey { job_name, scope_kind, scope_id });
    let now = db_clock();
    let latest = planner::latest_plan(job_name, scope_kind, scope_id, now);
    let Some(d) = definition else {
        // No definition: exactly the 0.1 planner.
        let every = every.unwrap_or_else(|| {
            invalid_argument(
                "every",
                "must be given for a job without a definition",
                Some("Pass every => '...', or define the job once with lease_sched.job_define."),
            )
        });
        return planner::next_plan(latest.as_ref(), every, now, catch_up).map(timestamptz);
    };
    // A "run now" plan (job_trigger) goes first; none is offered while paused.
    if let Some(t) = d.pending_trigger {
        return Some(t);
    }
    // A calendar job: the one implementation of calendars, in SQL (sql/schedule.sql).
    if d.cron.is_some() {
        if every.is_some() {
            invalid_argument(
                "every",
                "must not be given for a job defined with cron",
                Some("Leave every NULL: the job's calendar decides its plans."),
            );
        }
        return planner::calendar_next_plan(job_name, scope_kind, scope_id);
    }
    // A definition: its misfire policy (catch_up does not apply), its every unless one
    // is given here.
    let defined_every = d.every.unwrap_or_else(|| invalid_argument("every", "is missing from the job's definition", None));
    let policy = planner::Policy {
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
    let decision = planner::decide(latest.as_ref(), now, &policy);
    planner::record_skips(job_name, scope_kind, scope_id, &decision, &policy, d.stale_timeout, now);
    decision.run.map(timestamptz)
}
