//! Counters since server start, in shared memory (see `shmem`). Lock-free atomics: a
//! counter bump costs one instruction on the hot path. Without preload they stay zero.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::shmem::shared;

#[repr(C)]
#[derive(Default)]
pub struct Stats {
    pub claims_won: AtomicU64,
    pub claims_stole: AtomicU64,
    pub claims_conflicted: AtomicU64,
    pub heartbeats_ok: AtomicU64,
    pub heartbeats_lost: AtomicU64,
    pub finishes: AtomicU64,
    pub finishes_lost: AtomicU64,
    pub touches_buffered: AtomicU64,
    pub touches_direct: AtomicU64,
    pub flushes: AtomicU64,
    pub sweeps: AtomicU64,
    pub sweep_errors: AtomicU64,
    pub rows_swept: AtomicU64,
    pub last_sweep_at: AtomicI64,
    pub last_sweep_duration_us: AtomicU64,
}

/// Add `n` to one counter, when shared memory exists.
pub fn add(counter: fn(&Stats) -> &AtomicU64, n: u64) {
    if let Some(s) = shared() {
        counter(&s.stats).fetch_add(n, Ordering::Relaxed);
    }
}

pub fn record_sweep(at: i64, duration_us: u64) {
    if let Some(s) = shared() {
        s.stats.sweeps.fetch_add(1, Ordering::Relaxed);
        s.stats.last_sweep_at.store(at, Ordering::Relaxed);
        s.stats.last_sweep_duration_us.store(duration_us, Ordering::Relaxed);
    }
}

/// A copy of the counters, or None without shared memory.
pub fn snapshot() -> Option<Vec<(&'static str, i64)>> {
    Some(rows(&shared()?.stats))
}

/// The counter names with zero values (no shared memory).
pub fn zero_snapshot() -> Vec<(&'static str, i64)> {
    rows(&Stats::default())
}

fn rows(s: &Stats) -> Vec<(&'static str, i64)> {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
    vec![
        ("claims_won", get(&s.claims_won)),
        ("claims_stole", get(&s.claims_stole)),
        ("claims_conflicted", get(&s.claims_conflicted)),
        ("heartbeats_ok", get(&s.heartbeats_ok)),
        ("heartbeats_lost", get(&s.heartbeats_lost)),
        ("finishes", get(&s.finishes)),
        ("finishes_lost", get(&s.finishes_lost)),
        ("touches_buffered", get(&s.touches_buffered)),
        ("touches_direct", get(&s.touches_direct)),
        ("flushes", get(&s.flushes)),
        ("sweeps", get(&s.sweeps)),
        ("sweep_errors", get(&s.sweep_errors)),
        ("rows_swept", get(&s.rows_swept)),
        ("last_sweep_at", s.last_sweep_at.load(Ordering::Relaxed)),
        ("last_sweep_duration_us", get(&s.last_sweep_duration_us)),
    ]
}
