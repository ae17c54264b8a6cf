//! The background worker: registered at preload, connected to `lease_sched.database`,
//! it sweeps every `lease_sched.sweep_interval` in its own transaction. It waits
//! quietly until the extension exists there, survives errors in a sweep (logged, the
//! transaction rolled back), reloads settings on SIGHUP, and on SIGTERM writes the
//! touch buffer out before it exits (the seed's "stop drains").
pub mod sweep;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::{runtime, settings, stats};

/// How soon the postmaster restarts the worker after it exits with an error or crashes.
const RESTART_AFTER: Duration = Duration::from_secs(5);

pub fn register() {
    BackgroundWorkerBuilder::new("lease_sched sweeper")
        .set_type("lease_sched sweeper")
        .set_library("lease_sched")
        .set_function("lease_sched_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(RESTART_AFTER))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lease_sched_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = settings::database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("lease_sched sweeper started on database \"{database}\"");
    warn_about_settings();

    loop {
        let interval = Duration::from_millis(settings::SWEEP_INTERVAL_MS.get().max(100) as u64);
        if !BackgroundWorker::wait_latch(Some(interval)) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to re-read postgresql.conf.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            warn_about_settings();
        }
        in_transaction("sweep", || {
            if extension_installed() {
                set_local_lock_timeout();
                let report = sweep::sweep();
                if report.leases_failed + report.runtimes_offline > 0 {
                    debug1!("lease_sched sweep: {report:?}");
                }
            }
        });
    }
    // SIGTERM (fast or smart shutdown, or pg_terminate_backend): drain, then exit with 1
    // so that, if the server is not shutting down, the postmaster starts us again.
    in_transaction("drain", || {
        if extension_installed() {
            let n = runtime::flush_all();
            log!("lease_sched sweeper drained the touch buffer ({n} rows) before exit");
        }
    });
    unsafe { pg_sys::proc_exit(1) };
}

fn warn_about_settings() {
    if let Some(w) = settings::flush_interval_warning() {
        warning!("{w}");
    }
}

fn extension_installed() -> bool {
    Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'lease_sched')")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A sweep blocked on a row lock gives up after about one interval; the next one catches up.
fn set_local_lock_timeout() {
    let ms = settings::SWEEP_INTERVAL_MS.get().max(1000);
    Spi::run(&format!("SET LOCAL lock_timeout = {ms}")).ok();
}

/// Run `f` in its own transaction. An ERROR inside is caught, logged and rolled back, so
/// the worker lives on (pgrx's BackgroundWorker::transaction would let it kill us).
fn in_transaction(what: &str, f: impl FnOnce()) {
    // SAFETY: the standard sequence for a background worker's transaction.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| {
        f();
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(())
    }))
    .catch_others(Err)
    .execute();
    if let Err(e) = outcome {
        stats::add(|s| &s.sweep_errors, 1);
        // SAFETY: the error has been copied and flushed by the catch; abort what is left.
        unsafe { pg_sys::AbortCurrentTransaction() };
        warning!("lease_sched {what} failed and was rolled back; the next sweep retries: {}", describe(&e));
    }
}

fn describe(e: &pg_sys::panic::CaughtError) -> String {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
    }
}
