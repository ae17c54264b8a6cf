//! lease_try_claim, lease_heartbeat, lease_finish (declared in sql/lease.sql).
use pgrx::datum::{AnyElement, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::Uuid;

use super::args::{at_least_one, finite_time, interval_in_range, non_empty, positive_interval, required, short_name};
use crate::error::{bad_argument, invalid_argument};
use crate::lease::{self, ClaimRequest, Finish};

crate::finfo_v1!(pg_finfo_lease_try_claim_wrapper);

/// lease_try_claim: one row of a composite type, not a set (see `super::row`).
///
/// # Safety
/// Called by PostgreSQL through the declaration in sql/lease.sql, eight arguments.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn lease_try_claim_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        pg_sys::submodules::panic::pgrx_extern_c_guard(|| {
            use pgrx::fcinfo::pg_getarg;
            let req = ClaimRequest {
                job_name: non_empty(pg_getarg::<&str>(fcinfo, 0), "job_name"),
                plan_time: finite_time(pg_getarg::<TimestampWithTimeZone>(fcinfo, 1), "plan_time"),
                runner_id: non_empty(pg_getarg::<&str>(fcinfo, 2), "runner_id"),
                scope_kind: non_empty(pg_getarg::<&str>(fcinfo, 3), "scope_kind"),
                scope_id: short_name(pg_getarg::<&str>(fcinfo, 4), "scope_id"),
                stale_timeout: positive_interval(pg_getarg::<Interval>(fcinfo, 5), "stale_timeout"),
                max_attempts: at_least_one(pg_getarg::<i32>(fcinfo, 6), "max_attempts"),
                allow_stale_reentry: required(pg_getarg::<bool>(fcinfo, 7), "allow_stale_reentry"),
            };
            let c = lease::claim(&req);
            super::row::one_row(
                fcinfo,
                &[
                    c.outcome.as_sql().into_datum(),
                    c.execution_id.into_datum(),
                    c.lease_token.into_datum(),
                    c.attempt.into_datum(),
                    c.fencing_token.into_datum(),
                    c.stale_after.into_datum(),
                ],
            )
        })
    }
}

#[pg_extern(sql = false)]
fn lease_heartbeat(execution_id: Option<Uuid>, lease_token: Option<Uuid>) -> bool {
    lease::heartbeat(required(execution_id, "execution_id"), required(lease_token, "lease_token"))
}

#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn lease_finish(
    execution_id: Option<Uuid>,
    lease_token: Option<Uuid>,
    status: Option<&str>,
    // Declared jsonb in SQL; taken as the datum itself (AnyElement), never converted
    // through serde_json, so the stored value is exactly the value given (big numbers,
    // long decimals and deep nesting included).
    result: Option<AnyElement>,
    rows_affected: Option<i64>,
    error_code: Option<&str>,
    error_msg: Option<&str>,
    retry_in: Option<Interval>,
) -> bool {
    let execution_id = required(execution_id, "execution_id");
    let lease_token = required(lease_token, "lease_token");
    let status = match lease_model::Status::from_sql(required(status, "status")) {
        Some(s @ (lease_model::Status::Success | lease_model::Status::Failed)) => s,
        _ => invalid_argument("status", "must be 'SUCCESS' or 'FAILED'", None),
    };
    if let Some(result) = &result {
        let size = jsonb_text_bytes(result);
        if size > lease_model::RESULT_MAX_BYTES {
            bad_argument(
                PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
                "result",
                &format!("is {size} bytes of JSON, more than the limit of {} bytes", lease_model::RESULT_MAX_BYTES),
                Some("Keep results small; put large output in your own table or logs."),
            );
        }
    }
    let failed = status == lease_model::Status::Failed;
    let result = result.map(|r| r.datum());
    let finish = Finish {
        status,
        result,
        rows_affected,
        // Error fields describe failures only; a SUCCESS clears them.
        error_code: failed.then(|| {
            let code = error_code.filter(|c| !c.is_empty()).unwrap_or("handler_error");
            lease_model::truncate_chars(code, ERROR_CODE_MAX_CHARS).to_string()
        }),
        error_msg: error_msg
            .filter(|_| failed)
            .map(|m| lease_model::truncate_chars(m, lease_model::ERROR_MSG_MAX_CHARS).to_string()),
        retry_in: retry_in.map(|r| interval_in_range(r, "retry_in", true)),
    };
    lease::finish(execution_id, lease_token, finish)
}

/// The longest error_code kept, in characters: longer codes are cut, like error_msg (a
/// finish is never refused for its error text, which would leave the run RUNNING).
pub const ERROR_CODE_MAX_CHARS: usize = 200;

/// The size of a jsonb value printed as text (what the 16 KiB limit counts), from
/// PostgreSQL's own jsonb output function.
fn jsonb_text_bytes(value: &AnyElement) -> usize {
    // SAFETY: `value` is a non-null jsonb datum passed to this call; the output function
    // returns a palloc'd C string in the current memory context, freed right after.
    unsafe {
        let mut output: pgrx::pg_sys::Oid = pgrx::pg_sys::InvalidOid;
        let mut is_varlena = false;
        pgrx::pg_sys::getTypeOutputInfo(pgrx::pg_sys::JSONBOID, &mut output, &mut is_varlena);
        let text = pgrx::pg_sys::OidOutputFunctionCall(output, value.datum());
        let len = std::ffi::CStr::from_ptr(text).to_bytes().len();
        pgrx::pg_sys::pfree(text.cast());
        len
    }
}

/// `lease_sched.retry_backoff(attempt, base, max)`: the model's saturating backoff, the one
/// definition the SQL of lease_finish and the sweep calls.
#[pg_extern(sql = false)]
fn retry_backoff(attempt: Option<i32>, base: Option<Interval>, max: Option<Interval>) -> Interval {
    let attempt = required(attempt, "attempt");
    if attempt < 1 {
        invalid_argument("attempt", "must be at least 1", None);
    }
    let base = interval_in_range(required(base, "base"), "base", true);
    let max = interval_in_range(required(max, "max"), "max", true);
    Interval::from_micros(lease_model::retry_backoff(attempt, base.as_micros() as i64, max.as_micros() as i64))
}
