//! sweep() and stats() (declared in sql/observability.sql).
use pgrx::prelude::*;

use crate::stats;
use crate::sweep;

#[pg_extern(sql = false)]
fn sweep() -> TableIterator<
    'static,
    (
        name!(leases_failed, i64),
        name!(runtimes_offline, i64),
        name!(touches_flushed, i64),
        name!(executions_pruned, i64),
    ),
> {
    super::require_admin("sweep");
    let r = sweep::sweep();
    TableIterator::once((r.leases_failed, r.runtimes_offline, r.touches_flushed, r.executions_pruned))
}

#[pg_extern(sql = false)]
fn stats() -> TableIterator<'static, (name!(name, String), name!(value, i64))> {
    let snapshot = stats::snapshot();
    let preloaded = snapshot.is_some();
    let rows = snapshot.unwrap_or_else(stats::zero_snapshot);
    let rows: Vec<(String, i64)> = rows
        .into_iter()
        .map(|(name, value)| match name {
            // Exported as Unix seconds, which monitoring systems expect.
            "last_sweep_at" if value != 0 => ("last_sweep_unix_seconds".into(), crate::clock::unix_seconds(value)),
            "last_sweep_at" => ("last_sweep_unix_seconds".into(), 0),
            _ => (name.to_string(), value),
        })
        .chain(std::iter::once(("preloaded".to_string(), preloaded as i64)))
        .collect();
    TableIterator::new(rows)
}
