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

/// The library is newer than the extension's SQL objects in this database (the package
/// was upgraded, `ALTER EXTENSION lease_sched UPDATE` has not run yet).
pub fn schema_out_of_date() -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "lease_sched's library is version {} but this database's lease_sched objects are older",
            env!("CARGO_PKG_VERSION")
        ),
        "lease_sched",
    )
    .set_hint("Run ALTER EXTENSION lease_sched UPDATE in this database.")
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// An SPI call failed without raising an ERROR itself (a return code, not an ereport):
/// report it as an internal error with the statement, never as a Rust panic.
pub fn statement_failed(what: &str, sql: &str, error: impl std::fmt::Display) -> ! {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("lease_sched: {what}: {error}"), "lease_sched")
        .set_detail(format!("statement: {}", sql.split_whitespace().collect::<Vec<_>>().join(" ")))
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}
