//! `lock_fence`: a fence check inside the writer's transaction, on a lock's row. The
//! protocol is the lease fence's (src/lease/fence.rs explains it): with the holder's secret
//! (lock_token) the row stays locked FOR KEY SHARE until the transaction ends, so a
//! takeover (FOR UPDATE) waits for it; with only the public fencing token nothing stays
//! locked.
use pgrx::prelude::*;
use pgrx::Uuid;

use super::store;
use crate::subxact;
use crate::xact::{self, Fence};

/// `lock_fence`'s check: None when `fencing_token` holds the lock, else why not.
/// `lock_token` as for `lease_fence`: with it the row stays locked until this transaction
/// ends, without it nothing is locked.
pub fn check(lock_name: &str, fencing_token: i64, lock_token: Option<Uuid>) -> Option<String> {
    let row = subxact::keep_locks_if(lock_token.is_some(), || {
        Spi::connect_mut(|client| store::FENCE_ROW.first(client, &[lock_name.into()]))
    });
    let Some(row) = row else {
        return Some(format!(
            "lease_sched: fenced out: the lock \"{lock_name}\" is not held (fencing token {fencing_token} no longer holds it)"
        ));
    };
    if row.fencing_token != fencing_token {
        return Some(format!(
            "lease_sched: fenced out: the lock \"{lock_name}\" is now held with fencing token {}, not {fencing_token}",
            row.fencing_token
        ));
    }
    if lock_token.is_some_and(|given| given != row.lock_token) {
        return Some(format!("lease_sched: fenced out: the lock_token given does not hold the lock \"{lock_name}\""));
    }
    xact::fence_passed(Fence::Lock { name: lock_name.to_string() }, lock_token.is_some());
    None
}
