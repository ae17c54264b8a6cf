//! lease_latest_plan and lease_next_plan (declared in sql/planner.sql).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use super::args::{job_key, non_empty, positive_interval, required, short_name, stride};
use crate::clock::{db_clock, timestamptz};
use crate::jobs::{self, JobKey};
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
    let key = job_key(job_name, scope_kind, scope_id);
    let latest = planner::latest_plan(key.job_name, key.scope_kind, key.scope_id, now);
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
    let definition = jobs::definition(&JobKey { job_name, scope_kind, scope_id }).map(|d| planner::Definition {
        every: d.every,
        calendar: d.cron.is_some(),
        misfire: d.misfire,
        grace: d.grace,
        stale_timeout: d.stale_timeout,
        paused: d.paused,
        resumed_at: d.resumed_at,
        pending_trigger: d.pending_trigger,
    });
    planner::next_plan_to_claim(job_name, scope_kind, scope_id, every, catch_up, definition)
}
