//! The touch buffer's table: pending `last_seen_at` bumps keyed by runtime id, an
//! open-addressing hash table (linear probing, backward-shift deletion, load at most
//! 1/2) over a header and a slice of slots. Pure data: it knows nothing of shared memory
//! or locks (`shmem` lays it out, `runtime::buffer` locks it), so it is tested here
//! without a server.

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
    pub(crate) slot_count: u32,
    capacity: u32,
    len: u32,
    /// Touches are buffered only while a sweeper is attached to this database and will
    /// drain the buffer before it exits; otherwise they are written directly. This is
    /// what makes "a clean shutdown loses no touch" hold even when no sweeper runs.
    pub(crate) accepting: bool,
    pub(crate) database: pgrx::pg_sys::Oid,
    /// When the whole buffer was last flushed (database time), for the worker's schedule.
    pub(crate) last_flush_at: SeenAt,
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
    pub(crate) fn is_mine(&self) -> bool {
        // SAFETY: MyDatabaseId is set once at backend start.
        self.database == unsafe { pgrx::pg_sys::MyDatabaseId }
    }
}

/// Slots for `capacity` entries: a power of two, at least twice the capacity.
pub fn slot_count_for(capacity: i32) -> usize {
    (capacity.max(1) as usize * 2).next_power_of_two()
}

pub struct Table<'a> {
    pub(crate) header: &'a mut TouchBuffer,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(capacity: i32) -> (Box<TouchBuffer>, Vec<Slot>) {
        let n = slot_count_for(capacity);
        let mut h = Box::new(TouchBuffer {
            slot_count: 0,
            capacity: 0,
            len: 0,
            accepting: false,
            database: pgrx::pg_sys::InvalidOid,
            last_flush_at: 0,
        });
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
            if remaining.len().is_multiple_of(50) {
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
