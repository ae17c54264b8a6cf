//! Who sweeps which database: a table of sweeper slots in shared memory.
//!
//! The launcher owns the slots: it assigns one to a database before it starts a sweeper
//! there (the worker's argument names the slot and the assignment's generation), and
//! frees it once that sweeper has stopped. The sweeper attaches to its slot, says what it
//! found (sweeping, no extension, over the bound...) and detaches at exit, leaving its last
//! state for the launcher to read. A backend reads the slots to tell whether its own
//! database is swept (`stats()`'s `swept`, `sweeper_status()`, `job_health.swept`).
//!
//! Lock-free atomics, plus the segment's LWLock (`shmem::with_lock`) around the few
//! read-check-write steps that must not interleave (attach, the bound check).
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, Ordering};

use pgrx::pg_sys;

/// The most sweepers (databases swept at once) the table can hold; the upper bound of
/// `lease_sched.max_databases`.
pub const MAX_SLOTS: usize = 1024;
/// Databases announced by CREATE EXTENSION that the launcher has not looked at yet.
const ANNOUNCED: usize = 64;

/// What a slot's sweeper found or is doing. Left in place when the sweeper exits, so the
/// launcher learns why it stopped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum State {
    Free = 0,
    /// Assigned by the launcher; the worker has not attached yet.
    Starting = 1,
    /// Attached; has not looked at the database's catalog yet.
    Probing = 2,
    /// The extension is installed and current: sweeping.
    Sweeping = 3,
    /// The extension is installed but older than the library: waits for ALTER EXTENSION UPDATE.
    OutOfDate = 4,
    /// `lease_sched.database` names this database and the extension is not there yet: waits.
    Waiting = 5,
    /// Exited: the database does not have the extension.
    Absent = 6,
    /// Exited: the extension is there, but lease_sched.max_databases databases are swept already.
    OverLimit = 7,
}

impl State {
    fn from_u32(v: u32) -> State {
        match v {
            1 => State::Starting,
            2 => State::Probing,
            3 => State::Sweeping,
            4 => State::OutOfDate,
            5 => State::Waiting,
            6 => State::Absent,
            7 => State::OverLimit,
            _ => State::Free,
        }
    }

    /// A state that counts against lease_sched.max_databases: a sweeper that stays.
    fn holds_a_place(self) -> bool {
        matches!(self, State::Sweeping | State::OutOfDate | State::Waiting)
    }
}

#[repr(C)]
pub struct Slot {
    database: AtomicU32,
    /// Bumped at every assignment, so a worker started for an earlier one (by a launcher
    /// that was restarted meanwhile) cannot attach to the slot's next life.
    generation: AtomicU32,
    pid: AtomicI32,
    state: AtomicU32,
    /// Database time of this sweeper's last sweep (0: none yet).
    last_sweep_at: AtomicI64,
    /// The sweeper's latch (in its PGPROC), so a backend can wake it to send loss notices.
    latch: AtomicPtr<pg_sys::Latch>,
}

#[repr(C)]
pub struct Sweepers {
    slots: [Slot; MAX_SLOTS],
    /// The launcher's latch (in its PGPROC, in shared memory), so a backend can wake it.
    launcher_latch: AtomicPtr<pg_sys::Latch>,
    announced: [AtomicU32; ANNOUNCED],
    /// Set when `announced` was full: the launcher then looks at every database again.
    rescan: AtomicBool,
    /// The launcher's last attempt to start a sweeper found no background worker slot.
    no_worker_slot: AtomicBool,
}

/// A slot as the launcher or a backend sees it.
#[derive(Clone, Copy, Debug)]
pub struct SlotView {
    pub index: usize,
    pub database: pg_sys::Oid,
    pub pid: i32,
    pub state: State,
    pub last_sweep_at: i64,
}

fn sweepers() -> Option<&'static Sweepers> {
    crate::shmem::shared().map(|s| &s.sweepers)
}

fn view(index: usize, s: &Slot) -> SlotView {
    SlotView {
        index,
        database: pg_sys::Oid::from(s.database.load(Ordering::Acquire)),
        pid: s.pid.load(Ordering::Acquire),
        state: State::from_u32(s.state.load(Ordering::Acquire)),
        last_sweep_at: s.last_sweep_at.load(Ordering::Relaxed),
    }
}

/// Every slot in use.
pub fn all() -> Vec<SlotView> {
    let Some(t) = sweepers() else { return vec![] };
    t.slots.iter().enumerate().map(|(i, s)| view(i, s)).filter(|v| v.state != State::Free).collect()
}

/// The slot assigned to this database, if any.
pub fn of_database(database: pg_sys::Oid) -> Option<SlotView> {
    all().into_iter().find(|v| v.database == database)
}

/// Backend: the latch of the sweeper sweeping this database now, if there is one.
pub fn sweeper_latch(database: pg_sys::Oid) -> Option<*mut pg_sys::Latch> {
    let t = sweepers()?;
    let db = database.to_u32();
    let s = t.slots.iter().find(|s| {
        s.database.load(Ordering::Acquire) == db && s.state.load(Ordering::Acquire) == State::Sweeping as u32
    })?;
    let latch = s.latch.load(Ordering::Acquire);
    (s.pid.load(Ordering::Acquire) != 0 && !latch.is_null()).then_some(latch)
}

/// Launcher: take a free slot for `database`; returns the worker argument (slot index and
/// generation), or None when every slot is taken.
pub fn assign(database: pg_sys::Oid) -> Option<u64> {
    let t = sweepers()?;
    let (index, slot) =
        t.slots.iter().enumerate().find(|(_, s)| s.state.load(Ordering::Acquire) == State::Free as u32)?;
    let generation = slot.generation.load(Ordering::Relaxed).wrapping_add(1);
    slot.generation.store(generation, Ordering::Relaxed);
    slot.pid.store(0, Ordering::Relaxed);
    slot.last_sweep_at.store(0, Ordering::Relaxed);
    slot.database.store(database.to_u32(), Ordering::Release);
    slot.state.store(State::Starting as u32, Ordering::Release);
    Some(((index as u64) << 32) | generation as u64)
}

/// Launcher: the slot's sweeper has stopped (or never started); free it.
pub fn free(index: usize) {
    if let Some(t) = sweepers() {
        let s = &t.slots[index];
        s.pid.store(0, Ordering::Release);
        s.state.store(State::Free as u32, Ordering::Release);
        s.database.store(0, Ordering::Release);
    }
}

/// Sweeper: attach to the slot the launcher assigned; the database to connect to, or None
/// when the assignment is gone (a restarted launcher reused the slot) or taken.
pub fn attach(arg: u64, pid: i32) -> Option<(usize, pg_sys::Oid)> {
    let t = sweepers()?;
    let (index, generation) = ((arg >> 32) as usize, arg as u32);
    let s = t.slots.get(index)?;
    let shared = crate::shmem::shared()?;
    crate::shmem::with_lock(shared, pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let ok = s.generation.load(Ordering::Acquire) == generation
            && s.state.load(Ordering::Acquire) == State::Starting as u32
            && s.pid.load(Ordering::Acquire) == 0;
        if ok {
            // SAFETY: MyProc is this process's PGPROC, in shared memory.
            s.latch.store(unsafe { &mut (*pg_sys::MyProc).procLatch }, Ordering::Release);
            s.pid.store(pid, Ordering::Release);
            s.state.store(State::Probing as u32, Ordering::Release);
        }
        ok.then(|| (index, pg_sys::Oid::from(s.database.load(Ordering::Acquire))))
    })
}

/// Sweeper: say what it is doing now.
pub fn set_state(index: usize, state: State) {
    if let Some(t) = sweepers() {
        t.slots[index].state.store(state as u32, Ordering::Release);
    }
}

/// Sweeper: it found the extension and would stay; false (and the slot marked OverLimit)
/// when `max` sweepers stay already. Checked and set under the lock, so two sweepers
/// starting at once cannot both take the last place.
pub fn take_place(index: usize, state: State, max: usize) -> bool {
    let (Some(t), Some(shared)) = (sweepers(), crate::shmem::shared()) else { return false };
    crate::shmem::with_lock(shared, pg_sys::LWLockMode::LW_EXCLUSIVE, || {
        let me = &t.slots[index];
        if State::from_u32(me.state.load(Ordering::Acquire)).holds_a_place() {
            me.state.store(state as u32, Ordering::Release);
            return true;
        }
        let staying = t
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != index && State::from_u32(s.state.load(Ordering::Acquire)).holds_a_place())
            .count();
        let ok = staying < max;
        me.state.store(if ok { state } else { State::OverLimit } as u32, Ordering::Release);
        ok
    })
}

/// Sweeper: a sweep of its database finished at `at` (database time).
pub fn record_sweep(index: usize, at: i64) {
    if let Some(t) = sweepers() {
        t.slots[index].last_sweep_at.store(at, Ordering::Relaxed);
    }
}

/// Sweeper, at exit: the process is gone; the state stays for the launcher.
pub fn detach(index: usize, pid: i32) {
    if let Some(t) = sweepers() {
        let _ = t.slots[index].pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Launcher: where backends wake it.
pub fn set_launcher_latch(latch: *mut pg_sys::Latch) {
    if let Some(t) = sweepers() {
        t.launcher_latch.store(latch, Ordering::Release);
    }
}

/// Backend, at the commit of CREATE EXTENSION (or its update): ask the launcher to look
/// at this database now, instead of at its next look at the catalog.
pub fn announce(database: pg_sys::Oid) {
    let Some(t) = sweepers() else { return };
    let placed = t
        .announced
        .iter()
        .any(|a| a.compare_exchange(0, database.to_u32(), Ordering::AcqRel, Ordering::Acquire).is_ok());
    if !placed {
        t.rescan.store(true, Ordering::Release);
    }
    let latch = t.launcher_latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: the latch lives in a PGPROC in shared memory; setting a latch its owner
        // has left only wakes whoever owns that PGPROC now, which is harmless.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// Launcher: the databases announced since the last call, and whether to look at all.
pub fn take_announced() -> (Vec<pg_sys::Oid>, bool) {
    let Some(t) = sweepers() else { return (vec![], false) };
    let oids =
        t.announced.iter().map(|a| a.swap(0, Ordering::AcqRel)).filter(|v| *v != 0).map(pg_sys::Oid::from).collect();
    (oids, t.rescan.swap(false, Ordering::AcqRel))
}

/// Sweepers that stay (sweeping, or waiting for the extension or its update).
pub fn staying() -> usize {
    all().iter().filter(|v| v.state.holds_a_place() && v.pid != 0).count()
}

thread_local! {
    static ANNOUNCE_AT_COMMIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Backend: announce this database to the launcher when the open transaction commits
/// (before that, a sweeper could not see the extension yet). Nothing on abort.
pub fn announce_at_commit() {
    if !CALLBACK.get() {
        // SAFETY: registers a plain callback for this backend's life; it touches only
        // backend-local state and shared atomics (no SPI, no ERROR).
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact_end), std::ptr::null_mut()) };
        CALLBACK.set(true);
    }
    ANNOUNCE_AT_COMMIT.set(true);
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_xact_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_COMMIT => {
            // Asked or not, the request ends with this transaction.
            let asked = ANNOUNCE_AT_COMMIT.replace(false);
            if asked {
                // SAFETY: MyDatabaseId is set once at backend start.
                announce(unsafe { pg_sys::MyDatabaseId });
            }
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => ANNOUNCE_AT_COMMIT.set(false),
        _ => {}
    }
}

/// Sweepers sweeping their database now.
pub fn sweeping() -> usize {
    all().iter().filter(|v| v.state == State::Sweeping && v.pid != 0).count()
}

/// Launcher: whether its last attempt to start a sweeper found a worker slot.
pub fn set_no_worker_slot(none: bool) {
    if let Some(t) = sweepers() {
        t.no_worker_slot.store(none, Ordering::Release);
    }
}

/// Backend: the launcher cannot start sweepers now (max_worker_processes is used up).
pub fn no_worker_slot() -> bool {
    sweepers().is_some_and(|t| t.no_worker_slot.load(Ordering::Acquire))
}
