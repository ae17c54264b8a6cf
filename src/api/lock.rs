//! lock_acquire, lock_heartbeat, lock_release, lock_info (declared in sql/locks.sql).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::Uuid;

use super::args::{non_empty, positive_interval, required};
use crate::lock;

crate::finfo_v1!(pg_finfo_lock_acquire_row_wrapper);

/// lock_acquire: one row of a composite type, not a set (see `super::row`).
///
/// # Safety
/// Called by PostgreSQL through the declaration in sql/locks.sql, three arguments.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn lock_acquire_row_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
            use pgrx::fcinfo::pg_getarg;
            let a = lock::acquire(
                non_empty(pg_getarg::<&str>(fcinfo, 0), "lock_name"),
                non_empty(pg_getarg::<&str>(fcinfo, 1), "holder"),
                positive_interval(pg_getarg::<Interval>(fcinfo, 2), "ttl"),
            );
            super::row::one_row(
                fcinfo,
                &[
                    a.acquired.into_datum(),
                    a.lock_token.into_datum(),
                    a.fencing_token.into_datum(),
                    a.holder.into_datum(),
                    a.expires_at.into_datum(),
                ],
            )
        })
    }
}

#[pg_extern(sql = false)]
fn lock_heartbeat_by_token(lock_name: Option<&str>, lock_token: Option<Uuid>) -> bool {
    lock::heartbeat(non_empty(lock_name, "lock_name"), required(lock_token, "lock_token"))
}

#[pg_extern(sql = false)]
fn lock_release_by_token(lock_name: Option<&str>, lock_token: Option<Uuid>) -> bool {
    lock::release(non_empty(lock_name, "lock_name"), required(lock_token, "lock_token"))
}

#[pg_extern(sql = false)]
fn lock_info(
    lock_name: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(holder, String),
        name!(fencing_token, i64),
        name!(acquired_at, TimestampWithTimeZone),
        name!(heartbeat_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
        name!(expired, bool),
    ),
> {
    let info = lock::info(non_empty(lock_name, "lock_name"));
    TableIterator::new(
        info.map(|i| (i.holder, i.fencing_token, i.acquired_at, i.heartbeat_at, i.expires_at, i.expired)),
    )
}

// The 0.1.0 entry points. Their SQL declarations (bigint fencing tokens as proof of holding)
// are dropped by `ALTER EXTENSION lease_sched UPDATE`; until that has run, a database still
// on 0.1.0's SQL reaches these symbols, which refuse with a clear instruction instead of
// reading arguments of another shape.
#[pg_extern(sql = false)]
fn lock_acquire() -> bool {
    crate::error::schema_out_of_date()
}

#[pg_extern(sql = false)]
fn lock_heartbeat() -> bool {
    crate::error::schema_out_of_date()
}

#[pg_extern(sql = false)]
fn lock_release() -> bool {
    crate::error::schema_out_of_date()
}
