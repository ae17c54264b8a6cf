//! Run a piece of work in its own subtransaction, as PL/pgSQL's BEGIN ... EXCEPTION does:
//! an ERROR inside rolls back only that piece and comes back as a message; everything the
//! transaction did before it stays. Or in one rolled back whatever happens, to release the
//! row locks a piece of work took (`rolled_back`, `keep_locks_if`).
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::prelude::*;

pub fn attempt<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    in_subtransaction(f, true).map_err(|e| describe(&e))
}

/// Begin a subtransaction, run `f` in it, and end it: released (kept) when `f` returned
/// and `keep` is set, else rolled back. The memory context and resource owner are restored
/// either way, and a caught error is handed back, copied out, for the caller to report or
/// raise again.
fn in_subtransaction<R>(f: impl FnOnce() -> R, keep: bool) -> Result<R, pg_sys::panic::CaughtError> {
    // SAFETY: the subtransaction protocol of PostgreSQL's PL handlers (pl_exec.c,
    // exec_stmt_block): remember the memory context and resource owner, begin, run, then
    // release or roll back, and restore both. Errors are copied and flushed by PgTryBuilder.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let outcome = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f()))).catch_others(Err).execute();
        if keep && outcome.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        outcome
    }
}

pub fn describe(e: &pg_sys::panic::CaughtError) -> String {
    match e {
        pg_sys::panic::CaughtError::PostgresError(r)
        | pg_sys::panic::CaughtError::ErrorReport(r)
        | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
            format!("{} (SQLSTATE {})", r.message(), sqlstate(r.sql_error_code()))
        }
    }
}

/// Run `f` in a subtransaction that is rolled back whatever happens: what it locked (row
/// locks included) is released at once, what it returned is kept. An ERROR inside is
/// raised again, after the rollback.
pub fn rolled_back<R>(f: impl FnOnce() -> R) -> R {
    in_subtransaction(f, false).unwrap_or_else(|e| e.rethrow())
}

/// Run `f`, which takes row locks, so that they last until the transaction ends when
/// `keep` is set, and are released as soon as `f` returns when it is not (`rolled_back`):
/// a fence given the holder's secret pins its row, one given only the public fencing token
/// pins nothing (src/lease/fence.rs).
pub fn keep_locks_if<R>(keep: bool, f: impl FnOnce() -> R) -> R {
    if keep {
        f()
    } else {
        rolled_back(f)
    }
}

/// The five-character SQLSTATE PostgreSQL prints (`53100`), not the name of pgrx's enum
/// variant: operators grep logs for the codes of PostgreSQL's errcodes table. The code is
/// packed six bits per character, as PostgreSQL's `unpack_sql_state` reads it.
pub fn sqlstate(code: pg_sys::errcodes::PgSqlErrorCode) -> String {
    let mut packed = code as i32;
    (0..5)
        .map(|_| {
            let c = char::from(b'0' + (packed & 0x3F) as u8);
            packed >>= 6;
            c
        })
        .collect()
}
