//! State that belongs to this backend's open transaction, kept until it ends:
//!
//! - touches a flush wrote: forgotten from the shared buffer when the transaction commits,
//!   kept buffered when it (or the subtransaction that wrote them) aborts;
//! - fences the transaction passed (`lock_fence`, `lease_fence`): what `require_lock` /
//!   `require_lease` triggers check; gone when the transaction ends, and when the
//!   subtransaction that took them rolls back (that also releases the fence's row lock);
//! - loss notices a steal or takeover recorded (`crate::notices`): queued for the sweeper
//!   to send when the transaction commits, their reserved places given back when it (or the
//!   subtransaction that recorded them) aborts.
//!
//! Each entry carries the subtransaction that made it. Aborting a subtransaction undoes it
//! and its children, which are exactly the entries with an id at least as high (ids grow,
//! and every subtransaction begun while it was open is its descendant).
//! PREPARE TRANSACTION counts as an end: the prepared writes may yet roll back, and a
//! second write of the same touch changes nothing. A transaction that passed a fence cannot
//! be prepared at all (it would pin the lease or lock against takeovers), nor one that
//! recorded a notice (as PostgreSQL prepares none that ran NOTIFY).
use std::cell::{Cell, RefCell};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgLogLevel;

use crate::touch_table::{RuntimeId, SeenAt};

/// What to do with written touches once their write commits (`runtime` drops them from
/// the shared buffer).
pub type ForgetWritten = fn(&[(RuntimeId, SeenAt)]);

/// A fence this transaction passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    Lock { name: String },
    Lease { job_name: String },
}

/// Touches a flush wrote: (subtransaction, the touches, what to do with them at commit).
type WrittenTouches = (pg_sys::SubTransactionId, Vec<(RuntimeId, SeenAt)>, ForgetWritten);

thread_local! {
    static WRITTEN_TOUCHES: RefCell<Vec<WrittenTouches>> = const { RefCell::new(Vec::new()) };
    // (subtransaction, fence, proven with the holder's secret token)
    static FENCES: RefCell<Vec<(pg_sys::SubTransactionId, Fence, bool)>> = const { RefCell::new(Vec::new()) };
    // (subtransaction, payload); each holds a place reserved in the notices' shared queue
    static NOTICES: RefCell<Vec<(pg_sys::SubTransactionId, String)>> = const { RefCell::new(Vec::new()) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

fn current_subxact() -> pg_sys::SubTransactionId {
    if !CALLBACKS.get() {
        // SAFETY: registers two plain callbacks for this backend's life; they touch only
        // backend-local state, the shared buffer under its lock and the notices' queue
        // (atomics); no SPI, and an ERROR only before PREPARE.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact_end), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact_end), std::ptr::null_mut());
        }
        CALLBACKS.set(true);
    }
    // SAFETY: reads the current subtransaction's id.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// These buffered touches were written by the open transaction: `forget` them at commit.
pub fn touches_written(entries: Vec<(RuntimeId, SeenAt)>, forget: ForgetWritten) {
    if !entries.is_empty() {
        let subid = current_subxact();
        WRITTEN_TOUCHES.with(|w| w.borrow_mut().push((subid, entries, forget)));
    }
}

/// The open transaction passed this fence; `proven` when the caller also gave the
/// holder's secret (lease_token / lock_token), not just the public fencing token.
pub fn fence_passed(fence: Fence, proven: bool) {
    let subid = current_subxact();
    FENCES.with(|f| f.borrow_mut().push((subid, fence, proven)));
}

/// A loss notice to send once the open transaction commits (its place in the shared queue
/// is reserved already).
pub fn notice_recorded(payload: String) {
    let subid = current_subxact();
    NOTICES.with(|n| n.borrow_mut().push((subid, payload)));
}

/// Has the open transaction passed this fence (and not rolled it back), with the secret
/// when `proven_only`?
pub fn has_fence(fence: &Fence, proven_only: bool) -> bool {
    FENCES.with(|f| f.borrow().iter().any(|(_, passed, proven)| passed == fence && (*proven || !proven_only)))
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // A prepared transaction keeps its row locks until someone commits or rolls it back,
        // however long that takes: a fence in it would hold off every steal or takeover of
        // that lease or lock indefinitely. Refuse, as postgres_fdw refuses for its own
        // state; the transaction is then rolled back.
        XACT_EVENT_PRE_PREPARE if FENCES.with(|f| !f.borrow().is_empty()) => {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "lease_sched: cannot PREPARE a transaction that passed lease_fence or lock_fence",
                "lease_sched",
            )
            .set_hint("A prepared transaction would hold the lease or lock against every takeover until it is resolved; COMMIT instead.")
            .report(PgLogLevel::ERROR);
        }
        XACT_EVENT_PRE_PREPARE if NOTICES.with(|n| !n.borrow().is_empty()) => {
            pgrx::pg_sys::panic::ErrorReport::new(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY",
                "lease_sched",
            )
            .set_detail("A lease_sched steal or lock takeover in it notifies lease_sched_lost at commit.")
            .report(PgLogLevel::ERROR);
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            for (_, entries, forget) in WRITTEN_TOUCHES.with(|w| std::mem::take(&mut *w.borrow_mut())) {
                forget(&entries);
            }
            FENCES.with(|f| f.borrow_mut().clear());
            let notices = NOTICES.with(|n| std::mem::take(&mut *n.borrow_mut()));
            crate::notices::committed(notices.into_iter().map(|(_, payload)| payload).collect());
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            WRITTEN_TOUCHES.with(|w| w.borrow_mut().clear());
            FENCES.with(|f| f.borrow_mut().clear());
            crate::notices::forgotten(NOTICES.with(|n| std::mem::take(&mut *n.borrow_mut())).len());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_end(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        WRITTEN_TOUCHES.with(|w| w.borrow_mut().retain(|(subid, _, _)| *subid < my_subid));
        FENCES.with(|f| f.borrow_mut().retain(|(subid, _, _)| *subid < my_subid));
        let dropped = NOTICES.with(|n| {
            let mut n = n.borrow_mut();
            let before = n.len();
            n.retain(|(subid, _)| *subid < my_subid);
            before - n.len()
        });
        crate::notices::forgotten(dropped);
    }
}
