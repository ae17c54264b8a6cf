//! The checks behind lease_fence, lock_fence, require_lease and require_lock (declared in
//! sql/fencing.sql, whose PL/pgSQL raises the SQLSTATE LS001 with the message returned here).
use pgrx::prelude::*;
use pgrx::Uuid;

use super::args::{non_empty, required};
use crate::xact::{self, Fence};
use crate::{lease, lock};

/// NULL when the fence is passed (and held until the transaction ends), else the refusal.
#[pg_extern(sql = false)]
fn lease_fence_check(
    execution_id: Option<Uuid>,
    fencing_token: Option<i64>,
    lease_token: Option<Uuid>,
) -> Option<String> {
    lease::fence::check(required(execution_id, "execution_id"), required(fencing_token, "fencing_token"), lease_token)
}

#[pg_extern(sql = false)]
fn lock_fence_check(lock_name: Option<&str>, fencing_token: Option<i64>, lock_token: Option<Uuid>) -> Option<String> {
    lock::fence::check(non_empty(lock_name, "lock_name"), required(fencing_token, "fencing_token"), lock_token)
}

/// Has this transaction passed `lock_fence(lock_name, ...)` (with the secret lock_token
/// when `proven_only`)?
#[pg_extern(sql = false)]
fn lock_fence_passed(lock_name: Option<&str>, proven_only: Option<bool>) -> bool {
    let fence = Fence::Lock { name: non_empty(lock_name, "lock_name").to_string() };
    xact::has_fence(&fence, required(proven_only, "proven_only"))
}

/// Has this transaction passed `lease_fence` for a lease of `job_name` (with the secret
/// lease_token when `proven_only`)?
#[pg_extern(sql = false)]
fn lease_fence_passed(job_name: Option<&str>, proven_only: Option<bool>) -> bool {
    let fence = Fence::Lease { job_name: non_empty(job_name, "job_name").to_string() };
    xact::has_fence(&fence, required(proven_only, "proven_only"))
}
