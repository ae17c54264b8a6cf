//! Every `lease_sched.*` setting (GUC) in one place, with its range and doc line.
//! docs/settings.md documents each of them.
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// First retry delay after a FAILED finish without `retry_in`; doubles per attempt.
pub static RETRY_BACKOFF_BASE_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Upper bound of the exponential retry backoff.
pub static RETRY_BACKOFF_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);

pub fn init() {
    GucRegistry::define_int_guc(
        c"lease_sched.retry_backoff_base",
        c"First retry delay after a FAILED lease_finish without retry_in.",
        c"The delay doubles with every attempt: base * 2^(attempt-1), capped by lease_sched.retry_backoff_max.",
        &RETRY_BACKOFF_BASE_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"lease_sched.retry_backoff_max",
        c"Upper bound of the exponential retry backoff.",
        c"",
        &RETRY_BACKOFF_MAX_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}
