//! Buffered touches that the sweeper's exit drain could not write (a full disk, a row held
//! by a prepared transaction) are saved to a small file in the data directory and read
//! back by the next sweeper of the same database, as PostgreSQL keeps its statistics in
//! pg_stat across a clean restart. Shared memory does not outlive the server; this file does.
//!
//! `lease_sched_touches.<database oid>`: the magic, the entry count, then per entry the
//! runtime id (16 bytes) and the touch time (8 bytes, little-endian), then an FNV-1a
//! checksum of everything before it. Written to a temporary name, fsynced and renamed,
//! so a crash mid-write leaves the old file or none, never half of one.
//!
//! When even that file cannot be written (the data directory is full too), the count of
//! touches lost is written in place into `lease_sched_touches_lost.<oid>`, eight bytes
//! allocated when the sweeper starts: overwriting them needs no free space. The next
//! sweeper reports the count and adds it to the `touches_lost` counter.
//!
//! Paths are relative: every PostgreSQL process runs in the data directory.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use crate::touch_table::{RuntimeId, SeenAt};

const MAGIC: &[u8; 8] = b"LSTOUCH1";
const ENTRY: usize = 16 + 8;

fn database() -> u32 {
    // SAFETY: MyDatabaseId is set once when the worker connects.
    u32::from(unsafe { pgrx::pg_sys::MyDatabaseId })
}

pub fn path() -> String {
    format!("lease_sched_touches.{}", database())
}

fn lost_path() -> String {
    format!("lease_sched_touches_lost.{}", database())
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

fn encode(entries: &[(RuntimeId, SeenAt)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * ENTRY + 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (id, seen) in entries {
        out.extend_from_slice(id);
        out.extend_from_slice(&seen.to_le_bytes());
    }
    let sum = checksum(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<Vec<(RuntimeId, SeenAt)>> {
    let body_len = bytes.len().checked_sub(8)?;
    let (body, sum) = bytes.split_at(body_len);
    if body.len() < 16 || &body[..8] != MAGIC || checksum(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let count = u64::from_le_bytes(body[8..16].try_into().ok()?) as usize;
    let entries = &body[16..];
    if entries.len() != count.checked_mul(ENTRY)? {
        return None;
    }
    Some(
        entries
            .chunks_exact(ENTRY)
            .map(|e| (e[..16].try_into().unwrap(), SeenAt::from_le_bytes(e[16..].try_into().unwrap())))
            .filter(|(_, seen)| *seen != 0)
            .collect(),
    )
}

fn sync_dir() -> io::Result<()> {
    File::open(".")?.sync_all()
}

/// Save these entries durably (replacing an earlier file).
pub fn save(entries: &[(RuntimeId, SeenAt)]) -> io::Result<()> {
    let tmp = format!("{}.tmp", path());
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(&encode(entries))?;
        f.sync_all()?;
        fs::rename(&tmp, path())?;
        sync_dir()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// What the file holds: Ok(None) when there is none, Err when it is unreadable or damaged
/// (then it is removed: a damaged file would fail every start). The file stays until
/// `remove`, once its touches are written: a crash before that reads it again.
pub fn read() -> io::Result<Option<Vec<(RuntimeId, SeenAt)>>> {
    let mut bytes = Vec::new();
    match File::open(path()) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(mut f) => f.read_to_end(&mut bytes)?,
    };
    decode(&bytes).map(Some).ok_or_else(|| {
        remove();
        io::Error::new(io::ErrorKind::InvalidData, "damaged (bad length or checksum)")
    })
}

/// The saved touches are written (or none were left): forget them.
pub fn remove() {
    if fs::remove_file(path()).is_ok() {
        let _ = sync_dir();
    }
}

/// Make sure the lost-touch counter file exists with its eight bytes allocated, and
/// return the count it holds (then zero), from an earlier life of the server.
pub fn take_lost() -> u64 {
    let Ok(f) = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(lost_path()) else {
        return 0;
    };
    let mut buf = [0u8; 8];
    let lost = match f.read_exact_at(&mut buf, 0) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => 0,
    };
    if lost != 0 || f.metadata().map(|m| m.len()).unwrap_or(0) != 8 {
        let _ = f.write_all_at(&0u64.to_le_bytes(), 0).and_then(|_| f.set_len(8)).and_then(|_| f.sync_all());
    }
    lost
}

/// Record that `n` touches were lost, in place (no new space needed); best effort.
pub fn note_lost(n: u64) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(lost_path())?;
    let mut buf = [0u8; 8];
    let before = f.read_exact_at(&mut buf, 0).map(|_| u64::from_le_bytes(buf)).unwrap_or(0);
    f.write_all_at(&before.saturating_add(n).to_le_bytes(), 0)?;
    f.sync_all()
}
