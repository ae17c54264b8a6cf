//! Argument checks shared by the SQL functions. Each failure is an ERROR with a class-22
//! SQLSTATE whose message names the argument, raised before anything is written.
use pgrx::datum::{Interval, TimestampWithTimeZone};

use crate::error::{invalid_argument, null_argument};
use crate::jobs::JobKey;

pub fn required<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| null_argument(name))
}

/// The longest name accepted (job, scope, lock, runner, holder, runtime names), in bytes.
/// Keys of three such names and a plan time must fit one btree index entry (at most about
/// 2.7 kB); anything longer would fail deep inside an INSERT with a message naming no
/// argument, or, worse, be accepted by job_define and then never be claimable.
pub const NAME_MAX_BYTES: usize = 512;

fn short_enough<'a>(value: &'a str, name: &str) -> &'a str {
    if value.len() > NAME_MAX_BYTES {
        invalid_argument(name, &format!("must be at most {NAME_MAX_BYTES} bytes (it is {})", value.len()), None);
    }
    value
}

pub fn non_empty<'a>(value: Option<&'a str>, name: &str) -> &'a str {
    let value = required(value, name);
    if value.is_empty() {
        invalid_argument(name, "must not be empty", None);
    }
    short_enough(value, name)
}

/// A name that may be empty (scope_id), with the same length limit.
pub fn short_name<'a>(value: Option<&'a str>, name: &str) -> &'a str {
    short_enough(required(value, name), name)
}

/// A job and its scope, as every function taking them checks them.
pub fn job_key<'a>(job_name: Option<&'a str>, scope_kind: Option<&'a str>, scope_id: Option<&'a str>) -> JobKey<'a> {
    JobKey {
        job_name: non_empty(job_name, "job_name"),
        scope_kind: non_empty(scope_kind, "scope_kind"),
        scope_id: short_name(scope_id, "scope_id"),
    }
}

pub fn finite_time(value: Option<TimestampWithTimeZone>, name: &str) -> TimestampWithTimeZone {
    let value = required(value, name);
    if !value.is_finite() {
        invalid_argument(name, "must be a finite timestamp", None);
    }
    value
}

/// The longest interval accepted anywhere (lease lifetimes, retry delays, lock TTLs).
/// Far beyond any sane lease, and far from timestamp overflow.
const MAX_INTERVAL_MICROS: i128 = 366 * crate::clock::MICROS_PER_DAY as i128;

/// An interval argument that becomes an instant (`now + value`) or a stride. PostgreSQL
/// compares intervals by their total (a month counting 30 days) but adds them part by part
/// (months, then days, then time), so a value whose parts have opposite signs can pass a
/// check of its total and still overflow or land before now when added (`'106751992 days
/// -2562047784 hours'` is one day in total). So every part must have the sign the total
/// must have, and no months: a month has no fixed length, and `'1 month'` would not be the
/// 30 days its total says. An infinite interval (PostgreSQL 17+) has infinite months, and
/// is refused with them. With non-negative days and time whose total is at most 366 days,
/// `now + value` is exactly now plus the days (calendar days, in the session's time zone)
/// plus the time, and always far from the end of the timestamp range.
pub fn interval_in_range(value: Interval, name: &str, allow_zero: bool) -> Interval {
    if value.months() != 0 {
        invalid_argument(name, "must not contain months or years", Some("Use days instead, e.g. '30 days'."));
    }
    let micros = value.as_micros();
    let ok_low = if allow_zero { micros >= 0 } else { micros > 0 };
    if !ok_low {
        let bound = if allow_zero { "must not be negative" } else { "must be positive" };
        invalid_argument(name, bound, Some("Pass an interval such as '30 seconds'."));
    }
    if value.days() < 0 || value.micros() < 0 {
        invalid_argument(
            name,
            "must not have parts of opposite signs",
            Some("Write the interval with one sign, e.g. '23 hours' rather than '1 day -1 hour'."),
        );
    }
    if micros > MAX_INTERVAL_MICROS {
        invalid_argument(name, "must be at most 366 days", None);
    }
    value
}

pub fn positive_interval(value: Option<Interval>, name: &str) -> Interval {
    interval_in_range(required(value, name), name, false)
}

pub fn at_least_one(value: Option<i32>, name: &str) -> i32 {
    let value = required(value, name);
    if value < 1 {
        invalid_argument(name, "must be at least 1", None);
    }
    value
}

pub use crate::clock::stride;
