//! `lease_fence`: a fence check inside the writer's transaction (docs/api.md, "Fences").
//!
//! Given the holder's secret (lease_token), the fence reads the lease row `FOR KEY SHARE`:
//! the check holds until the caller's transaction ends, because a steal locks the row
//! `FOR UPDATE` first, which waits for every KEY SHARE holder. A heartbeat (a non-key
//! UPDATE, lock mode FOR NO KEY UPDATE) does not conflict with KEY SHARE, so a holder's
//! heartbeats on another connection never wait for its own fenced writes; the sweep (FOR
//! UPDATE SKIP LOCKED) skips a fenced row until the fenced transaction ends. `lock_fence`
//! (src/lock/fence.rs) works the same way on a lock's row.
//!
//! Given only the public fencing token, a fence checks and keeps nothing: anyone who can
//! read `lock_info()` or `active_leases` knows that token, and a row lock kept on it would
//! let such a stranger hold off every takeover, steal and sweep of the row for as long as
//! it kept a transaction open. So only the holder, proven by its secret, can pin the row.
//! The public check still locks the row FOR KEY SHARE, but in a subtransaction rolled back
//! at once: the lock is what makes the check see the newest row version (READ COMMITTED
//! waits for an uncommitted steal and reads its result; REPEATABLE READ fails with 40001
//! on a row changed since its snapshot), and releasing it right away is what keeps the
//! stranger from pinning anything.
use pgrx::prelude::*;
use pgrx::Uuid;

use super::store;
use crate::subxact;
use crate::xact::{self, Fence};

/// `lease_fence`'s check: None when `fencing_token` holds the RUNNING lease, else why not.
/// With `lease_token` (the holder's secret) the fence also proves the caller is the holder,
/// and the row stays locked until this transaction ends; without it, it only proves the
/// token is current at this instant (the newest row version), which anyone who can see
/// the token can claim, and pins nothing (docs/api.md, "Fences").
/// The SQL wrapper raises LS001 with the refusal: a custom SQLSTATE cannot travel through
/// Rust's error type, so PL/pgSQL raises it.
pub fn check(execution_id: Uuid, fencing_token: i64, lease_token: Option<Uuid>) -> Option<String> {
    let row = subxact::keep_locks_if(lease_token.is_some(), || {
        Spi::connect_mut(|client| store::FENCE_ROW.first(client, &[execution_id.into()]))
    });
    let Some(row) = row else {
        return Some(format!("lease_sched: fenced out: there is no lease {execution_id}"));
    };
    let store::FenceRow { job_name, status, fencing_token: token, lease_token: secret } = row;
    if token != fencing_token {
        return Some(format!(
            "lease_sched: fenced out: the lease {execution_id} of job \"{job_name}\" is now held with fencing token {token}, not {fencing_token} (status {status})"
        ));
    }
    if status != "RUNNING" {
        return Some(format!(
            "lease_sched: fenced out: the lease {execution_id} of job \"{job_name}\" has ended ({status})"
        ));
    }
    if lease_token.is_some_and(|given| given != secret) {
        return Some(format!(
            "lease_sched: fenced out: the lease_token given does not hold the lease {execution_id} of job \"{job_name}\""
        ));
    }
    xact::fence_passed(Fence::Lease { job_name }, lease_token.is_some());
    None
}
