//! The database clock and every conversion of time, in one place.
//!
//! Decisions use `now()` here: the database clock at the moment of the call
//! (`GetCurrentTimestamp`, what `clock_timestamp()` returns), not the transaction start.
//! A claim or heartbeat late in a long transaction must not hand out a lease that is
//! already partly expired. Callers read it once per call, so one call decides on one
//! instant. Time is `DbTime`: microseconds since 2000-01-01, PostgreSQL's TimestampTz.
use pgrx::datum::{Interval, TimestampWithTimeZone};

pub use lease_model::DbTime;

pub const MICROS_PER_MS: i64 = 1_000;
pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;
/// The Unix epoch on PostgreSQL's clock (the model's constant, which `date_bin` aligns on).
pub const UNIX_EPOCH: DbTime = lease_model::planner::UNIX_EPOCH;

/// The database clock now.
pub fn db_clock() -> DbTime {
    // SAFETY: reads the system clock; no shared state.
    unsafe { pgrx::pg_sys::GetCurrentTimestamp() }
}

pub fn timestamptz(t: DbTime) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(t).expect("database clock is a finite timestamp")
}

/// A setting in milliseconds (every `lease_sched.*` duration GUC) as microseconds.
pub fn micros_from_ms(ms: i32) -> i64 {
    ms as i64 * MICROS_PER_MS
}

/// A setting in seconds as microseconds.
pub fn micros_from_s(s: i32) -> i64 {
    s as i64 * MICROS_PER_SECOND
}

/// A setting in milliseconds as an SQL interval.
pub fn interval_from_ms(ms: i32) -> Interval {
    Interval::from_micros(micros_from_ms(ms))
}

/// An interval of days and time as microseconds, or None when it has months or years,
/// whose length depends on the calendar.
pub fn fixed_micros(i: Interval) -> Option<i64> {
    (i.months() == 0).then(|| i.days() as i64 * MICROS_PER_DAY + i.micros())
}

/// Seconds since the Unix epoch, as monitoring systems expect.
pub fn unix_seconds(t: DbTime) -> i64 {
    (t - UNIX_EPOCH).div_euclid(MICROS_PER_SECOND)
}

/// An interval as a stride in microseconds: positive (checked by the caller) and without
/// months or years, whose length depends on the calendar.
pub fn stride(every: Interval, name: &str) -> i64 {
    let Some(stride) = fixed_micros(every) else {
        crate::error::invalid_argument(
            name,
            "must not contain months or years",
            Some("Use days instead, e.g. '30 days'."),
        )
    };
    if stride <= 0 {
        crate::error::invalid_argument(name, "must be positive", None);
    }
    stride
}
