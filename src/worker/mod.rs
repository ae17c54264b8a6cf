//! The background workers, registered when lease_sched is preloaded.
//!
//! - The *launcher* (static, connected to no database) waits until the database named by
//!   `lease_sched.database` exists, starts the sweeper there, and starts it again whenever
//!   it stops (database dropped and recreated, an exit after an error, a crash).
//! - The *sweeper* (dynamic, connected to that database) waits quietly until
//!   `CREATE EXTENSION lease_sched` has run, then sweeps every `lease_sched.sweep_interval`
//!   in its own transaction, each pass of it in its own subtransaction: an error in one pass
//!   is logged and rolled back and the other passes still run. While it runs, runtime
//!   touches in its database are buffered; on SIGTERM it stops buffering and writes the
//!   buffer out (skipping rows someone holds locked: the exit never waits) before it exits.
//!
//! There is exactly one sweeper: it claims `shmem::Shared::sweeper_pid` at start (a second
//! one leaves at once) and gives it up at exit. The launcher comes back after
//! `pg_terminate_backend` (it exits with code 1, so the postmaster restarts it) and ignores
//! `pg_cancel_backend`; a cancel of the sweeper cancels the sweep in progress (rolled back,
//! the next one runs) and is forgotten when it arrives while the sweeper is idle. The
//! sweeper runs every statement with `search_path = pg_catalog,
//! pg_temp`, whatever the database or any role sets, so no object a role creates can
//! stand in for one its SQL calls (it runs as the bootstrap superuser).
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::runtime;
use crate::{settings, shmem, spi_plans, stats};

/// The launcher is restarted this soon after a crash.
const LAUNCHER_RESTART_AFTER: Duration = Duration::from_secs(1);
/// How often the launcher looks for the database / the sweeper, and how often a sweeper
/// waiting for CREATE EXTENSION looks again.
const POLL: Duration = Duration::from_millis(100);
/// The least time between two starts of the sweeper, so a failing one cannot spin.
const SWEEPER_RESTART_AFTER: Duration = Duration::from_secs(1);
/// How long the database is left without a sweeper after one stopped. Longer than the 5 s
/// CREATE DATABASE ... TEMPLATE, ALTER DATABASE ... RENAME and DROP DATABASE wait for other
/// sessions to leave: terminating the sweeper lets such a command through (operations.md).
const SWEEPER_STEP_ASIDE: Duration = Duration::from_secs(6);

/// A worker of this library: `name` is also its type (what pg_stat_activity shows), and
/// `function` the exported entry point below.
fn builder(name: &str, function: &str) -> BackgroundWorkerBuilder {
    BackgroundWorkerBuilder::new(name).set_type(name).set_library("lease_sched").set_function(function).enable_spi_access()
}

/// Re-read postgresql.conf when a SIGHUP arrived; true when it did.
fn reload_on_sighup() -> bool {
    if !BackgroundWorker::sighup_received() {
        return false;
    }
    // SAFETY: the documented way for a worker to re-read postgresql.conf.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    true
}

pub fn register() {
    builder("lease_sched launcher", "lease_sched_launcher_main")
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(LAUNCHER_RESTART_AFTER))
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lease_sched_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    ignore_cancel();
    // No database: only shared catalogs (pg_database) are needed here.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let database = settings::database();
    let mut sweeper: Option<DynamicBackgroundWorker> = None;
    let mut last_start: Option<Instant> = None;
    let mut last_seen_running: Option<Instant> = None;
    while BackgroundWorker::wait_latch(Some(POLL)) {
        reload_on_sighup();
        // A sweeper left by an earlier launcher (this one was terminated and restarted)
        // counts as running: it holds the sweeper slot in shared memory.
        let running = shmem::sweeper_pid().is_some()
            || sweeper.as_ref().is_some_and(|w| !matches!(w.pid(), Err(BackgroundWorkerStatus::Stopped)));
        if running {
            last_seen_running = Some(Instant::now());
        }
        if running
            || last_start.is_some_and(|t| t.elapsed() < SWEEPER_RESTART_AFTER)
            || last_seen_running.is_some_and(|t| t.elapsed() < SWEEPER_STEP_ASIDE)
        {
            continue;
        }
        let Some(oid) = database_oid(&database) else { continue };
        last_start = Some(Instant::now());
        sweeper = builder("lease_sched sweeper", "lease_sched_sweeper_main")
            .set_argument(Some(oid.into()))
            // SAFETY: MyProcPid is this process's pid.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic()
            .ok();
        if sweeper.is_none() {
            warning!("lease_sched: could not start the sweeper (max_worker_processes too low?)");
        }
    }
    // SIGTERM. At shutdown the postmaster stops the sweeper by itself and restarts nobody.
    // Otherwise (pg_terminate_backend) exit code 1 makes the postmaster start the launcher
    // again after LAUNCHER_RESTART_AFTER; a return (code 0) would unregister it for good.
    // SAFETY: ends this process the way PostgreSQL expects.
    unsafe { pg_sys::proc_exit(1) };
}

/// Sleep on the latch up to `timeout`; false once SIGTERM arrived. A cancel
/// (pg_cancel_backend) that arrives while the sweeper is idle has nothing to cancel: it is
/// forgotten here, instead of raising an ERROR outside any transaction (which would end
/// the process).
fn idle_wait(timeout: Duration) -> bool {
    // SAFETY: the standard latch wait of a background worker; QueryCancelPending is this
    // process's own flag, cleared between transactions.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::QueryCancelPending = 0;
    }
    pgrx::check_for_interrupts!();
    !BackgroundWorker::sigterm_received()
}

/// The launcher never waits on a lock or runs a statement that a timeout must interrupt,
/// so it ignores SIGINT altogether: pg_cancel_backend must not make it raise an ERROR
/// outside any transaction (which would end it).
fn ignore_cancel() {
    // SAFETY: replaces this process's SIGINT handler; called once at worker start.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
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
    // SIGINT keeps PostgreSQL's handler: lock_timeout and statement_timeout work by
    // signalling SIGINT to this very process. A cancel that arrives while idle is
    // discarded by `idle_wait`; one during a sweep cancels that sweep, which is rolled back.
    // SAFETY: MyProcPid is this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    if !shmem::claim_sweeper(pid) {
        // Another sweeper runs already (started by a launcher before a restart of it).
        return;
    }
    let oid = pg_sys::Oid::from(arg.value() as u32);
    // However this process ends, stop buffering and free the sweeper slot: touches must
    // never wait in a buffer that nobody will drain.
    // SAFETY: registers a plain callback; it only takes the buffer lock briefly.
    unsafe { pg_sys::before_shmem_exit(Some(stop_buffering), pg_sys::Datum::from(0)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid), None);
    pin_search_path();
    // Buffer from the first moment: runtime_touch can only buffer once the extension's
    // SQL is current, and this process drains whatever is buffered before it exits.
    runtime::start_buffering();
    log!("lease_sched sweeper started on database \"{}\"", settings::database());
    warn_about_settings();
    // Touches the last sweeper saved at its exit (runtime::save_left) go back into the
    // buffer and are written at once; what cannot be written now stays buffered.
    if runtime::restore_saved() > 0 {
        in_transaction("restored touch flush", || {
            if schema_state() == SchemaState::Current {
                runtime::flush_all();
            }
        });
        runtime::saved_written();
    }

    let mut installed = false;
    let mut warned_out_of_date = false;
    let mut last_sweep: Option<Instant> = None;
    loop {
        // Recomputed every turn, so a reloaded sweep_interval takes effect at once.
        let interval = Duration::from_millis(settings::SWEEP_INTERVAL_MS.get().max(100) as u64);
        let due = match last_sweep {
            Some(t) if installed => t + interval,
            Some(t) => t + POLL.min(interval),
            None => Instant::now(),
        };
        if !idle_wait(due.saturating_duration_since(Instant::now())) {
            break;
        }
        if reload_on_sighup() {
            warn_about_settings();
            continue;
        }
        if Instant::now() < due {
            continue; // woken early (a latch set by someone else)
        }
        last_sweep = Some(Instant::now());
        in_transaction("sweep", || {
            let state = schema_state();
            installed = state == SchemaState::Current;
            if state == SchemaState::OutOfDate && !warned_out_of_date {
                warning!(
                    "lease_sched sweeper: this database's lease_sched objects are older than the library ({}); \
                     sweeps wait for ALTER EXTENSION lease_sched UPDATE",
                    env!("CARGO_PKG_VERSION")
                );
            }
            warned_out_of_date = state == SchemaState::OutOfDate;
            if installed {
                set_local_timeout("lock_timeout", settings::SWEEP_INTERVAL_MS.get().max(1000));
                let report = crate::sweep::sweep();
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
    // drain skips rows someone holds locked (a prepared transaction, say) instead of
    // waiting, and is bounded by a statement timeout: a shutdown never hangs on it. What
    // it could not write is saved for the next sweeper of this database (below).
    // Buffering stops first, so no touch can slip in after this last flush.
    runtime::stop_buffering();
    let mut written = None;
    in_transaction("drain", || {
        if schema_state() == SchemaState::Current {
            set_local_timeout("statement_timeout", DRAIN_TIMEOUT_MS);
            written = Some(runtime::flush_all());
        }
    });
    if let Some(written) = written {
        // Counted after the commit, which is when written touches leave the buffer.
        let left = runtime::pending();
        log!("lease_sched sweeper wrote the touch buffer ({written} rows) before exit; {left} left for a locked row");
    }
    // Shared memory ends with the server: what the drain left (a failed drain, a locked
    // row) is saved in the data directory for the next sweeper of this database.
    runtime::save_left();
}

/// The longest the exit drain may take.
const DRAIN_TIMEOUT_MS: i32 = 5_000;

/// Every statement of this worker resolves names in pg_catalog first and nowhere a role
/// could create objects (lease_sched's own objects are always schema-qualified). Set for
/// the session with the highest priority, above ALTER DATABASE / ALTER ROLE settings.
fn pin_search_path() {
    // SAFETY: sets a GUC in this process; both strings are static C strings.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn stop_buffering(_code: i32, _arg: pg_sys::Datum) {
    // SAFETY: MyProcPid is this process's pid.
    if shmem::release_sweeper(unsafe { pg_sys::MyProcPid }) {
        runtime::stop_buffering();
    }
}

fn warn_about_settings() {
    if let Some(w) = settings::flush_interval_warning() {
        warning!("{w}");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SchemaState {
    Missing,
    OutOfDate,
    Current,
}

fn schema_state() -> SchemaState {
    // A read-only query through `select`: no transaction id, so an idle sweep writes no WAL.
    Spi::connect(|c| match spi_plans::installed_version(&c) {
        None => SchemaState::Missing,
        Some(v) if v == env!("CARGO_PKG_VERSION") => SchemaState::Current,
        Some(_) => SchemaState::OutOfDate,
    })
}

fn set_local_timeout(setting: &str, ms: i32) {
    Spi::run(&format!("SET LOCAL {setting} = {ms}")).ok();
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
        let then = if what == "drain" { "what it could not write is saved for the next start" } else { "the next sweep retries" };
        warning!("lease_sched {what} failed and was rolled back; {then}: {}", crate::subxact::describe(&e));
    }
}
