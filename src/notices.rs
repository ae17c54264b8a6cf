//! Loss notices: `NOTIFY lease_sched_lost` to the holder a steal or a lock takeover deposed.
//!
//! PostgreSQL serialises the commits of transactions that NOTIFY: each holds the
//! notification queue's lock from writing its notices until its commit record is flushed.
//! A steal that notified inline therefore committed one at a time. So, when lease_sched is
//! preloaded and its database has a sweeper, a steal only *records* the notice:
//!
//! - during the transaction, in the backend's transaction state (`crate::xact`); each entry
//!   holds a place reserved in the shared queue, so the commit cannot find it full. A subtransaction that rolls back
//!   drops its entries (and their places); an abort drops them all;
//! - at commit (`XACT_EVENT_COMMIT`, after the commit record is durable) the entries go
//!   into the shared queue and the database's sweeper is woken (its latch);
//! - the sweeper sends what is queued for its database in one transaction of its own
//!   (`deliver`), right after: a listener receives the notice from the sweeper's backend,
//!   shortly after the steal committed, never for a steal that rolled back.
//!
//! The notice is sent inline, as a plain NOTIFY in the stealing transaction, when the
//! library is not preloaded, when the database has no sweeper (lease_sched.max_databases
//! databases are swept already, or it is starting), when the queue is full, or when the
//! payload (a long lock name) does not fit an entry. A transaction that recorded a notice
//! cannot be prepared, as one that ran NOTIFY cannot.
//!
//! Within one delivery, PostgreSQL folds identical notices into one (as it does within one
//! transaction): two steals of the same execution in quick succession may be told once.
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::settings;
use crate::spi_plans::{execute, Statement};

/// Entries in the shared queue (all databases together).
const CAPACITY: usize = 1024;
/// The longest payload an entry holds; longer ones (long lock names) are sent inline.
const PAYLOAD_MAX: usize = 116;

const FREE: u32 = 0;
const WRITING: u32 = 1;
const READY: u32 = 2;

#[repr(C)]
pub struct Entry {
    state: AtomicU32,
    database: AtomicU32,
    len: AtomicU32,
    payload: [u8; PAYLOAD_MAX],
}

/// The shared queue: all-zero is empty.
#[repr(C)]
pub struct Queue {
    /// Entries READY or being written plus places reserved by open transactions: never
    /// more than CAPACITY, so a committing transaction always finds its places.
    taken: AtomicUsize,
    entries: [Entry; CAPACITY],
}

fn queue() -> Option<&'static Queue> {
    crate::shmem::shared().map(|s| &s.notices)
}

impl Queue {
    fn reserve(&self) -> bool {
        self.taken.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| (t < CAPACITY).then_some(t + 1)).is_ok()
    }

    fn unreserve(&self, n: usize) {
        if n > 0 {
            self.taken.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Place a reserved entry. There is a free entry: `taken` counts every one in use.
    fn push(&self, database: u32, payload: &[u8]) {
        for e in &self.entries {
            if e.state.compare_exchange(FREE, WRITING, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                // SAFETY: WRITING makes this entry ours until we store READY; nobody else
                // reads or writes its payload meanwhile.
                let dst = e.payload.as_ptr() as *mut u8;
                unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), dst, payload.len()) };
                e.len.store(payload.len() as u32, Ordering::Relaxed);
                e.database.store(database, Ordering::Relaxed);
                e.state.store(READY, Ordering::Release);
                return;
            }
        }
    }

    fn any_for(&self, database: u32) -> bool {
        self.taken.load(Ordering::Acquire) > 0
            && self
                .entries
                .iter()
                .any(|e| e.state.load(Ordering::Acquire) == READY && e.database.load(Ordering::Relaxed) == database)
    }

    /// Take every READY entry of `database` out of the queue (their payloads, when `keep`).
    fn take_for(&self, database: u32, keep: bool) -> Vec<String> {
        let mut out = Vec::new();
        for e in &self.entries {
            if e.state.load(Ordering::Acquire) != READY || e.database.load(Ordering::Relaxed) != database {
                continue;
            }
            // Copied out before the entry is given back; WRITING keeps a committing backend
            // from reusing it meanwhile (and the launcher's discard from racing the sweeper).
            if e.state.compare_exchange(READY, WRITING, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            if e.database.load(Ordering::Relaxed) != database {
                // Reused for another database between the two reads: not ours.
                e.state.store(READY, Ordering::Release);
                continue;
            }
            if keep {
                let len = (e.len.load(Ordering::Relaxed) as usize).min(PAYLOAD_MAX);
                out.push(String::from_utf8_lossy(&e.payload[..len]).into_owned());
            }
            e.state.store(FREE, Ordering::Release);
            self.taken.fetch_sub(1, Ordering::AcqRel);
        }
        out
    }
}

static NOTIFY_LOST: Statement =
    Statement { sql: "SELECT pg_catalog.pg_notify('lease_sched_lost', $1)", arg_types: &[pg_sys::TEXTOID] };

/// Tell the holder this transaction deposed, at commit (payload: an execution_id, or
/// `lock:<name>`), unless `lease_sched.notify_lost` is off. The sweep notifies in its own
/// statement, from the sweeper.
pub fn lost(client: &mut pgrx::spi::SpiClient<'_>, payload: String) {
    if !settings::NOTIFY_LOST.get() {
        return;
    }
    if !record(&payload) {
        execute(client, &NOTIFY_LOST, &[payload.into()]);
    }
}

/// Keep the notice for the sweeper to send after commit; false when it must be sent inline.
fn record(payload: &str) -> bool {
    let Some(q) = queue() else { return false };
    // SAFETY: MyDatabaseId is set once at backend start.
    let database = unsafe { pg_sys::MyDatabaseId };
    if payload.len() > PAYLOAD_MAX || crate::sweepers::sweeper_latch(database).is_none() || !q.reserve() {
        return false;
    }
    crate::xact::notice_recorded(payload.to_owned());
    true
}

/// The open transaction committed after recording these notices (crate::xact keeps them
/// until then): into the shared queue, in the places they reserved, and the database's
/// sweeper is woken to send them.
pub fn committed(payloads: Vec<String>) {
    let Some(q) = queue() else { return };
    if payloads.is_empty() {
        return;
    }
    // SAFETY: MyDatabaseId is set once at backend start.
    let database = unsafe { pg_sys::MyDatabaseId };
    for payload in &payloads {
        q.push(database.to_u32(), payload.as_bytes());
    }
    // The sweeper that was there at the steal may have left since: its successor sends
    // these when it starts.
    if let Some(latch) = crate::sweepers::sweeper_latch(database) {
        // SAFETY: the latch lives in a PGPROC in shared memory; setting the latch of a
        // process that left only wakes whoever owns that PGPROC now, harmlessly.
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// `n` recorded notices were rolled back (with their transaction or subtransaction): their
/// reserved places go back to the queue.
pub fn forgotten(n: usize) {
    if let Some(q) = queue() {
        q.unreserve(n);
    }
}

/// Sweeper: are notices waiting for this database?
pub fn waiting() -> bool {
    // SAFETY: MyDatabaseId is set once the worker connected.
    queue().is_some_and(|q| q.any_for(unsafe { pg_sys::MyDatabaseId }.to_u32()))
}

/// Sweeper, in a transaction: send every notice queued for this database (at its commit).
/// Returns how many. If the transaction fails they are lost, as a failed NOTIFY is.
pub fn deliver() -> usize {
    let Some(q) = queue() else { return 0 };
    // SAFETY: MyDatabaseId is set once the worker connected.
    let payloads = q.take_for(unsafe { pg_sys::MyDatabaseId }.to_u32(), true);
    if payloads.is_empty() {
        return 0;
    }
    let n = payloads.len();
    Spi::connect_mut(|client| {
        execute(client, &DELIVER, &[payloads.into()]);
    });
    n
}

/// Launcher: the database was dropped; forget the notices queued for it.
pub fn discard(database: u32) {
    if let Some(q) = queue() {
        q.take_for(database, false);
    }
}

static DELIVER: Statement = Statement {
    sql: "SELECT pg_catalog.pg_notify('lease_sched_lost', p) FROM pg_catalog.unnest($1::pg_catalog.text[]) AS p",
    arg_types: &[pg_sys::TEXTARRAYOID],
};
