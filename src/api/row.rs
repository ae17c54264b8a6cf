//! One-row results without the set-returning protocol. lease_try_claim and lock_acquire
//! always return exactly one row, so their SQL declarations return a named composite type
//! (lease_sched.claim_result, lease_sched.lock_acquire_result), not SETOF: the executor
//! calls them once, with no multi-call context and no end-of-set call, and finds the
//! result's shape in the type cache (a record with OUT parameters would have it rebuilt
//! from pg_proc for every statement). Their C entry points are written here by hand
//! because `#[pg_extern]` shapes a one-row result only as a set (`TableIterator`).
//!
//! The same entry point also serves a 0.2.0 declaration (RETURNS TABLE, still in place
//! between installing the new library and `ALTER EXTENSION lease_sched UPDATE`): a set-
//! returning function that returns one value without asking for more calls yields one row.
use pgrx::pg_sys;

/// The result descriptor of the function being called, built and blessed on its first
/// call and kept in `fn_extra` for the life of the call site (a prepared statement reuses
/// it on every execution).
///
/// # Safety
/// `fcinfo` is the call's own, valid pointer, and the function returns a composite.
unsafe fn result_desc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let cached = (*flinfo).fn_extra as pg_sys::TupleDesc;
        if !cached.is_null() {
            return cached;
        }
        let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            pgrx::error!("lease_sched: this function's declaration does not return a row; run ALTER EXTENSION lease_sched UPDATE");
        }
        let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
        let desc = pg_sys::BlessTupleDesc(pg_sys::CreateTupleDescCopy(desc));
        pg_sys::MemoryContextSwitchTo(old);
        (*flinfo).fn_extra = desc.cast();
        desc
    }
}

/// Form the one result row from its column values (None = NULL) and return it as a datum.
///
/// # Safety
/// `fcinfo` is the call's own pointer; `values` has one entry per result column, each of
/// the column's type.
pub unsafe fn one_row(fcinfo: pg_sys::FunctionCallInfo, values: &[Option<pg_sys::Datum>]) -> pg_sys::Datum {
    unsafe {
        let desc = result_desc(fcinfo);
        if (*desc).natts as usize != values.len() {
            pgrx::error!("lease_sched: this function's declaration has other result columns; run ALTER EXTENSION lease_sched UPDATE");
        }
        let mut datums: Vec<pg_sys::Datum> = values.iter().map(|v| v.unwrap_or(pg_sys::Datum::from(0))).collect();
        let mut nulls: Vec<bool> = values.iter().map(|v| v.is_none()).collect();
        let tuple = pg_sys::heap_form_tuple(desc, datums.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}

/// Declares the V1 function-info record PostgreSQL looks up beside a C entry point
/// (what PG_FUNCTION_INFO_V1 does in C).
#[macro_export]
macro_rules! finfo_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1_API: pgrx::pg_sys::Pg_finfo_record = pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1_API
        }
    };
}
