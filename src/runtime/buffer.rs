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
    with_tables(shared, mode, |touches, _, _| f(touches))
}

/// The touch table, the table of runtimes known online and the marks' epoch, under the lock.
fn with_tables<R>(
    shared: &Shared,
    mode: pgrx::pg_sys::LWLockMode::Type,
    f: impl FnOnce(&mut Table, &mut Table, &mut u64) -> R,
) -> R {
    with_lock(shared, mode, || {
        // SAFETY: the touch slots follow `Shared` in one allocation of `slot_count` slots,
        // the online slots follow them (see shmem::segment_size), and the lock held here
        // serialises all access. Readers under LW_SHARED only read through the tables.
        unsafe {
            let base = shared as *const Shared as *mut Shared;
            let slots_ptr = base.add(1) as *mut Slot;
            let header = &mut (*base).touches;
            let slots = std::slice::from_raw_parts_mut(slots_ptr, header.slot_count as usize);
            let online_header = &mut (*base).online;
            let online_ptr = slots_ptr.add(header.slot_count as usize);
            let online_slots = std::slice::from_raw_parts_mut(online_ptr, online_header.slot_count as usize);
            let epoch = &mut (*base).online_epoch;
            f(&mut Table::new(header, slots), &mut Table::new(online_header, online_slots), epoch)
        }
    })
}

/// A touch of a runtime known online is buffered at once; otherwise the caller reads the
/// row and comes back with the generation given here (`record_read_online`).
pub enum Known {
    Buffered(Recorded),
    /// Not known online (or no buffer): read the row. The marks' generation, read before
    /// the row is.
    Unknown(u64),
}

/// A mark is valid only in the generation it was set in: forgetting every mark is one
/// increment (`forget_online`), whatever the table holds. Generations start at 1 (a slot
/// holding 0 is empty).
fn current(generation: &mut u64) -> u64 {
    if *generation == 0 {
        *generation = 1;
    }
    *generation
}

/// Buffer a touch without reading the row, if its runtime is known online.
pub fn record_if_known_online(id: RuntimeId, seen_at: SeenAt) -> Known {
    let Some(shared) = shared() else { return Known::Unknown(0) };
    // Without a sweeper nothing is buffered (the usual case in a database the buffer does
    // not serve): skip the lock. A racy read only costs this touch its mark (generation 0
    // never matches).
    // SAFETY: a plain read of a bool in shared memory that only changes under the lock.
    if !unsafe { std::ptr::read_volatile(&shared.touches.accepting) } {
        return Known::Unknown(0);
    }
    with_tables(shared, LW_EXCLUSIVE, |t, online, generation| {
        let generation = current(generation);
        if t.header.accepting
            && t.header.is_mine()
            && online.header.is_mine()
            && online.get(&id) == Some(generation as SeenAt)
        {
            Known::Buffered(t.record(id, seen_at))
        } else {
            Known::Unknown(generation)
        }
    })
}

/// Buffer a touch of a runtime whose row was just read online. With `settled` (the row
/// version read is the row's latest, committed by another transaction) and the marks still
/// in `generation` (nothing forgotten since before the read), the runtime is marked known
/// online, so its next touches skip the read. None when there is no buffer for this
/// database right now.
pub fn record_read_online(id: RuntimeId, seen_at: SeenAt, generation: u64, settled: bool) -> Option<Recorded> {
    let shared = shared()?;
    with_tables(shared, LW_EXCLUSIVE, |t, online, now| {
        if !(t.header.accepting && t.header.is_mine()) {
            return None;
        }
        let now = current(now);
        if settled && generation == now && online.header.is_mine() {
            // A later generation replaces an earlier one (the table keeps the larger value).
            // Full of marks, most of them stale: start over (a rare O(size) pass).
            if let Recorded::Full = online.record(id, now as SeenAt) {
                online.drain(&mut Vec::new());
                online.record(id, now as SeenAt);
            }
        }
        Some(t.record(id, seen_at))
    })
}

/// Forget every runtime known online: their next touches read their rows. Called by the
/// table's statement triggers after a statement that may have taken rows out of online
/// (status or id updated, rows deleted, the table truncated) changed them and before it
/// commits: every reader from then on sees the change in progress on the row version and
/// sets no mark on it (`record_read_online`'s `settled`), and every reader that read the
/// row before finds the generation moved on and sets none either.
pub fn forget_online() {
    if let Some(shared) = shared() {
        with_tables(shared, LW_EXCLUSIVE, |_, online, generation| {
            // Marks are of the buffer's database only: a statement in another one (its own
            // sweep) leaves them.
            if online.header.is_mine() {
                *generation = current(generation).wrapping_add(1).max(1);
            }
        });
    }
}

/// Buffer one touch. None when there is no buffer for this database right now (not
/// preloaded, another database, or no sweeper attached): the caller writes directly.
/// (Marks nothing: for touches restored from a saved file.)
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
        with_tables(shared, LW_EXCLUSIVE, |t, online, epoch| {
            if !t.header.is_mine() {
                let mut discarded = Vec::new();
                t.drain(&mut discarded);
                // SAFETY: MyDatabaseId is set once at backend start.
                t.header.database = unsafe { pgrx::pg_sys::MyDatabaseId };
            }
            // The marks start empty with every sweeper: nothing is known online until read.
            online.drain(&mut Vec::new());
            online.header.database = t.header.database;
            *epoch = current(epoch).wrapping_add(1).max(1);
            t.header.accepting = true;
        });
    }
}

/// Stop buffering: from now on touches are written directly. What is still pending stays
/// for the sweeper's last flush, and what that flush cannot write (a row locked by
/// someone) for the next sweeper of this database.
pub fn close() {
    if let Some(shared) = shared() {
        with_tables(shared, LW_EXCLUSIVE, |t, online, epoch| {
            t.header.accepting = false;
            online.drain(&mut Vec::new());
            *epoch = current(epoch).wrapping_add(1).max(1);
        });
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
