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

/// The trigger on lease_sched.runtimes for every write that takes a row out of `online`
/// (UPDATE of status or id, DELETE: the old row; TRUNCATE: all): its runtime is no longer
/// known online, and its next touch reads the row (`runtime::touch`). Written by hand
/// because `#[pg_trigger]` cannot leave the SQL declaration to sql/runtime.sql.
///
/// # Safety
/// Called by PostgreSQL as a trigger on lease_sched.runtimes.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn runtime_left_online_wrapper(fcinfo: pgrx::pg_sys::FunctionCallInfo) -> pgrx::pg_sys::Datum {
    use pgrx::pg_sys;
    unsafe {
        pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
            let context = (*fcinfo).context;
            if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
                pgrx::error!("lease_sched.runtime_left_online() is a trigger function: it runs only as a trigger");
            }
            let data = context as *mut pg_sys::TriggerData;
            let event = (*data).tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
            let old = (*data).tg_trigtuple;
            if event == pg_sys::TRIGGER_EVENT_TRUNCATE || old.is_null() {
                runtime::forget_online(None);
            } else {
                let desc = (*(*data).tg_relation).rd_att;
                let column = |tuple: pg_sys::HeapTuple, name: &std::ffi::CStr| {
                    let mut isnull = false;
                    let datum = pg_sys::SPI_getbinval(tuple, desc, pg_sys::SPI_fnumber(desc, name.as_ptr()), &mut isnull);
                    (datum, isnull)
                };
                let status = |tuple| {
                    let (d, isnull) = column(tuple, c"status");
                    String::from_datum(d, isnull)
                };
                let id = |tuple| {
                    let (d, isnull) = column(tuple, c"id");
                    Uuid::from_datum(d, isnull)
                };
                // Only a row that was online can have been known online. (No WHEN clause:
                // PostgreSQL would read and prepare it again for every statement that
                // writes the table, the touch's own UPDATE included.)
                let left = status(old).as_deref() == Some("online")
                    && (event == pg_sys::TRIGGER_EVENT_DELETE || {
                        let new = (*data).tg_newtuple;
                        new.is_null() || status(new).as_deref() != Some("online") || id(new) != id(old)
                    });
                if left {
                    match id(old) {
                        Some(id) => runtime::forget_online(Some(&[id])),
                        None => runtime::forget_online(None),
                    }
                }
            }
            pg_sys::Datum::from(0)
        })
    }
}
