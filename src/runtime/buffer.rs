//! The runtime touch buffer in shared memory: many touches of one runtime coalesce into
//! one entry holding the latest time; a flush turns all entries into one set-based UPDATE.
//!
//! The table itself is `crate::touch_table`; this module is the only code that locks the
//! shared copy (`shmem::with_lock`), moves entries in or out and unlocks: no SPI under the
//! lock. Private to `runtime`: everything else goes through `runtime`'s functions.
use pgrx::pg_sys::LWLockMode::{LW_EXCLUSIVE, LW_SHARED};

use crate::shmem::{shared, with_lock, Shared};
use crate::touch_table::{Recorded, RuntimeId, SeenAt, Slot, Table};

fn with_table<R>(shared: &Shared, mode: pgrx::pg_sys::LWLockMode::Type, f: impl FnOnce(&mut Table) -> R) -> R {
    with_lock(shared, mode, || {
        // SAFETY: the slots follow `Shared` in one allocation of `slot_count` slots
        // (see shmem::segment_size), and the lock held here serialises all access.
        // Readers under LW_SHARED only read through the table.
        unsafe {
            let base = shared as *const Shared as *mut Shared;
            let slots_ptr = base.add(1) as *mut Slot;
            let header = &mut (*base).touches;
            let slots = std::slice::from_raw_parts_mut(slots_ptr, header.slot_count as usize);
            f(&mut Table::new(header, slots))
        }
    })
}

/// Buffer one touch. None when there is no buffer for this database right now (not
/// preloaded, another database, or no sweeper attached): the caller writes directly.
pub fn record(id: RuntimeId, seen_at: SeenAt) -> Option<Recorded> {
    let shared = shared()?;
    with_table(shared, LW_EXCLUSIVE, |t| (t.header.accepting && t.header.is_mine()).then(|| t.record(id, seen_at)))
}

/// Entries waiting for a flush in this database.
pub fn pending() -> usize {
    shared().map_or(0, |s| with_table(s, LW_SHARED, |t| if t.header.is_mine() { t.len() } else { 0 }))
}

/// Copy every entry of this database (they stay buffered until their write commits, see
/// `forget_written`), and note the flush time.
pub fn copy_all(now: SeenAt) -> Vec<(RuntimeId, SeenAt)> {
    let mut out = Vec::new();
    if let Some(shared) = shared() {
        with_table(shared, LW_EXCLUSIVE, |t| {
            if t.header.is_mine() {
                t.copy_into(&mut out);
                t.header.last_flush_at = now;
            }
        });
    }
    out
}

/// Copy every entry of this database, changing nothing.
pub fn copy_pending() -> Vec<(RuntimeId, SeenAt)> {
    let mut out = Vec::new();
    if let Some(shared) = shared() {
        with_table(shared, LW_SHARED, |t| {
            if t.header.is_mine() {
                t.copy_into(&mut out);
            }
        });
    }
    out
}

/// Copy the entries of just these ids (they stay buffered).
pub fn copy_some(ids: &[RuntimeId]) -> Vec<(RuntimeId, SeenAt)> {
    match shared() {
        None => vec![],
        Some(shared) => with_table(shared, LW_SHARED, |t| {
            if !t.header.is_mine() {
                return vec![];
            }
            ids.iter().filter_map(|id| t.get(id).map(|seen| (*id, seen))).collect()
        }),
    }
}

/// A write of these entries committed: drop each one unless a later touch of the same id
/// arrived meanwhile (that one still waits for its own write).
pub fn forget_written(entries: &[(RuntimeId, SeenAt)]) {
    if let Some(shared) = shared() {
        with_table(shared, LW_EXCLUSIVE, |t| {
            if t.header.is_mine() {
                for (id, seen) in entries {
                    if t.get(id).is_some_and(|buffered| buffered <= *seen) {
                        t.take(id);
                    }
                }
            }
        });
    }
}

/// The sweeper attaches: from now on touches in its database are buffered. Entries
/// left by a sweeper of another database (dropped or renamed) are discarded.
pub fn open() {
    if let Some(shared) = shared() {
        with_table(shared, LW_EXCLUSIVE, |t| {
            if !t.header.is_mine() {
                let mut discarded = Vec::new();
                t.drain(&mut discarded);
                // SAFETY: MyDatabaseId is set once at backend start.
                t.header.database = unsafe { pgrx::pg_sys::MyDatabaseId };
            }
            t.header.accepting = true;
        });
    }
}

/// Stop buffering: from now on touches are written directly. What is still pending stays
/// for the sweeper's last flush, and what that flush cannot write (a row locked by
/// someone) for the next sweeper of this database.
pub fn close() {
    if let Some(shared) = shared() {
        with_table(shared, LW_EXCLUSIVE, |t| t.header.accepting = false);
    }
}

/// When the buffer was last flushed whole; the first call after server start starts
/// the clock at `now`. None without a buffer.
pub fn flush_clock(now: SeenAt) -> Option<SeenAt> {
    shared().map(|s| {
        with_table(s, LW_EXCLUSIVE, |t| {
            if t.header.last_flush_at == 0 {
                t.header.last_flush_at = now;
            }
            t.header.last_flush_at
        })
    })
}
