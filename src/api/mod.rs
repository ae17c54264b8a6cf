//! The SQL surface: thin `#[pg_extern]` wrappers that validate arguments, call the
//! subsystem, and shape the result. The matching CREATE FUNCTION statements are in `sql/`.
mod args;
pub mod fence;
pub mod jobs;
pub mod lease;
pub mod lock;
pub mod observability;
pub mod planner;
mod row;
pub mod run;
pub mod runtime;

/// Admin functions (sweep, runtime_flush) run with the caller's rights; refuse callers who
/// may not write lease_sched's tables up front, whatever there is to do right now.
fn require_admin(function: &str) {
    let allowed = pgrx::Spi::connect(|c| {
        crate::spi_plans::check_schema(c);
        c.select(
            "SELECT pg_catalog.has_table_privilege('lease_sched.sys_cron_executions', 'UPDATE, DELETE')
                AND pg_catalog.has_table_privilege('lease_sched.runtimes', 'UPDATE')",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()
    });
    if allowed != Ok(Some(true)) {
        crate::error::insufficient_privilege(&format!(
            "permission denied for {function}: it needs UPDATE and DELETE on lease_sched's tables"
        ));
    }
}
