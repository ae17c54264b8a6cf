//! runtime_register, runtime_touch, runtime_touch_batch, runtime_flush, runtime_pending
//! (declared in sql/runtime.sql).
use pgrx::datum::JsonB;
use pgrx::prelude::*;
use pgrx::Uuid;

use super::args::{non_empty, required};
use crate::error::null_argument;
use crate::runtime;

#[pg_extern(sql = false)]
fn runtime_register(name: Option<&str>, metadata: Option<JsonB>) -> Uuid {
    let name = non_empty(name, "name");
    runtime::register(name, required(metadata, "metadata"))
}

#[pg_extern(sql = false)]
fn runtime_touch(runtime_id: Option<Uuid>) -> bool {
    runtime::touch(required(runtime_id, "runtime_id"))
}

#[pg_extern(sql = false)]
fn runtime_touch_batch(runtime_ids: Option<Vec<Option<Uuid>>>) -> Vec<Uuid> {
    let ids = required(runtime_ids, "runtime_ids")
        .into_iter()
        .map(|id| id.unwrap_or_else(|| null_argument("an element of runtime_ids")))
        .collect();
    runtime::touch_batch(ids)
}

#[pg_extern(sql = false)]
fn runtime_flush() -> i64 {
    super::require_admin("runtime_flush");
    runtime::flush_all()
}

#[pg_extern(sql = false)]
fn runtime_pending() -> i64 {
    runtime::pending() as i64
}

crate::finfo_v1!(pg_finfo_runtime_left_online_wrapper);

/// The statement trigger on lease_sched.runtimes for every statement that may take rows
/// out of `online` (UPDATE naming status or id, DELETE, TRUNCATE): no runtime is known
/// online any more, and each one's next touch reads its row (`runtime::touch`). Statement
/// level: a row trigger would make every UPDATE of the table fetch each old row again for
/// it (the touch's and the flush's included), and offline writes are rare. Written by hand
/// because `#[pg_trigger]` cannot leave the SQL declaration to sql/runtime.sql.
///
/// # Safety
/// Called by PostgreSQL as a trigger on lease_sched.runtimes.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn runtime_left_online_wrapper(
    fcinfo: pgrx::pg_sys::FunctionCallInfo,
) -> pgrx::pg_sys::Datum {
    use pgrx::pg_sys;
    unsafe {
        pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
            let context = (*fcinfo).context;
            if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
                pgrx::error!("lease_sched.runtime_left_online() is a trigger function: it runs only as a trigger");
            }
            runtime::forget_online();
            pg_sys::Datum::from(0)
        })
    }
}
