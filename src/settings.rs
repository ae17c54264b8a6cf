//! Every `lease_sched.*` setting (GUC) in one place, with its range and doc line.
//! docs/settings.md documents each of them.
use std::ffi::CString;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// First retry delay after a FAILED finish without `retry_in`; doubles per attempt.
pub static RETRY_BACKOFF_BASE_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Upper bound of the exponential retry backoff.
pub static RETRY_BACKOFF_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);
/// When set, the one database the background worker sweeps; unset, it sweeps every
/// database that has the extension.
pub static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The most databases swept at once (one sweeper each).
pub static MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(8);
/// How often the worker sweeps.
pub static SWEEP_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// How often the whole touch buffer is written out.
pub static TOUCH_FLUSH_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
/// An online runtime silent this long is marked offline.
pub static RUNTIME_OFFLINE_AFTER_MS: GucSetting<i32> = GucSetting::<i32>::new(150_000);
/// Finished executions older than this are deleted; 0 keeps them forever.
pub static RETENTION_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
/// `lease_sched.notify_lost`: NOTIFY lease_sched_lost when a steal or a takeover deposes a holder.
pub static NOTIFY_LOST: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Entries the shared touch buffer holds before touches fall back to direct writes.
pub static TOUCH_BUFFER_SIZE: GucSetting<i32> = GucSetting::<i32>::new(65_536);

/// Register the settings. The postmaster-level ones (database, buffer size) exist only
/// when the library is preloaded; PostgreSQL refuses them in a backend that loads it later.
pub fn init(preloaded: bool) {
    define_ms(
        c"lease_sched.retry_backoff_base",
        c"First retry delay after a FAILED lease_finish without retry_in.",
        c"The delay doubles with every attempt: base * 2^(attempt-1), capped by lease_sched.retry_backoff_max.",
        &RETRY_BACKOFF_BASE_MS,
        0,
        GucContext::Userset,
    );
    define_ms(
        c"lease_sched.retry_backoff_max",
        c"Upper bound of the exponential retry backoff.",
        c"",
        &RETRY_BACKOFF_MAX_MS,
        0,
        GucContext::Userset,
    );
    if preloaded {
        define_postmaster_settings();
    }
    GucRegistry::define_int_guc(
        c"lease_sched.max_databases",
        c"The most databases the background worker sweeps at once (one sweeper process each).",
        c"A database with the extension beyond this many is not swept: the launcher logs it, stats() counts it in databases_over_limit and shows swept = 0 there. Each sweeper takes one of max_worker_processes.",
        &MAX_DATABASES,
        1,
        crate::sweepers::MAX_SLOTS as i32,
        GucContext::Sighup,
        GucFlags::default(),
    );
    define_ms(
        c"lease_sched.sweep_interval",
        c"How often the background worker sweeps stale leases and silent runtimes.",
        c"",
        &SWEEP_INTERVAL_MS,
        100,
        GucContext::Sighup,
    );
    define_ms(
        c"lease_sched.touch_flush_interval",
        c"How often buffered runtime touches are written to lease_sched.runtimes.",
        c"Must stay below lease_sched.runtime_offline_after; a larger value is clamped to half of it.",
        &TOUCH_FLUSH_INTERVAL_MS,
        100,
        GucContext::Sighup,
    );
    define_ms(
        c"lease_sched.runtime_offline_after",
        c"An online runtime not seen for this long is marked offline by the sweep.",
        c"",
        &RUNTIME_OFFLINE_AFTER_MS,
        1_000,
        GucContext::Sighup,
    );
    // Superuser-only (ALTER SYSTEM, ALTER DATABASE / ROLE ... SET by a superuser): a runner
    // role must not be able to steal silently from the holders that listen.
    GucRegistry::define_bool_guc(
        c"lease_sched.notify_lost",
        c"NOTIFY lease_sched_lost after the commit of a steal or takeover that deposes a holder.",
        c"Sent in batches by the database's sweeper when lease_sched is preloaded, else by the stealing transaction at its commit (which then holds PostgreSQL's notification-queue lock until it is flushed). Turn off where steals are frequent and nobody listens.",
        &NOTIFY_LOST,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"lease_sched.retention",
        c"Finished executions older than this are deleted by the sweep; 0 keeps them.",
        c"",
        &RETENTION_S,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

fn define_postmaster_settings() {
    GucRegistry::define_string_guc(
        c"lease_sched.database",
        c"The only database the lease_sched background worker sweeps; empty: every database that has the extension.",
        c"When set, the worker sweeps only this database, and waits there until CREATE EXTENSION lease_sched has run; the extension in any other database is not swept.",
        &DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"lease_sched.touch_buffer_size",
        c"Runtime ids the shared touch buffer holds; when full, touches are written directly.",
        c"",
        &TOUCH_BUFFER_SIZE,
        16,
        1 << 22,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn define_ms(
    name: &'static std::ffi::CStr,
    short: &'static std::ffi::CStr,
    long: &'static std::ffi::CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
    context: GucContext,
) {
    GucRegistry::define_int_guc(name, short, long, setting, min, i32::MAX, context, GucFlags::UNIT_MS);
}

/// The one database to sweep, when `lease_sched.database` names one.
pub fn database() -> Option<String> {
    DATABASE.get().map(|c| c.to_string_lossy().trim().to_string()).filter(|s| !s.is_empty())
}

/// The default retry backoff's base and cap, as `lease_sched.retry_backoff` takes them
/// (lease_finish and the sweep both pass these).
pub fn retry_backoff_bounds() -> (pgrx::datum::Interval, pgrx::datum::Interval) {
    (
        crate::clock::interval_from_ms(RETRY_BACKOFF_BASE_MS.get()),
        crate::clock::interval_from_ms(RETRY_BACKOFF_MAX_MS.get()),
    )
}

/// The flush interval in force: a flush must land inside the offline window (else a live
/// runtime whose touches wait in the buffer could be judged silent), so a setting at or
/// above runtime_offline_after is clamped to half of it.
pub fn effective_touch_flush_interval_ms() -> i32 {
    let flush = TOUCH_FLUSH_INTERVAL_MS.get();
    let offline = RUNTIME_OFFLINE_AFTER_MS.get();
    if flush >= offline {
        offline / 2
    } else {
        flush
    }
}

/// A WARNING for the log when the clamp above is in force.
pub fn flush_interval_warning() -> Option<String> {
    let (flush, offline) = (TOUCH_FLUSH_INTERVAL_MS.get(), RUNTIME_OFFLINE_AFTER_MS.get());
    (flush >= offline).then(|| {
        format!(
            "lease_sched.touch_flush_interval ({flush} ms) must be below lease_sched.runtime_offline_after ({offline} ms); using {} ms",
            offline / 2
        )
    })
}
