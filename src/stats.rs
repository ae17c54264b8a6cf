//! Counters since server start, in shared memory. Lock-free atomics: a counter bump
//! costs one instruction on the hot path. Without preload they stay zero.
//!
//! A leaf module: `shmem` lays the counters out in its segment and calls `attach` at
//! startup; nothing here reaches into shared memory by itself.
//!
//! Every counter is named once, in the `counters!` list below: the struct field, the
//! name `lease_sched.stats()` returns, and the order of its rows come from it. The
//! monitoring queries (examples/monitoring/) read `stats()` generically; docs/api.md lists
//! the names, and tests/integration/tests/docs.rs checks that list against `stats()`.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident,)*) => {
        #[repr(C)]
        #[derive(Default)]
        pub struct Stats {
            $(pub $name: AtomicU64,)*
            /// Database time of the last sweep's start (0: none yet).
            pub last_sweep_at: AtomicI64,
            pub last_sweep_duration_us: AtomicU64,
        }

        fn rows(s: &Stats) -> Vec<(&'static str, i64)> {
            let mut rows = vec![$((stringify!($name), s.$name.load(Ordering::Relaxed) as i64),)*];
            rows.push(("last_sweep_at", s.last_sweep_at.load(Ordering::Relaxed)));
            rows.push(("last_sweep_duration_us", s.last_sweep_duration_us.load(Ordering::Relaxed) as i64));
            rows
        }
    };
}

counters! {
    claims_won,
    claims_stole,
    claims_conflicted,
    heartbeats_ok,
    heartbeats_lost,
    finishes,
    finishes_lost,
    touches_buffered,
    touches_direct,
    touches_restored,
    touches_lost,
    flushes,
    sweeps,
    sweep_errors,
    rows_swept,
    databases_over_limit,
}

// Set once in the postmaster (shmem's startup hook) and inherited by every child.
static mut STATS: *const Stats = std::ptr::null();

/// Where the counters live; called once by `shmem` when its segment is ready.
pub fn attach(stats: &'static Stats) {
    // SAFETY: written once, in the postmaster, before any backend starts.
    unsafe { STATS = stats };
}

fn counters() -> Option<&'static Stats> {
    // SAFETY: STATS is null or points into shared memory for the postmaster's life.
    unsafe { STATS.as_ref() }
}

/// Add `n` to one counter, when shared memory exists.
pub fn add(counter: fn(&Stats) -> &AtomicU64, n: u64) {
    if let Some(s) = counters() {
        counter(s).fetch_add(n, Ordering::Relaxed);
    }
}

pub fn record_sweep(at: i64, duration_us: u64) {
    if let Some(s) = counters() {
        s.sweeps.fetch_add(1, Ordering::Relaxed);
        s.last_sweep_at.store(at, Ordering::Relaxed);
        s.last_sweep_duration_us.store(duration_us, Ordering::Relaxed);
    }
}

/// A copy of the counters, or None without shared memory.
pub fn snapshot() -> Option<Vec<(&'static str, i64)>> {
    Some(rows(counters()?))
}

/// The counter names with zero values (no shared memory).
pub fn zero_snapshot() -> Vec<(&'static str, i64)> {
    rows(&Stats::default())
}
