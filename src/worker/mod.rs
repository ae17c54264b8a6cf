//! The background workers, registered when lease_sched is preloaded.
//!
//! - The *launcher* (static, connected to no database) waits until the database named by
//!   `lease_sched.database` exists, starts the sweeper there, and starts it again whenever
//!   it stops (database dropped and recreated, an exit after an error, a crash).
//! - The *sweeper* (dynamic, connected to that database) waits quietly until
//!   `CREATE EXTENSION lease_sched` has run, then sweeps every `lease_sched.sweep_interval`
//!   in its own transaction. An error in a sweep is logged and rolled back, and the next
//!   sweep runs as usual. While it runs, runtime touches in its database are buffered; on
//!   SIGTERM it stops buffering and writes the buffer out before it exits.
pub mod sweep;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::runtime::{self, buffer};
use crate::{settings, stats};

/// The launcher is restarted this soon after a crash.
const LAUNCHER_RESTART_AFTER: Duration = Duration::from_secs(1);
/// How often the launcher looks for the database / the sweeper, and how often a sweeper
/// waiting for CREATE EXTENSION looks again.
const POLL: Duration = Duration::from_millis(100);
/// The least time between two starts of the sweeper, so a failing one cannot spin.
const SWEEPER_RESTART_AFTER: Duration = Duration::from_secs(1);

pub fn register() {
    BackgroundWorkerBuilder::new("lease_sched launcher")
        .set_type("lease_sched launcher")
        .set_library("lease_sched")
        .set_function("lease_sched_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(LAUNCHER_RESTART_AFTER))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lease_sched_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: only shared catalogs (pg_database) are needed here.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let database = settings::database();
    let mut sweeper: Option<DynamicBackgroundWorker> = None;
    let mut last_start: Option<Instant> = None;
    while BackgroundWorker::wait_latch(Some(POLL)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to re-read postgresql.conf.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let running = sweeper.as_ref().is_some_and(|w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
        if running || last_start.is_some_and(|t| t.elapsed() < SWEEPER_RESTART_AFTER) {
            continue;
        }
        let Some(oid) = database_oid(&database) else { continue };
        last_start = Some(Instant::now());
        sweeper = BackgroundWorkerBuilder::new("lease_sched sweeper")
            .set_type("lease_sched sweeper")
            .set_library("lease_sched")
            .set_function("lease_sched_sweeper_main")
            .enable_spi_access()
            .set_argument(Some(oid.into()))
            // SAFETY: MyProcPid is this process's pid.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic()
            .ok();
        if sweeper.is_none() {
            warning!("lease_sched: could not start the sweeper (max_worker_processes too low?)");
        }
    }
    // SIGTERM: the postmaster stops the sweeper by itself.
}

/// The database's oid, or None while it does not exist. A plain heap scan of the shared
/// catalog pg_database: a process with no database cannot use catalog indexes.
fn database_oid(name: &str) -> Option<pg_sys::Oid> {
    let mut oid = None;
    in_transaction("database lookup", || {
        // SAFETY: the scan autovacuum's launcher does (get_database_list), inside a
        // transaction, reading each tuple's fixed-size prefix as FormData_pg_database.
        unsafe {
            let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
            let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
            loop {
                let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tuple.is_null() {
                    break;
                }
                let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tuple);
                let datname = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
                if datname.to_bytes() == name.as_bytes() {
                    oid = Some((*form).oid);
                    break;
                }
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        }
    });
    oid
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lease_sched_sweeper_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let oid = pg_sys::Oid::from(arg.value() as u32);
    // If anything below ends this process abnormally, stop buffering first: touches must
    // never wait in a buffer that nobody will drain.
    // SAFETY: registers a plain callback; it only takes the buffer lock briefly.
    unsafe { pg_sys::before_shmem_exit(Some(stop_buffering), pg_sys::Datum::from(0)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid), None);
    // Buffer from the first moment: runtime_touch can only be called once the extension
    // exists, and this process drains whatever is buffered before it exits.
    buffer::open();
    log!("lease_sched sweeper started on database \"{}\"", settings::database());
    warn_about_settings();

    let mut installed = false;
    let mut last_sweep: Option<Instant> = None;
    loop {
        // Recomputed every turn, so a reloaded sweep_interval takes effect at once.
        let interval = Duration::from_millis(settings::SWEEP_INTERVAL_MS.get().max(100) as u64);
        let due = match last_sweep {
            Some(t) if installed => t + interval,
            Some(t) => t + POLL.min(interval),
            None => Instant::now(),
        };
        if !BackgroundWorker::wait_latch(Some(due.saturating_duration_since(Instant::now()))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to re-read postgresql.conf.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            warn_about_settings();
            continue;
        }
        if Instant::now() < due {
            continue; // woken early (a latch set by someone else)
        }
        last_sweep = Some(Instant::now());
        in_transaction("sweep", || {
            installed = extension_installed();
            if installed {
                set_local_lock_timeout();
                let report = sweep::sweep();
                if report.leases_failed + report.runtimes_offline > 0 {
                    debug1!("lease_sched sweep: {report:?}");
                }
            }
        });
        // A worker never goes idle the way a client backend does, so PostgreSQL would not
        // publish its table statistics until it exits: autovacuum would never see the dead
        // rows that flushes and sweeps leave. Publish them after every sweep.
        // SAFETY: outside any transaction, as pgstat_report_stat requires.
        unsafe { pg_sys::pgstat_report_stat(true) };
    }
    // SIGTERM (fast or smart shutdown, or pg_terminate_backend): drain, then leave. The
    // launcher starts a new sweeper if the server is not shutting down.
    in_transaction("drain", || {
        if extension_installed() {
            let n = runtime::close_and_flush();
            log!("lease_sched sweeper wrote the touch buffer ({n} rows) before exit");
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn stop_buffering(_code: i32, _arg: pg_sys::Datum) {
    buffer::close();
}

fn warn_about_settings() {
    if let Some(w) = settings::flush_interval_warning() {
        warning!("{w}");
    }
}

fn extension_installed() -> bool {
    // A read-only query through `select`: no transaction id, so an idle sweep writes no WAL.
    Spi::connect(|c| {
        c.select("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'lease_sched')", None, &[])?
            .first()
            .get_one::<bool>()
    })
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
