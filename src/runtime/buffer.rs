//! The runtime touch buffer: pending `last_seen_at` bumps, keyed by runtime id, in
//! shared memory. Many touches of one id coalesce into one entry holding the latest
//! time; a flush turns all entries into one set-based UPDATE.
//!
//! `Table` is the pure open-addressing hash table (linear probing, backward-shift
//! deletion, load at most 1/2), testable without a server. The functions at the bottom
//! lock the shared copy, move entries in or out, and unlock: no SPI under the lock.
use pgrx::pg_sys::LWLockMode::{LW_EXCLUSIVE, LW_SHARED};

use crate::shmem::{shared, with_lock, Shared};

pub type RuntimeId = [u8; 16];
/// Database time in microseconds (TimestampTz). 0 marks an empty slot: no real touch
/// happens at exactly 2000-01-01 00:00:00.
pub type SeenAt = i64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Slot {
    id: RuntimeId,
    seen_at: SeenAt,
}

impl Slot {
    fn is_empty(&self) -> bool {
        self.seen_at == 0
    }
}

/// The header kept in shared memory; the slots follow the `Shared` struct.
#[repr(C)]
pub struct TouchBuffer {
    slot_count: u32,
    capacity: u32,
    len: u32,
    /// Touches are buffered only while a sweeper is attached to this database and will
    /// drain the buffer before it exits; otherwise they are written directly. This is
    /// what makes "a clean shutdown loses no touch" hold even when no sweeper runs.
    accepting: bool,
    database: pgrx::pg_sys::Oid,
    /// When the whole buffer was last flushed (database time), for the worker's schedule.
    last_flush_at: SeenAt,
}

impl TouchBuffer {
    pub fn init(&mut self, slot_count: usize, capacity: i32) {
        self.slot_count = slot_count as u32;
        self.capacity = capacity as u32;
        self.len = 0;
        self.accepting = false;
        self.database = pgrx::pg_sys::InvalidOid;
        self.last_flush_at = 0;
    }

    /// Does this backend's database own the buffer?
    fn is_mine(&self) -> bool {
        // SAFETY: MyDatabaseId is set once at backend start.
        self.database == unsafe { pgrx::pg_sys::MyDatabaseId }
    }
}

/// Slots for `capacity` entries: a power of two, at least twice the capacity.
pub fn slot_count_for(capacity: i32) -> usize {
    (capacity.max(1) as usize * 2).next_power_of_two()
}

pub struct Table<'a> {
    header: &'a mut TouchBuffer,
    slots: &'a mut [Slot],
}

pub enum Recorded {
    New,
    Coalesced,
    Full,
}

impl<'a> Table<'a> {
    pub fn new(header: &'a mut TouchBuffer, slots: &'a mut [Slot]) -> Self {
        debug_assert!(slots.len().is_power_of_two() && slots.len() == header.slot_count as usize);
        Table { header, slots }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, id: &RuntimeId) -> usize {
        // Ids are random UUIDs, but mix anyway so hand-made ids spread too.
        let x = u64::from_le_bytes(id[..8].try_into().unwrap()) ^ u64::from_le_bytes(id[8..].try_into().unwrap());
        (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask()
    }

    fn find(&self, id: &RuntimeId) -> Result<usize, usize> {
        let mut i = self.home(id);
        loop {
            let slot = &self.slots[i];
            if slot.is_empty() {
                return Err(i);
            }
            if &slot.id == id {
                return Ok(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    pub fn len(&self) -> usize {
        self.header.len as usize
    }

    /// Record a touch; keeps the later time when the id is already pending.
    pub fn record(&mut self, id: RuntimeId, seen_at: SeenAt) -> Recorded {
        debug_assert!(seen_at != 0);
        match self.find(&id) {
            Ok(i) => {
                self.slots[i].seen_at = self.slots[i].seen_at.max(seen_at);
                Recorded::Coalesced
            }
            Err(_) if self.header.len >= self.header.capacity => Recorded::Full,
            Err(i) => {
                self.slots[i] = Slot { id, seen_at };
                self.header.len += 1;
                Recorded::New
            }
        }
    }

    /// Remove one id, returning its pending time.
    pub fn take(&mut self, id: &RuntimeId) -> Option<SeenAt> {
        let mut hole = self.find(id).ok()?;
        let seen_at = self.slots[hole].seen_at;
        self.slots[hole] = Slot::default();
        self.header.len -= 1;
        // Backward-shift: pull later entries of the probe run into the hole so that
        // every entry stays reachable from its home slot without tombstones.
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask();
            if self.slots[j].is_empty() {
                return Some(seen_at);
            }
            let home = self.home(&self.slots[j].id);
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = self.slots[j];
                self.slots[j] = Slot::default();
                hole = j;
            }
        }
    }

    /// The pending time of one id.
    pub fn get(&self, id: &RuntimeId) -> Option<SeenAt> {
        self.find(id).ok().map(|i| self.slots[i].seen_at)
    }

    /// Copy every entry out, leaving the table as it is.
    pub fn copy_into(&self, out: &mut Vec<(RuntimeId, SeenAt)>) {
        out.reserve(self.header.len as usize);
        out.extend(self.slots.iter().filter(|s| !s.is_empty()).map(|s| (s.id, s.seen_at)));
    }

    /// Move every entry out, leaving the table empty.
    pub fn drain(&mut self, out: &mut Vec<(RuntimeId, SeenAt)>) {
        if self.header.len == 0 {
            return;
        }
        out.reserve(self.header.len as usize);
        for slot in self.slots.iter_mut().filter(|s| !s.is_empty()) {
            out.push((slot.id, slot.seen_at));
            *slot = Slot::default();
        }
        self.header.len = 0;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: i32) -> (Box<TouchBuffer>, Vec<Slot>) {
        let n = slot_count_for(capacity);
        let mut h = Box::new(TouchBuffer { slot_count: 0, capacity: 0, len: 0, accepting: false, database: pgrx::pg_sys::InvalidOid, last_flush_at: 0 });
        h.init(n, capacity);
        (h, vec![Slot::default(); n])
    }

    fn id(n: u32) -> RuntimeId {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.to_le_bytes());
        b
    }

    #[test]
    fn touches_of_one_id_coalesce_to_the_latest() {
        let (mut h, mut s) = table(8);
        let mut t = Table::new(&mut h, &mut s);
        assert!(matches!(t.record(id(1), 10), Recorded::New));
        assert!(matches!(t.record(id(1), 30), Recorded::Coalesced));
        assert!(matches!(t.record(id(1), 20), Recorded::Coalesced));
        assert_eq!(t.len(), 1);
        assert_eq!(t.take(&id(1)), Some(30));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_full_table_refuses_new_ids_but_coalesces_known_ones() {
        let (mut h, mut s) = table(3);
        let mut t = Table::new(&mut h, &mut s);
        for n in 0..3 {
            assert!(matches!(t.record(id(n), 5), Recorded::New));
        }
        assert!(matches!(t.record(id(9), 5), Recorded::Full));
        assert!(matches!(t.record(id(1), 6), Recorded::Coalesced));
    }

    #[test]
    fn take_keeps_every_other_entry_reachable() {
        // Many ids, removed in a scrambled order: after each removal every remaining id
        // must still be found (this is what backward-shift deletion must guarantee).
        let (mut h, mut s) = table(500);
        let mut t = Table::new(&mut h, &mut s);
        let ids: Vec<u32> = (0..500).map(|n| n * 7919).collect();
        for (k, n) in ids.iter().enumerate() {
            t.record(id(*n), k as i64 + 1);
        }
        let mut remaining: Vec<u32> = ids.clone();
        let mut k = 0usize;
        while !remaining.is_empty() {
            k = (k + 37) % remaining.len();
            let n = remaining.swap_remove(k);
            assert!(t.take(&id(n)).is_some());
            assert!(t.take(&id(n)).is_none());
            if remaining.len() % 50 == 0 {
                for m in &remaining {
                    assert!(t.find(&id(*m)).is_ok(), "lost {m}");
                }
            }
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn drain_empties_and_returns_everything() {
        let (mut h, mut s) = table(100);
        let mut t = Table::new(&mut h, &mut s);
        for n in 0..100 {
            t.record(id(n), 1 + n as i64);
        }
        let mut out = vec![];
        t.drain(&mut out);
        assert_eq!(out.len(), 100);
        assert_eq!(t.len(), 0);
        assert!(matches!(t.record(id(3), 1), Recorded::New));
    }
}
