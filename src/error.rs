//! User-facing errors: one place that maps each kind of bad input to its SQLSTATE,
//! a message naming the argument, and a hint where the fix is obvious.
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// Raise an ERROR for a bad argument. Never returns: the statement is aborted and
/// nothing it wrote survives.
pub fn bad_argument(code: PgSqlErrorCode, argument: &str, problem: &str, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, format!("{argument} {problem}"), "lease_sched");
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn null_argument(argument: &str) -> ! {
    bad_argument(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, argument, "must not be NULL", None)
}

pub fn invalid_argument(argument: &str, problem: &str, hint: Option<&str>) -> ! {
    bad_argument(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, argument, problem, hint)
}

pub fn insufficient_privilege(message: &str) -> ! {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message.to_string(), "lease_sched")
        .set_hint("Admin functions run with the caller's rights; call them as the extension owner or from pg_cron.")
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
