//! One sweep: the work the background worker does every `lease_sched.sweep_interval`,
//! and what `lease_sched.sweep()` runs on demand. Every pass reads only RUNNING leases,
//! online runtimes or the oldest finished rows through their own indexes, so its cost
//! follows the live work, not the size of the history.
//!
//! Each pass runs in its own subtransaction and never waits for a row lock (every write
//! is SKIP LOCKED): one poisoned row or one failing pass is logged and rolled back alone,
//! and the other passes of the sweep still do their work.
use pgrx::prelude::*;

use crate::clock::{db_clock, micros_from_s, timestamptz};
use crate::lease::store;
use crate::settings;
use crate::spi_plans::execute;
use crate::{runtime, stats, subxact};

/// Rows deleted per statement, and statements per sweep, by retention.
const PRUNE_BATCH_ROWS: i32 = 1000;
const PRUNE_BATCHES_PER_SWEEP: usize = 10;

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
        let (base, max) = settings::retry_backoff_bounds();
        report.leases_failed = Spi::connect_mut(|client| {
            execute(client, &store::FAIL_ABANDONED, &[timestamptz(now).into(), base.into(), max.into()]).len() as i64
        });
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
            let cutoff = timestamptz(now - micros_from_s(retention_s));
            Spi::connect_mut(|client| {
                for _ in 0..PRUNE_BATCHES_PER_SWEEP {
                    let n = execute(
                        client,
                        &store::PRUNE_BATCH,
                        &[cutoff.into(), PRUNE_BATCH_ROWS.into(), timestamptz(now).into()],
                    )
                    .len() as i64;
                    report.executions_pruned += n;
                    if n < PRUNE_BATCH_ROWS as i64 {
                        break;
                    }
                }
            });
        });
    }

    let swept = report.leases_failed + report.runtimes_offline + report.executions_pruned;
    stats::add(|s| &s.rows_swept, swept as u64);
    stats::record_sweep(now, (db_clock() - now).max(0) as u64);
    report
}
