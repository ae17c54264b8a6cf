//! The shared-memory segment, present only when lease_sched is in
//! `shared_preload_libraries`: one LWLock, the sweeper slots, the statistics counters, and
//! the runtime touch buffer with its marks of runtimes known online. Sized at postmaster start from `lease_sched.touch_buffer_size`.
//!
//! The counters (`stats`) and the table layout (`touch_table`) are defined by leaf modules
//! that know nothing of this segment; `stats::attach` hands the counters their place.
//!
//! Who holds the lock: `runtime::buffer` only, for the few instructions that copy
//! entries in or out — never across SPI or any other call that can block or error.
use std::ptr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::settings;
use crate::stats::{self, Stats};
use crate::sweepers::Sweepers;
use crate::touch_table::{self, Slot, TouchBuffer};

const SEGMENT_NAME: &std::ffi::CStr = c"lease_sched shared state";
const TRANCHE_NAME: &std::ffi::CStr = c"lease_sched";

#[repr(C)]
pub struct Shared {
    pub lock: *mut pg_sys::LWLock,
    /// The pid of the sweeper that owns the touch buffer (0: none). The buffer serves one
    /// database: the first sweeper to claim it at start, which clears it at exit; the
    /// sweepers of other databases find it taken and sweep without it (touches there are
    /// written directly).
    pub sweeper_pid: std::sync::atomic::AtomicI32,
    /// Which sweeper sweeps which database (`crate::sweepers`).
    pub sweepers: Sweepers,
    pub stats: Stats,
    pub touches: TouchBuffer,
    /// The runtimes of the buffer's database known to be online: a touch of one of them is
    /// buffered without reading its row (`runtime::touch`). Each slot holds the generation
    /// its mark was set in; only marks of the current generation count.
    pub online: TouchBuffer,
    /// The marks' generation, under the lock. Every statement that may take a row out of
    /// `online` (the sweep's offline pass, any UPDATE naming status or id, DELETE,
    /// TRUNCATE) moves it on through the table's statement triggers
    /// (`runtime::forget_online`); a touch sets a mark only in the generation it read in.
    pub online_epoch: u64,
    /// Loss notices committed and not yet sent by their database's sweeper (`notices`).
    pub notices: crate::notices::Queue,
    // `touches.slot_count` slots follow in the same allocation, then `online.slot_count`.
}

// Set in the postmaster by the startup hook and inherited by every forked child.
static mut SHARED: *mut Shared = ptr::null_mut();
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// The shared state, or None when the library was not preloaded.
pub fn shared() -> Option<&'static Shared> {
    // SAFETY: SHARED is written once per postmaster life, before any backend starts.
    unsafe { SHARED.as_ref() }
}

fn segment_size() -> usize {
    std::mem::size_of::<Shared>()
        + 2 * touch_table::slot_count_for(settings::TOUCH_BUFFER_SIZE.get()) * std::mem::size_of::<Slot>()
}

/// Install the hooks; call from `_PG_init` while shared_preload_libraries loads.
pub fn init() {
    // SAFETY: _PG_init runs single-threaded in the postmaster; we chain previous hooks.
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(segment_size());
        pg_sys::RequestNamedLWLockTranche(TRANCHE_NAME.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        let init_lock = addin_shmem_init_lock();
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = segment_size();
        let shared = pg_sys::ShmemInitStruct(SEGMENT_NAME.as_ptr(), size, &mut found) as *mut Shared;
        if !found {
            // SAFETY: fresh shared memory of `size` bytes; all-zero is a valid empty state
            // for every field (null lock set just below, zero counters, empty slots).
            ptr::write_bytes(shared as *mut u8, 0, size);
            (*shared).lock = &mut (*pg_sys::GetNamedLWLockTranche(TRANCHE_NAME.as_ptr())).lock;
            (*shared).touches.init(
                touch_table::slot_count_for(settings::TOUCH_BUFFER_SIZE.get()),
                settings::TOUCH_BUFFER_SIZE.get(),
            );
            (*shared).online.init(
                touch_table::slot_count_for(settings::TOUCH_BUFFER_SIZE.get()),
                settings::TOUCH_BUFFER_SIZE.get(),
            );
        }
        SHARED = shared;
        stats::attach(&(*shared).stats);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// PostgreSQL's AddinShmemInitLock, a macro in C: `&MainLWLockArray[21].lock` (PG 15's
/// lwlocknames.h), which bindgen cannot see.
unsafe fn addin_shmem_init_lock() -> *mut pg_sys::LWLock {
    const ADDIN_SHMEM_INIT_LOCK: usize = 21;
    unsafe { &mut (*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock }
}

/// Run `f` with the shared lock held in `mode`. Keep `f` short and free of calls that
/// can raise an ERROR or wait.
pub fn with_lock<R>(shared: &Shared, mode: pg_sys::LWLockMode::Type, f: impl FnOnce() -> R) -> R {
    // SAFETY: the lock lives in shared memory for the postmaster's life. If `f` panicked,
    // the ERROR's transaction abort releases every LWLock this backend holds.
    unsafe { pg_sys::LWLockAcquire(shared.lock, mode) };
    let r = f();
    unsafe { pg_sys::LWLockRelease(shared.lock) };
    r
}

/// Become the sweeper that owns the touch buffer; false when another live one already is.
pub fn claim_sweeper(pid: i32) -> bool {
    use std::sync::atomic::Ordering;
    shared().is_some_and(|s| s.sweeper_pid.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).is_ok())
}

/// Give the touch buffer up (only by the process that holds it); true when it did.
pub fn release_sweeper(pid: i32) -> bool {
    use std::sync::atomic::Ordering;
    shared().is_some_and(|s| s.sweeper_pid.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire).is_ok())
}
