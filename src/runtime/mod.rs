//! Runtimes (the processes that run jobs) and their heartbeats: register, touch (buffered in shared memory
//! when preloaded), touch_batch, flush, and the sweep's offline pass.
mod buffer;
mod spill;
pub mod store;

use pgrx::datum::{DatumWithOid, JsonB, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::clock::{db_clock, timestamptz, DbTime};
use crate::spi_plans::execute;
use crate::stats;
use crate::touch_table::{Recorded, RuntimeId, SeenAt};

pub fn register(name: &str, metadata: JsonB) -> Uuid {
    Spi::connect_mut(|client| {
        store::REGISTER
            .first(client, &[name.into(), timestamptz(db_clock()).into(), metadata.into()])
            .expect("INSERT RETURNING id")
    })
}

fn id_bytes(id: &Uuid) -> RuntimeId {
    *id.as_bytes()
}

/// Write a touch directly: `online` when the row was read (or is known) online, so the
/// write need not set status (and fires no trigger) unless the row left online since.
fn write_now(client: &mut SpiClient<'_>, id: Uuid, now: DbTime, online: bool) {
    if !online || execute(client, &store::TOUCH_ONLINE, &[id.into(), timestamptz(now).into()]).is_empty() {
        execute(client, &store::TOUCH_NOW, &[id.into(), timestamptz(now).into()]);
    }
    stats::add(|s| &s.touches_direct, 1);
}

/// A live heartbeat. Offline rows flip online at once (the synchronous path); online
/// rows are buffered when the buffer exists and has room, else written directly.
/// False for an unknown id.
///
/// A runtime known online (marked by an earlier touch that read its row online) is
/// buffered without reading the row at all. Every statement that may take a row out of
/// `online` — the sweep's offline pass, any UPDATE naming status or id, DELETE, TRUNCATE —
/// forgets all marks from the table's statement triggers (`forget_online`) before it
/// commits, so the next touch of an offline runtime reads the row and flips it online at
/// once, as without marks. A touch marks only a settled row version (the row's latest committed
/// state, see `lookup::by_unique_key_settled`), and only if no mark was removed since
/// before it read: a read that raced a change to offline leaves no mark behind.
pub fn touch(id: Uuid) -> bool {
    let now = db_clock();
    crate::spi_plans::check_schema_once();
    let key = id_bytes(&id);
    let epoch = match buffer::record_if_known_online(key, now) {
        buffer::Known::Buffered(Recorded::New | Recorded::Coalesced) => {
            stats::add(|s| &s.touches_buffered, 1);
            return true;
        }
        buffer::Known::Buffered(Recorded::Full) => {
            Spi::connect_mut(|client| write_now(client, id, now, true));
            return true;
        }
        buffer::Known::Unknown(epoch) => epoch,
    };
    // The buffered path is then an index probe and a hash insert, no statement at all.
    let Some(store::Probed { online, settled }) = store::probe(id) else { return false };
    match online.then(|| buffer::record_read_online(key, now, epoch, settled)).flatten() {
        Some(Recorded::New | Recorded::Coalesced) => stats::add(|s| &s.touches_buffered, 1),
        Some(Recorded::Full) | None => Spi::connect_mut(|client| write_now(client, id, now, online)),
    }
    true
}

/// The table's statement triggers saw a statement that may have taken rows out of
/// online: forget every runtime known online (see `touch`).
pub fn forget_online() {
    buffer::forget_online();
}

/// Bump every online runtime among `ids` in one statement; returns the ids not
/// touched (offline or unknown) for the caller to take the synchronous path.
pub fn touch_batch(ids: Vec<Uuid>) -> Vec<Uuid> {
    let now = db_clock();
    Spi::connect_mut(|client| {
        store::TOUCH_BATCH.first(client, &[ids.into(), timestamptz(now).into()]).unwrap_or_default()
    })
}

/// Write these buffered touches in one statement; returns rows written. The entries stay
/// in the buffer until the write commits (`xact::touches_written`): a flush that fails, is
/// cancelled, or is rolled back (whole or to a savepoint) loses no touch. Rows locked by
/// someone are skipped, not waited for, and their touches wait for the next flush.
fn write_pending(client: &mut SpiClient<'_>, entries: Vec<(RuntimeId, SeenAt)>) -> i64 {
    if entries.is_empty() {
        return 0;
    }
    let ids: Vec<Uuid> = entries.iter().map(|(id, _)| Uuid::from_bytes(*id)).collect();
    let seen: Vec<TimestampWithTimeZone> = entries.iter().map(|(_, t)| timestamptz(*t)).collect();
    let args: [DatumWithOid; 2] = [ids.into(), seen.into()];
    let flushed = store::FLUSH.first(client, &args).expect("FLUSH returns one row");
    let skipped: std::collections::HashSet<RuntimeId> = flushed.skipped_for_lock.iter().map(id_bytes).collect();
    stats::add(|s| &s.flushes, 1);
    crate::xact::touches_written(
        entries.into_iter().filter(|(id, _)| !skipped.contains(id)).collect(),
        buffer::forget_written,
    );
    flushed.written
}

/// Write every pending touch now; returns rows written.
pub fn flush_all() -> i64 {
    let entries = buffer::copy_all(db_clock());
    Spi::connect_mut(|client| write_pending(client, entries))
}

/// Is the periodic whole-buffer flush due?
pub fn flush_due(now: DbTime) -> bool {
    let interval = crate::clock::micros_from_ms(crate::settings::effective_touch_flush_interval_ms());
    buffer::flush_clock(now).is_some_and(|last| now - last >= interval)
}

pub struct OfflinePass {
    pub offline: i64,
    pub touches_written: i64,
}

/// Mark silent online runtimes offline — except those with a touch still in the buffer:
/// their pending touch is written instead (they are alive; the row is just behind).
pub fn sweep_offline(client: &mut SpiClient<'_>, now: DbTime) -> OfflinePass {
    let cutoff = timestamptz(now - crate::clock::micros_from_ms(crate::settings::RUNTIME_OFFLINE_AFTER_MS.get()));
    let candidates: Vec<RuntimeId> = store::SILENT.all(client, &[cutoff.into()]).iter().map(id_bytes).collect();
    if candidates.is_empty() {
        return OfflinePass { offline: 0, touches_written: 0 };
    }
    let rescued = buffer::copy_some(&candidates);
    let rescued_ids: std::collections::HashSet<RuntimeId> = rescued.iter().map(|(id, _)| *id).collect();
    let still_silent: Vec<Uuid> =
        candidates.iter().filter(|id| !rescued_ids.contains(*id)).map(|id| Uuid::from_bytes(*id)).collect();
    let touches_written = write_pending(client, rescued);
    let offline = if still_silent.is_empty() {
        0
    } else {
        execute(client, &store::MARK_OFFLINE, &[still_silent.into(), cutoff.into()]).len() as i64
    };
    OfflinePass { offline, touches_written }
}

/// Touches waiting in the buffer for this database (`runtime_pending()`).
pub fn pending() -> usize {
    buffer::pending()
}

/// The sweeper starts: from now on touches in its database are buffered.
pub fn start_buffering() {
    buffer::open();
}

/// The sweeper stops: from now on touches are written directly; what is buffered waits
/// for its last flush.
pub fn stop_buffering() {
    buffer::close();
}

/// What the sweeper's exit drain left in the buffer (a full disk, a row someone holds
/// locked) is saved to a file in the data directory, for the next sweeper of this database
/// to read back: shared memory does not survive the shutdown. When the file cannot be
/// written either, the loss is said loudly and counted (see `spill`). Call after the drain,
/// with buffering stopped.
pub fn save_left() {
    let entries = buffer::copy_pending();
    if entries.is_empty() {
        spill::remove(); // touches saved at an earlier exit are all written now
        return;
    }
    let n = entries.len();
    match spill::save(&entries) {
        Ok(()) => log!(
            "lease_sched sweeper saved {n} buffered runtime touches it could not write to \"{}\" in the data \
             directory; the next sweeper of this database writes them",
            spill::path()
        ),
        Err(e) => {
            stats::add(|s| &s.touches_lost, n as u64);
            let noted = spill::note_lost(n as u64);
            warning!(
                "lease_sched sweeper: {n} acknowledged runtime touches are lost: they could not be written to \
                 lease_sched.runtimes and saving them to \"{}\" failed: {e}{}",
                spill::path(),
                if noted.is_ok() { "; the next start reports the count (touches_lost)" } else { "" }
            );
        }
    }
}

/// The sweeper starts: read back the touches an earlier sweeper saved (`save_left`) into
/// the buffer, and report touches an earlier sweeper had to give up. Returns how many
/// were restored; the caller writes them out at once, and calls `saved_written` after
/// each transaction that may have written them.
pub fn restore_saved() -> usize {
    let lost = spill::take_lost();
    if lost > 0 {
        stats::add(|s| &s.touches_lost, lost);
        warning!(
            "lease_sched sweeper: {lost} acknowledged runtime touches were lost at an earlier shutdown \
             (neither lease_sched.runtimes nor the data directory could take them); those runtimes' \
             last_seen_at is older than their last touch"
        );
    }
    let entries = match spill::read() {
        Ok(Some(entries)) => {
            SAVED_FILE_KEPT.store(true, std::sync::atomic::Ordering::Relaxed);
            entries
        }
        Ok(None) => return 0,
        Err(e) => {
            warning!(
                "lease_sched sweeper: the saved runtime touches in \"{}\" are unreadable and were discarded: {e}",
                spill::path()
            );
            return 0;
        }
    };
    let mut restored = 0;
    let mut dropped = 0u64;
    for (id, seen) in entries {
        match buffer::record(id, seen) {
            Some(Recorded::New | Recorded::Coalesced) => restored += 1,
            // The buffer is smaller now than when they were saved (touch_buffer_size).
            Some(Recorded::Full) | None => dropped += 1,
        }
    }
    stats::add(|s| &s.touches_restored, restored as u64);
    log!("lease_sched sweeper restored {restored} runtime touches saved at the last shutdown");
    if dropped > 0 {
        stats::add(|s| &s.touches_lost, dropped);
        warning!(
            "lease_sched sweeper: {dropped} saved runtime touches did not fit in the touch buffer \
             (lease_sched.touch_buffer_size) and are lost"
        );
    }
    restored
}

/// Whether this process read a saved file that is still on disk (`restore_saved`).
static SAVED_FILE_KEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Call after a transaction that may have written restored touches committed: once nothing
/// is left in the buffer, the saved file has served and goes (until then it stays, so a
/// crash reads it again). Costs nothing when no file was read.
pub fn saved_written() {
    use std::sync::atomic::Ordering;
    if SAVED_FILE_KEPT.load(Ordering::Relaxed) && buffer::pending() == 0 {
        spill::remove();
        SAVED_FILE_KEPT.store(false, Ordering::Relaxed);
    }
}
