//! The launcher: finds the databases that have lease_sched and keeps one sweeper in each.
//!
//! Connected to no database, it sees only the shared catalogs, so it cannot read a
//! database's pg_extension itself. It lists pg_database (every second, and at once when a
//! backend announces a CREATE EXTENSION), and starts a sweeper in each database it has not
//! looked at yet: the sweeper connects, looks, and either stays (the extension is there:
//! it sweeps) or leaves at once, saying why in its slot (`crate::sweepers`). So a
//! database is looked at when the launcher starts, when it appears (CREATE DATABASE, from
//! any template), and when CREATE EXTENSION or ALTER EXTENSION UPDATE commits in it; at
//! most `PROBES_AT_ONCE` such looks run at a time.
//!
//! With `lease_sched.database` set, only that database is swept (and its sweeper waits
//! there for CREATE EXTENSION, as it always did). Template databases (`datistemplate`)
//! and databases that refuse connections are not swept otherwise: a connected sweeper
//! would make every CREATE DATABASE ... TEMPLATE of them fail.
//!
//! At most `lease_sched.max_databases` sweepers stay. A database beyond the bound is
//! logged (a WARNING naming it and the setting) and counted (`databases_over_limit`),
//! shows `swept = 0`, and gets its sweeper as soon as a place frees up.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{builder, in_transaction, reload_on_sighup, POLL};
use crate::sweepers::{self, State};
use crate::{settings, stats};

/// The least time between two starts of a sweeper in one database, so a failing one
/// cannot spin.
const SWEEPER_RESTART_AFTER: Duration = Duration::from_secs(1);
/// How long a database is left without a sweeper after one stopped. Longer than the 5 s
/// CREATE DATABASE ... TEMPLATE, ALTER DATABASE ... RENAME and DROP DATABASE wait for other
/// sessions to leave: terminating the sweeper lets such a command through (operations.md).
const SWEEPER_STEP_ASIDE: Duration = Duration::from_secs(6);
/// How often pg_database is read for new and dropped databases.
const CATALOG_EVERY: Duration = Duration::from_secs(1);
/// Sweepers still looking whether their database has the extension, at most.
const PROBES_AT_ONCE: usize = 2;
/// A slot assigned by an earlier launcher whose worker never attached is given up after this.
const ATTACH_WITHIN: Duration = Duration::from_secs(30);
/// A database found without the extension is looked at again after this long, in case
/// its CREATE EXTENSION was never announced (it committed as a prepared transaction).
const ABSENT_RECHECK: Duration = Duration::from_secs(300);
/// "Could not start a sweeper" is logged at most this often.
const START_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the launcher knows about a database's extension.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    /// Not looked at since it appeared or was announced.
    Unknown,
    Absent,
    /// The extension is there: keep a sweeper.
    Present,
    /// The extension is there, but the bound was reached when its sweeper looked.
    OverLimit,
}

struct Running {
    index: usize,
    /// None for a sweeper an earlier launcher started (this one was restarted).
    handle: Option<DynamicBackgroundWorker>,
    started: Instant,
}

struct Database {
    name: String,
    sweepable: bool,
    verdict: Verdict,
    running: Option<Running>,
    last_start: Option<Instant>,
    last_stop: Option<Instant>,
    /// Announced while its sweeper was looking: what it saw may predate the commit.
    look_again: bool,
}

pub(super) fn main() {
    // SAFETY: MyProc is this process's PGPROC, in shared memory for the postmaster's life.
    sweepers::set_launcher_latch(unsafe { &mut (*pg_sys::MyProc).procLatch });
    let only = settings::database();
    let mut databases: HashMap<u32, Database> = HashMap::new();
    adopt_running(&mut databases);
    let mut last_catalog: Option<Instant> = None;
    let mut last_start_failure: Option<Instant> = None;
    while BackgroundWorker::wait_latch(Some(POLL)) {
        reload_on_sighup();
        let (announced, rescan) = sweepers::take_announced();
        for oid in &announced {
            if let Some(d) = databases.get_mut(&oid.to_u32()) {
                if d.running.is_none() {
                    d.verdict = Verdict::Unknown;
                } else {
                    d.look_again = true;
                }
            }
        }
        if rescan {
            databases.values_mut().filter(|d| d.running.is_none()).for_each(|d| d.verdict = Verdict::Unknown);
        }
        if !announced.is_empty() || rescan || last_catalog.is_none_or(|t| t.elapsed() >= CATALOG_EVERY) {
            last_catalog = Some(Instant::now());
            read_catalog(&mut databases, only.as_deref());
        }
        reap(&mut databases);
        start_due(&mut databases, only.is_some(), &mut last_start_failure);
    }
    // SIGTERM: see lease_sched_launcher_main.
}

/// Sweepers of an earlier launcher (this one was terminated and restarted) go on: they
/// are adopted, so no database ever gets two.
fn adopt_running(databases: &mut HashMap<u32, Database>) {
    for slot in sweepers::all() {
        if slot.pid == 0 && slot.state != State::Starting {
            sweepers::free(slot.index);
            continue;
        }
        databases.insert(
            slot.database.to_u32(),
            Database {
                name: String::new(),
                sweepable: true,
                verdict: Verdict::Present,
                running: Some(Running { index: slot.index, handle: None, started: Instant::now() }),
                last_start: Some(Instant::now()),
                last_stop: None,
                look_again: false,
            },
        );
    }
}

/// New databases are added (not looked at yet), dropped ones forgotten once no sweeper
/// of theirs is left.
fn read_catalog(databases: &mut HashMap<u32, Database>, only: Option<&str>) {
    let listed = list_databases();
    for (oid, name, connectable, template) in &listed {
        let sweepable = match only {
            Some(only) => name == only,
            None => *connectable && !*template,
        };
        let d = databases.entry(oid.to_u32()).or_insert_with(|| Database {
            name: name.clone(),
            sweepable,
            verdict: Verdict::Unknown,
            running: None,
            last_start: None,
            last_stop: None,
            look_again: false,
        });
        if d.name != *name || d.sweepable != sweepable {
            // Renamed, or made a template or connectable: look again.
            if d.running.is_none() {
                d.verdict = Verdict::Unknown;
            }
            d.name = name.clone();
            d.sweepable = sweepable;
        }
    }
    databases.retain(|oid, d| {
        let listed_now = listed.iter().any(|(o, ..)| o.to_u32() == *oid);
        if !listed_now && d.running.is_none() {
            // Dropped: nobody will send the loss notices still queued for it.
            crate::notices::discard(*oid);
        }
        d.running.is_some() || listed_now
    });
}

/// Free the slots of sweepers that stopped, and learn from each why it did.
fn reap(databases: &mut HashMap<u32, Database>) {
    let max = settings::MAX_DATABASES.get();
    for d in databases.values_mut() {
        let Some(r) = &d.running else { continue };
        let slot = sweepers::all().into_iter().find(|s| s.index == r.index);
        let state = slot.map_or(State::Free, |s| s.state);
        let pid = slot.map_or(0, |s| s.pid);
        let worker_gone = match &r.handle {
            Some(h) => matches!(h.pid(), Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)),
            None => state != State::Starting || r.started.elapsed() > ATTACH_WITHIN,
        };
        if pid != 0 || !worker_gone {
            continue;
        }
        let was_over_limit = d.verdict == Verdict::OverLimit;
        d.verdict = match state {
            State::Absent => Verdict::Absent,
            State::OverLimit => Verdict::OverLimit,
            // Never attached, or left before it looked (its database was being dropped,
            // say): the catalog says whether to look again.
            State::Starting | State::Probing | State::Free => Verdict::Unknown,
            State::Sweeping | State::OutOfDate | State::Waiting => Verdict::Present,
        };
        if std::mem::take(&mut d.look_again) && d.verdict == Verdict::Absent {
            d.verdict = Verdict::Unknown;
        }
        if d.verdict == Verdict::OverLimit && !was_over_limit {
            stats::add(|s| &s.databases_over_limit, 1);
            warning!(
                "lease_sched: database \"{}\" has the extension but is not swept: lease_sched.max_databases ({max}) databases are swept already; raise it (and max_worker_processes)",
                d.name
            );
        }
        sweepers::free(r.index);
        d.running = None;
        d.last_stop = Some(Instant::now());
    }
}

/// Start a sweeper in each database that should have one and has none.
fn start_due(databases: &mut HashMap<u32, Database>, restricted: bool, last_failure: &mut Option<Instant>) {
    let max = settings::MAX_DATABASES.get().max(1) as usize;
    let slots = sweepers::all();
    let mut probing = slots.iter().filter(|s| matches!(s.state, State::Starting | State::Probing)).count();
    let staying = sweepers::staying();
    for (oid, d) in databases.iter_mut() {
        if d.running.is_some() || !d.sweepable || d.last_start.is_some_and(|t| t.elapsed() < SWEEPER_RESTART_AFTER) {
            continue;
        }
        let due = match d.verdict {
            Verdict::Absent => d.last_stop.is_none_or(|t| t.elapsed() >= ABSENT_RECHECK) && probing < PROBES_AT_ONCE,
            Verdict::Unknown => probing < PROBES_AT_ONCE || restricted,
            Verdict::Present => d.last_stop.is_none_or(|t| t.elapsed() >= SWEEPER_STEP_ASIDE),
            Verdict::OverLimit => staying < max,
        };
        if !due {
            continue;
        }
        let oid = pg_sys::Oid::from(*oid);
        let Some(arg) = sweepers::assign(oid) else { break };
        d.last_start = Some(Instant::now());
        let started = builder("lease_sched sweeper", "lease_sched_sweeper_main")
            .set_argument(Some(pg_sys::Datum::from(arg as usize)))
            // SAFETY: MyProcPid is this process's pid.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match started {
            Ok(handle) => {
                sweepers::set_no_worker_slot(false);
                d.running =
                    Some(Running { index: (arg >> 32) as usize, handle: Some(handle), started: Instant::now() });
                if matches!(d.verdict, Verdict::Unknown) {
                    probing += 1;
                }
            }
            Err(_) => {
                sweepers::free((arg >> 32) as usize);
                sweepers::set_no_worker_slot(true);
                if last_failure.is_none_or(|t| t.elapsed() >= START_FAILURE_LOG_EVERY) {
                    *last_failure = Some(Instant::now());
                    warning!(
                        "lease_sched: could not start a sweeper for database \"{}\": no background worker slot free (raise max_worker_processes)",
                        d.name
                    );
                }
                break;
            }
        }
    }
}

/// (oid, name, allows connections, is a template) of every valid database. A plain heap
/// scan of the shared catalog pg_database: a process with no database cannot use catalog
/// indexes.
fn list_databases() -> Vec<(pg_sys::Oid, String, bool, bool)> {
    let mut out = Vec::new();
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
                // -2: a DROP DATABASE that was interrupted left it invalid; nobody may connect.
                if (*form).datconnlimit == -2 {
                    continue;
                }
                let datname = std::ffi::CStr::from_ptr((*form).datname.data.as_ptr());
                out.push((
                    (*form).oid,
                    datname.to_string_lossy().into_owned(),
                    (*form).datallowconn,
                    (*form).datistemplate,
                ));
            }
            pg_sys::table_endscan(scan);
            pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        }
    });
    out
}
