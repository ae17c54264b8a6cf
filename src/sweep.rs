//! One sweep: the work the background worker does every `lease_sched.sweep_interval`,
//! and what `lease_sched.sweep()` runs on demand. Every pass reads only RUNNING leases,
//! online runtimes or the oldest finished rows through their own indexes, so its cost
//! follows the live work, not the size of the history.
//!
//! This module only orders the passes and isolates them; each subsystem owns its pass
//! (`runtime::sweep_offline`, `runtime::flush_all`, `lease::fail_abandoned`,
//! `lease::prune_finished`). The background worker (`worker`) calls `sweep` on its
//! schedule; `api::observability` calls it for `lease_sched.sweep()`.
//!
//! Each pass runs in its own subtransaction and never waits for a row lock (every write
//! is SKIP LOCKED): one poisoned row or one failing pass is logged and rolled back alone,
//! and the other passes of the sweep still do their work.
use pgrx::prelude::*;

use crate::clock::db_clock;
use crate::{lease, runtime, settings, stats, subxact};

#[derive(Default, Debug)]
pub struct SweepReport {
    pub leases_failed: i64,
    pub runtimes_offline: i64,
    pub touches_flushed: i64,
    pub executions_pruned: i64,
}

/// Run one pass in its own subtransaction; a failure is a WARNING, counted in
/// `sweep_errors`, and the pass's effects are rolled back.
fn pass(name: &str, f: impl FnOnce()) {
    if let Err(message) = subxact::attempt(f) {
        stats::add(|s| &s.sweep_errors, 1);
        warning!("lease_sched sweep: the {name} pass failed and was rolled back; the other passes ran: {message}");
    }
}

pub fn sweep() -> SweepReport {
    let now = db_clock();
    let mut report = SweepReport::default();

    // 1. Silent runtimes go offline, except those with a touch still buffered, whose
    //    touch is written instead.
    pass("offline runtimes", || {
        let offline = Spi::connect_mut(|client| runtime::sweep_offline(client, now));
        report.runtimes_offline = offline.offline;
        report.touches_flushed += offline.touches_written;
    });

    // 2. Abandoned leases fail (and get their retry time when attempts are left).
    pass("abandoned leases", || {
        report.leases_failed = Spi::connect_mut(|client| lease::fail_abandoned(client, now));
    });

    // 3. The whole touch buffer, once per flush interval (not every sweep: the wait is
    //    what lets many beats of one runtime coalesce into one row write).
    pass("touch flush", || {
        if runtime::flush_due(now) {
            report.touches_flushed += runtime::flush_all();
        }
    });

    // 4. Retention, in bounded batches.
    let retention_s = settings::RETENTION_S.get();
    if retention_s > 0 {
        pass("retention", || {
            report.executions_pruned = Spi::connect_mut(|client| lease::prune_finished(client, now, retention_s));
        });
    }

    let swept = report.leases_failed + report.runtimes_offline + report.executions_pruned;
    stats::add(|s| &s.rows_swept, swept as u64);
    stats::record_sweep(now, (db_clock() - now).max(0) as u64);
    report
}
