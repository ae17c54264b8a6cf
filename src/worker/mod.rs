//! The background workers, registered when lease_sched is preloaded.
//!
//! - The *launcher* (static, connected to no database; `launcher`) finds the databases
//!   that have lease_sched installed (or only `lease_sched.database`, when that is set)
//!   and keeps one sweeper in each, up to `lease_sched.max_databases`, starting it again
//!   whenever it stops (an exit after an error, a crash, a terminate).
//! - A *sweeper* (dynamic, connected to one database) looks whether the extension is
//!   there: if not, it leaves at once (or, in the database `lease_sched.database` names,
//!   waits quietly for CREATE EXTENSION). Then it sweeps every `lease_sched.sweep_interval`
//!   in its own transaction, each pass of it in its own subtransaction: an error in one pass
//!   is logged and rolled back and the other passes still run. It leaves when the
//!   extension is dropped. The sweeper that owns the touch buffer (the first to claim it)
//!   buffers the runtime touches of its database; on SIGTERM it stops buffering and writes
//!   the buffer out (skipping rows someone holds locked: the exit never waits) before it
//!   exits.
//!
//! There is at most one sweeper per database: the launcher assigns each its slot
//! (`crate::sweepers`) and never two to one database, and adopts the running ones when it
//! is restarted. The launcher comes back after `pg_terminate_backend` (it exits with code
//! 1, so the postmaster restarts it) and ignores `pg_cancel_backend`; a cancel of a
//! sweeper cancels the sweep in progress (rolled back, the next one runs) and is forgotten
//! when it arrives while the sweeper is idle. A sweeper runs every statement with
//! `search_path = pg_catalog, pg_temp`, whatever the database or any role sets, so no
//! object a role creates can stand in for one its SQL calls (it runs as the bootstrap
//! superuser).
mod launcher;

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::runtime;
use crate::{settings, shmem, spi_plans, stats, sweepers};

/// The launcher is restarted this soon after a crash.
const LAUNCHER_RESTART_AFTER: Duration = Duration::from_secs(1);
/// How often the launcher looks at its sweepers, and how often a sweeper waiting for
/// CREATE EXTENSION looks again.
const POLL: Duration = Duration::from_millis(100);

/// A worker of this library: `name` is also its type (what pg_stat_activity shows), and
/// `function` the exported entry point below.
fn builder(name: &str, function: &str) -> BackgroundWorkerBuilder {
    BackgroundWorkerBuilder::new(name)
        .set_type(name)
        .set_library("lease_sched")
        .set_function(function)
        .enable_spi_access()
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
    launcher::main();
    // SIGTERM. At shutdown the postmaster stops the sweepers by themselves and restarts nobody.
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

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lease_sched_sweeper_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SIGINT keeps PostgreSQL's handler: lock_timeout and statement_timeout work by
    // signalling SIGINT to this very process. A cancel that arrives while idle is
    // discarded by `idle_wait`; one during a sweep cancels that sweep, which is rolled back.
    // SAFETY: MyProcPid is this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let Some((slot, oid)) = sweepers::attach(arg.value() as u64, pid) else {
        // The launcher that assigned this slot was restarted and gave it up meanwhile.
        return;
    };
    // However this process ends, leave the slot (its state says why) and, if this sweeper
    // owns the touch buffer, stop buffering: touches must never wait in a buffer that
    // nobody will drain.
    // SAFETY: registers a plain callback; it only takes the buffer lock briefly.
    unsafe { pg_sys::before_shmem_exit(Some(stop_buffering), pg_sys::Datum::from(slot)) };
    // In the database lease_sched.database names, wait for CREATE EXTENSION; anywhere
    // else, a database without the extension is left at once (the launcher comes back
    // when CREATE EXTENSION commits there).
    let named = settings::database().is_some();
    // The touch buffer serves one database. The sweeper of the named database takes it
    // from the first moment (runtime_touch can only buffer once the extension's SQL is
    // current, and this process drains whatever is buffered before it exits); otherwise
    // the first sweeper that finds its extension current takes it, below.
    let mut owns_buffer = named && shmem::claim_sweeper(pid);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(oid), None);
    pin_search_path();
    if owns_buffer {
        runtime::start_buffering();
        in_transaction("restored touch flush", restore_saved_touches);
        runtime::saved_written();
    }

    let mut installed = false;
    let mut announced = false;
    let mut leave = false;
    let mut warned_out_of_date = false;
    let mut last_sweep: Option<Instant> = None;
    while !leave {
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
        // Backends set this latch when they commit a loss notice for us to send.
        send_loss_notices();
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
            let max = settings::MAX_DATABASES.get().max(1) as usize;
            let stays = match state {
                SchemaState::Missing if named => sweepers::take_place(slot, sweepers::State::Waiting, max),
                SchemaState::Missing => {
                    sweepers::set_state(slot, sweepers::State::Absent);
                    false
                }
                SchemaState::OutOfDate => sweepers::take_place(slot, sweepers::State::OutOfDate, max),
                SchemaState::Current => sweepers::take_place(slot, sweepers::State::Sweeping, max),
            };
            if !stays {
                leave = true;
                return;
            }
            installed = state == SchemaState::Current;
            if installed && !announced {
                announced = true;
                let name =
                    Spi::get_one::<String>("SELECT pg_catalog.current_database()::pg_catalog.text").ok().flatten();
                log!("lease_sched sweeper started on database \"{}\"", name.unwrap_or_default());
                warn_about_settings();
            }
            if state == SchemaState::OutOfDate && !warned_out_of_date {
                warning!(
                    "lease_sched sweeper: this database's lease_sched objects are older than the library ({}); \
                     sweeps wait for ALTER EXTENSION lease_sched UPDATE",
                    env!("CARGO_PKG_VERSION")
                );
            }
            warned_out_of_date = state == SchemaState::OutOfDate;
            if installed {
                if !owns_buffer && shmem::claim_sweeper(pid) {
                    owns_buffer = true;
                    runtime::start_buffering();
                    restore_saved_touches();
                }
                set_local_timeout("lock_timeout", settings::SWEEP_INTERVAL_MS.get().max(1000));
                let report = crate::sweep::sweep();
                sweepers::record_sweep(slot, crate::clock::db_clock());
                if report.leases_failed + report.runtimes_offline > 0 {
                    debug1!("lease_sched sweep: {report:?}");
                }
            }
        });
        // Restored touches the sweep wrote: their saved file can go.
        runtime::saved_written();
        // A worker never goes idle the way a client backend does, so PostgreSQL would not
        // publish its table statistics until it exits: autovacuum would never see the dead
        // rows that flushes and sweeps leave. Publish them after every sweep.
        // SAFETY: outside any transaction, as pgstat_report_stat requires.
        unsafe { pg_sys::pgstat_report_stat(true) };
    }
    // Notices of steals committed just before the stop still reach their listeners.
    send_loss_notices();
    if owns_buffer {
        drain_at_exit();
    }
}

/// The exit drain: write the touch buffer as this sweeper leaves (on SIGTERM, from a fast
/// or smart shutdown or pg_terminate_backend, or when it gives up its database). It exists
/// because buffered touches live only in shared memory, which ends with the server, and
/// this sweeper is the one that writes them: without the drain, every touch buffered since
/// the last flush would be lost, and a runtime that beat in that interval would look
/// silent to the next sweep. The drain skips rows someone holds locked (a prepared
/// transaction, say) instead of waiting, and is bounded by a statement timeout: a shutdown
/// never hangs on it. What it could not write is saved in the data directory for the next
/// sweeper of this database. Only for the sweeper that owns the buffer.
fn drain_at_exit() {
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

/// Send the loss notices committed steals queued for this database, in one transaction.
fn send_loss_notices() {
    if crate::notices::waiting() {
        in_transaction("loss notice delivery", || {
            // Nothing here needs to outlive a crash (the steals are committed already, and a
            // notice is never replayed): listeners are told at commit, without the flush wait.
            Spi::run("SET LOCAL synchronous_commit = off").ok();
            crate::notices::deliver();
        });
    }
}

/// Touches that the last buffer-owning sweeper of this database saved at its exit
/// (runtime::save_left) go back into the buffer and are written at once; what cannot be
/// written now stays buffered. Called in a transaction, right after taking the buffer.
fn restore_saved_touches() {
    if runtime::restore_saved() > 0 && schema_state() == SchemaState::Current {
        runtime::flush_all();
    }
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
unsafe extern "C-unwind" fn stop_buffering(_code: i32, slot: pg_sys::Datum) {
    // SAFETY: MyProcPid is this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    if shmem::release_sweeper(pid) {
        runtime::stop_buffering();
    }
    sweepers::detach(slot.value(), pid);
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
    Spi::connect(|c| match spi_plans::installed_version(c) {
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
        let then = match what {
            "drain" => "what it could not write is saved for the next start",
            "loss notice delivery" => "those notices are not sent",
            _ => "the next sweep retries",
        };
        warning!("lease_sched {what} failed and was rolled back; {then}: {}", crate::subxact::describe(&e));
    }
}
