//! lease_latest_plan and lease_next_plan (declared in sql/planner.sql).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use super::args::{non_empty, positive_interval, required};
use crate::error::invalid_argument;
use crate::lease::{db_clock, timestamptz};
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
        required(scope_id, "scope_id"),
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
    let every = positive_interval(every, "every");
    if every.months() != 0 {
        invalid_argument("every", "must not contain months or years", Some("Use days instead, e.g. '30 days'."));
    }
    let stride = every.days() as i64 * 86_400_000_000 + every.micros();
    if stride <= 0 {
        invalid_argument("every", "must be positive", None);
    }
    let now = db_clock();
    let latest = planner::latest_plan(job_name, non_empty(scope_kind, "scope_kind"), required(scope_id, "scope_id"), now);
    let catch_up = required(catch_up, "catch_up");
    planner::next_plan(latest.as_ref(), stride, now, catch_up).map(timestamptz)
}
