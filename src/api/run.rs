//! run_arm_deadline and run_disarm_deadline (declared in sql/run.sql): the statement
//! timeout that bounds `lease_sched.run`'s command by its lease.
//!
//! PostgreSQL arms `statement_timeout` when a top-level statement starts; a SET inside
//! the running CALL would only apply to the next statement. So we arm PostgreSQL's own
//! STATEMENT_TIMEOUT timer directly: when it fires, the command is cancelled with the
//! usual 57014, exactly as if statement_timeout had expired, and the timer is cleared at
//! the end of the CALL as usual.
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::args::{positive_interval, required};

// utils/timeout.h, which pgrx's bindings leave out. The functions are plain C (none raises
// an ERROR for a registered id) and the enum's order is the same in PostgreSQL 13 to 18.
#[allow(non_camel_case_types)]
type TimeoutId = std::ffi::c_int;
const STATEMENT_TIMEOUT: TimeoutId = 3;
extern "C-unwind" {
    fn get_timeout_active(id: TimeoutId) -> bool;
    fn get_timeout_finish_time(id: TimeoutId) -> pg_sys::TimestampTz;
    fn enable_timeout_at(id: TimeoutId, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: TimeoutId, keep_indicator: bool);
}

/// How long before `stale_after` the command is cancelled, leaving time to record the
/// failure while the lease is still ours: a tenth of the lease, at most one second.
fn margin_micros(stale_timeout: &Interval) -> i64 {
    (stale_timeout.as_micros() / 10).min(crate::clock::MICROS_PER_SECOND as i128) as i64
}

#[pg_extern(sql = false)]
fn run_arm_deadline(stale_after: Option<TimestampWithTimeZone>, stale_timeout: Option<Interval>) -> bool {
    let stale_after = required(stale_after, "stale_after");
    let stale_timeout = positive_interval(stale_timeout, "stale_timeout");
    if !stale_after.is_finite() {
        crate::error::invalid_argument("stale_after", "must be a finite timestamp", None);
    }
    let deadline = stale_after.into_inner() - margin_micros(&stale_timeout);
    let id = STATEMENT_TIMEOUT;
    // SAFETY: timeout.c's API, in a backend with its timeouts initialised (every backend
    // that runs SQL). A deadline in the past fires at once.
    unsafe {
        if get_timeout_active(id) && get_timeout_finish_time(id) <= deadline {
            return false; // the caller's own statement_timeout ends the command sooner
        }
        enable_timeout_at(id, deadline);
    }
    ARMED_DEADLINE.set(Some(deadline));
    true
}

thread_local! {
    // The deadline this backend armed last. (Whether the timer fired cannot be asked of
    // timeout.c: reporting the cancel resets its indicator.)
    static ARMED_DEADLINE: std::cell::Cell<Option<pg_sys::TimestampTz>> = const { std::cell::Cell::new(None) };
}

/// Stop the timer `run_arm_deadline` armed (when it did); true when its deadline has
/// passed (the command was cancelled by it, or would have been).
#[pg_extern(sql = false)]
fn run_disarm_deadline(armed: Option<bool>) -> bool {
    if !armed.unwrap_or(false) {
        return false;
    }
    let id = STATEMENT_TIMEOUT;
    // SAFETY: as above.
    unsafe {
        if get_timeout_active(id) {
            disable_timeout(id, false);
        }
    }
    ARMED_DEADLINE.get().is_some_and(|deadline| crate::clock::db_clock() >= deadline)
}
