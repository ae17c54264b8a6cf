//! sweep() and stats() (declared in sql/observability.sql).
use pgrx::prelude::*;

use crate::settings;
use crate::stats;
use crate::sweep;
use crate::sweepers::{self, State};
use pgrx::pg_sys;

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
        .chain(std::iter::once(("databases_swept".to_string(), sweepers::sweeping() as i64)))
        .chain(std::iter::once(("swept".to_string(), this_database().swept as i64)))
        .chain(std::iter::once(("preloaded".to_string(), preloaded as i64)))
        .collect();
    TableIterator::new(rows)
}

/// Whether a background worker sweeps this database, and if not, why.
struct Coverage {
    swept: bool,
    state: &'static str,
    pid: Option<i32>,
    last_sweep_at: Option<i64>,
    /// Why not, and what to do, for the WARNING at CREATE EXTENSION.
    warning: Option<(String, &'static str)>,
}

fn database_name() -> String {
    // SAFETY: MyDatabaseId is this backend's database; get_database_name pallocs a copy.
    unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        if name.is_null() {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name).to_string_lossy().into_owned()
    }
}

fn is_template() -> bool {
    Spi::get_one::<bool>(
        "SELECT datistemplate FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

fn this_database() -> Coverage {
    let not = |state, warning: String, hint| Coverage {
        swept: false,
        state,
        pid: None,
        last_sweep_at: None,
        warning: Some((warning, hint)),
    };
    let name = database_name();
    if stats::snapshot().is_none() {
        return not(
            "not preloaded",
            format!("lease_sched is not in shared_preload_libraries: no background worker sweeps database \"{name}\""),
            "Add lease_sched to shared_preload_libraries and restart, or schedule SELECT lease_sched.sweep() here with pg_cron (docs/operations.md).",
        );
    }
    if let Some(only) = settings::database() {
        if only != name {
            return not(
                "not lease_sched.database",
                format!("lease_sched.database is \"{only}\": no background worker sweeps database \"{name}\""),
                "Set lease_sched.database to '' (the worker then sweeps every database that has the extension) and restart, or schedule SELECT lease_sched.sweep() here with pg_cron.",
            );
        }
    } else if is_template() {
        return not(
            "template",
            format!("database \"{name}\" is a template: no background worker sweeps it"),
            "Databases created from it are swept; ALTER DATABASE ... IS_TEMPLATE false to have it swept too.",
        );
    }
    // SAFETY: MyDatabaseId is set once at backend start.
    let me = sweepers::of_database(unsafe { pg_sys::MyDatabaseId });
    let max = settings::MAX_DATABASES.get();
    let over = || {
        not(
            "over max_databases",
            format!("lease_sched.max_databases ({max}) databases are swept already: no background worker sweeps database \"{name}\""),
            "Raise lease_sched.max_databases (and max_worker_processes) and reload, or drop the extension where it is unused.",
        )
    };
    match me {
        Some(s) if s.pid != 0 && s.state == State::Sweeping => Coverage {
            swept: true,
            state: "sweeping",
            pid: Some(s.pid),
            last_sweep_at: (s.last_sweep_at != 0).then_some(s.last_sweep_at),
            warning: None,
        },
        Some(s) if s.pid != 0 && s.state == State::OutOfDate => Coverage {
            swept: false,
            state: "waiting for update",
            pid: Some(s.pid),
            last_sweep_at: None,
            warning: None,
        },
        Some(s) if s.state == State::OverLimit => over(),
        _ if settings::database().is_none() && sweepers::staying() >= max.max(1) as usize => over(),
        _ if sweepers::no_worker_slot() => not(
            "no worker slot",
            format!("no background worker slot is free: no sweeper can start in database \"{name}\""),
            "Raise max_worker_processes (it must exceed lease_sched.max_databases + 2 plus what parallel queries and other extensions use) and restart.",
        ),
        // No sweeper yet: the launcher starts one within a second or two of CREATE
        // EXTENSION's commit (or of a restart, or of the sweeper's exit).
        _ => Coverage { swept: false, state: "starting", pid: None, last_sweep_at: None, warning: None },
    }
}

#[pg_extern(sql = false)]
fn sweeper_status() -> TableIterator<
    'static,
    (
        name!(swept, bool),
        name!(state, String),
        name!(sweeper_pid, Option<i32>),
        name!(last_sweep_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    let c = this_database();
    TableIterator::once((c.swept, c.state.to_string(), c.pid, c.last_sweep_at.map(crate::clock::timestamptz)))
}

/// Called by the extension's install and update scripts: wake the launcher when this
/// transaction commits, and warn at once when nothing will sweep this database.
#[pg_extern(sql = false)]
fn sys_sweeper_announce() {
    sweepers::announce_at_commit();
    if let Some((message, hint)) = this_database().warning {
        pgrx::pg_sys::panic::ErrorReport::new(pgrx::PgSqlErrorCode::ERRCODE_WARNING, message, "lease_sched")
            .set_hint(hint)
            .report(pgrx::PgLogLevel::WARNING);
    }
}
