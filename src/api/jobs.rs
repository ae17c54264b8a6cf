//! job_define, job_pause, job_resume, job_drop and job_definition (declared in sql/jobs.sql).
use pgrx::datum::Interval;
use pgrx::prelude::*;

use super::args::{at_least_one, interval_in_range, job_key, non_empty, positive_interval, required, stride};
use crate::error::invalid_argument;
use crate::jobs::{self, Settings};
use lease_model::planner::Misfire;

#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn job_define_every_or_cron(
    job_name: Option<&str>,
    every: Option<Interval>,
    misfire: Option<&str>,
    grace: Option<Interval>,
    max_attempts: Option<i32>,
    stale_timeout: Option<Interval>,
    scope_kind: Option<&str>,
    scope_id: Option<&str>,
    cron: Option<&str>,
    timezone: Option<&str>,
) -> bool {
    let job_name = non_empty(job_name, "job_name");
    // The schedule: every interval, or a cron calendar (parsed and checked by the SQL
    // that stores it, sql/calendar.sql), never both.
    let every = match (every, cron) {
        (Some(_), Some(_)) | (None, None) => invalid_argument(
            "cron",
            "and every: give exactly one of them",
            Some("every => '1 hour' runs in buckets from the epoch; cron => '0 3 * * *' on a calendar in timezone."),
        ),
        (Some(every), None) => Some(every),
        (None, Some(_)) => None,
    };
    if let Some(every) = every {
        positive_interval(Some(every), "every");
        // A slot shorter than a second cannot be run in time by any scheduler, and its missed
        // slots (one SKIPPED row each, at most 1000 per call) would pile up faster than calls
        // can record them: the job would never run again after a gap.
        if stride(every, "every") < crate::clock::MICROS_PER_SECOND {
            invalid_argument("every", "must be at least 1 second for a job definition", None);
        }
    }
    let timezone = required(timezone, "timezone");
    let misfire = Misfire::from_sql(required(misfire, "misfire")).unwrap_or_else(|| {
        invalid_argument("misfire", "must be 'all', 'latest' or 'skip'", Some("See docs/api.md, \"Jobs\"."))
    });
    let grace = grace.inspect(|&g| {
        interval_in_range(g, "grace", false);
        stride(g, "grace");
    });
    let max_attempts = at_least_one(max_attempts, "max_attempts");
    let stale_timeout = positive_interval(stale_timeout, "stale_timeout");
    let key = job_key(Some(job_name), scope_kind, scope_id);
    jobs::define(&Settings { every, cron, timezone, misfire, grace, max_attempts, stale_timeout, key })
}

#[pg_extern(sql = false)]
fn job_pause(job_name: Option<&str>, scope_kind: Option<&str>, scope_id: Option<&str>) -> bool {
    jobs::pause(&job_key(job_name, scope_kind, scope_id))
}

#[pg_extern(sql = false)]
fn job_resume(job_name: Option<&str>, scope_kind: Option<&str>, scope_id: Option<&str>) -> bool {
    jobs::resume(&job_key(job_name, scope_kind, scope_id))
}

#[pg_extern(sql = false)]
fn job_drop(job_name: Option<&str>, scope_kind: Option<&str>, scope_id: Option<&str>) -> bool {
    jobs::drop(&job_key(job_name, scope_kind, scope_id))
}

/// The definition of one job, for runners (and run()) that may not read the table.
#[pg_extern(sql = false)]
// The SQL-facing signature: pgrx reads the result's column names from this type, so it
// cannot hide behind a type alias.
#[allow(clippy::type_complexity)]
fn job_definition(
    job_name: Option<&str>,
    scope_kind: Option<&str>,
    scope_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(every, Option<Interval>),
        name!(misfire, String),
        name!(grace, Option<Interval>),
        name!(max_attempts, i32),
        name!(stale_timeout, Interval),
        name!(paused, bool),
        name!(cron, Option<String>),
        name!(timezone, String),
    ),
> {
    let d = jobs::definition(&job_key(job_name, scope_kind, scope_id));
    TableIterator::new(d.map(|d| {
        (
            d.every,
            d.misfire.as_sql().to_string(),
            d.grace,
            d.max_attempts,
            d.stale_timeout,
            d.paused,
            d.cron,
            d.timezone,
        )
    }))
}

// 0.2.0's entry point (eight arguments, no calendar). `ALTER EXTENSION lease_sched UPDATE`
// re-creates job_define on job_define_every_or_cron; until it has run, a database still on
// 0.2.0's SQL reaches this symbol, which refuses with the instruction instead of reading
// arguments of another shape.
#[pg_extern(sql = false)]
fn job_define() -> bool {
    crate::error::schema_out_of_date()
}
