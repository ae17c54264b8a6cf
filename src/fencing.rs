//! Fencing that protects data: fence checks inside the writer's transaction, and fencing
//! tokens that never repeat.
//!
//! **Fences.** `lease_fence` / `lock_fence` given the holder's secret (lease_token /
//! lock_token) read the lease or lock row `FOR KEY SHARE`: the check holds until the
//! caller's transaction ends, because a steal and a takeover lock the row `FOR UPDATE`
//! first, which waits for every KEY SHARE holder. A heartbeat (a non-key UPDATE, lock mode
//! FOR NO KEY UPDATE) does not conflict with KEY SHARE, so a holder's heartbeats on another
//! connection never wait for its own fenced writes; the sweep (FOR UPDATE SKIP LOCKED)
//! skips a fenced row until the fenced transaction ends.
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
//!
//! **Tokens that never repeat.** Tokens come from one sequence. Before a backend draws its
//! first token, it makes sure the sequence was *floored* since this server started and on
//! this timeline: moved up to at least the database clock in microseconds
//! (`token_floor_timeline` and `token_floor_server_start` record the last floor). Tokens
//! grow by one per grant from there, so as long as grants average under one per
//! microsecond a token is never above the clock at its grant. Every event that could
//! otherwise repeat tokens starts with a floor: `CREATE EXTENSION` (also after a DROP, and
//! in a restore whose sequence was not carried) leaves both records at 0; a copy started
//! from a base backup or a volume snapshot (whose sequence is as it was at the copy, behind
//! what the original granted since) is a new server start; promoting a replica starts a new
//! timeline. Either way the next grant floors the sequence above the clock, hence above
//! every token granted before the event, provided the clock did not go back across it
//! (docs/reliability.md states the assumption). The cost: one floor statement per database
//! per server start, and for each backend one read of the two records at its first grant.
use std::cell::Cell;

use pgrx::pg_sys::{self, INT8OID, TEXTOID, UUIDOID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::clock::db_clock;
use crate::spi_plans::{execute, Statement};
use crate::xact::{self, Fence};

/// The timeline and the server start (PgStartTime, microseconds since 2000) the token
/// sequence was last floored on (0: never, the state after CREATE EXTENSION). Sequences,
/// not a table row, on purpose: setval is not transactional, so recording a floor takes no
/// row lock that other sessions' first grants would wait on until the flooring transaction
/// ends. Neither is dumped: a restored copy floors at its first grant.
static FLOORED_ON: Statement = Statement {
    sql: "SELECT t.last_value, s.last_value
            FROM lease_sched.token_floor_timeline t, lease_sched.token_floor_server_start s",
    arg_types: &[],
};

/// `greatest` with the sequence's own value: a floor never moves the sequence back. Run
/// only under `FLOOR_LOCK`, so two floors never interleave their read and their setval.
static FLOOR: Statement = Statement {
    sql: "SELECT pg_catalog.setval('lease_sched.fencing_token_seq',
                     greatest((SELECT last_value FROM lease_sched.fencing_token_seq), $2)),
                 pg_catalog.setval('lease_sched.token_floor_timeline', $1),
                 pg_catalog.setval('lease_sched.token_floor_server_start', $3)",
    arg_types: &[INT8OID, INT8OID, INT8OID],
};

/// `greatest` again: moves the sequence up to $1, never back.
static FLOOR_ABOVE: Statement = Statement {
    sql: "SELECT pg_catalog.setval('lease_sched.fencing_token_seq',
                     greatest((SELECT last_value FROM lease_sched.fencing_token_seq), $1))",
    arg_types: &[INT8OID],
};

/// The advisory lock (pg_locks: locktype advisory, classid 0x4c53 'LS', objid 1, objsubid 3)
/// that serialises floors in one database. Held only around the floor's one statement.
/// objsubid 3 is a key no SQL function can take: pg_advisory_lock(bigint) takes objsubid 1
/// and pg_advisory_lock(int4, int4) objsubid 2, open to any role that can connect, which
/// could otherwise hold the floor lock for good and stop every grant after a server start.
const FLOOR_LOCK_KEY: (u32, u32, u16) = (0x4c53, 1, 3);

thread_local! {
    // (timeline, server start, oid of token_floor_timeline) this backend has seen floored.
    // The oid changes with DROP + CREATE EXTENSION, so a session that outlives a re-create
    // floors the new sequence before its first grant.
    static FLOORED: Cell<(i64, i64, u32)> = const { Cell::new((0, 0, 0)) };
}

/// When the postmaster started (what pg_postmaster_start_time() shows), in microseconds:
/// a new value at every server start, a restored copy's first start included.
fn server_start() -> i64 {
    // SAFETY: a plain read of a global the postmaster sets once at startup.
    unsafe { pg_sys::PgStartTime }
}

fn current_timeline() -> Option<i64> {
    // SAFETY: plain reads of the WAL control state; GetWALInsertionTimeLine is valid once
    // recovery has ended (checked first).
    unsafe {
        if pg_sys::RecoveryInProgress() {
            return None; // a standby grants nothing: the write will fail as read-only
        }
        Some(pg_sys::GetWALInsertionTimeLine() as i64)
    }
}

/// The oid of lease_sched.token_floor_timeline (two syscache lookups, no I/O).
fn floor_sequence_oid() -> u32 {
    // SAFETY: syscache lookups by name; missing_ok so a missing schema yields InvalidOid.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"lease_sched".as_ptr(), true);
        pg_sys::get_relname_relid(c"token_floor_timeline".as_ptr(), schema).to_u32()
    }
}

/// Run `f` holding the floor lock (a session-level advisory lock, released on every path).
fn with_floor_lock<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: an advisory locktag in this database (SET_LOCKTAG_ADVISORY), with a fourth
    // field SQL's advisory-lock functions never use; acquired and released as a session
    // lock, so the release below is the only one, on success and on error alike.
    unsafe {
        let tag = pg_sys::LOCKTAG {
            locktag_field1: pg_sys::MyDatabaseId.to_u32(),
            locktag_field2: FLOOR_LOCK_KEY.0,
            locktag_field3: FLOOR_LOCK_KEY.1,
            locktag_field4: FLOOR_LOCK_KEY.2,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        };
        pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, true, false);
        PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
            .finally(|| {
                pg_sys::LockRelease(&tag, pg_sys::ExclusiveLock as i32, true);
            })
            .execute()
    }
}

/// Call before drawing a fencing token. Costs a comparison and two syscache lookups,
/// except for a backend's first grant (one SELECT) and the first grant in a database after
/// an event (the floor itself, one statement under the floor lock).
pub fn ensure_token_floor(client: &mut SpiClient<'_>) {
    let Some(timeline) = current_timeline() else { return };
    let start = server_start();
    let key = (timeline, start, floor_sequence_oid());
    if FLOORED.get() == key {
        return;
    }
    let floored_on = |client: &mut SpiClient<'_>| -> (Option<i64>, Option<i64>) {
        let t = execute(client, &FLOORED_ON, &[]);
        let r = t.first();
        (r.get(1).ok().flatten(), r.get(2).ok().flatten())
    };
    let current = (Some(timeline), Some(start));
    if floored_on(client) != current {
        with_floor_lock(|| {
            // Re-read under the lock: another session may have floored meanwhile.
            if floored_on(client) != current {
                execute(client, &FLOOR, &[timeline.into(), db_clock().into(), start.into()]);
            }
        });
    }
    FLOORED.set(key);
}

/// Move the sequence above `token`, a token a row already carries although the sequence
/// never reached it (rows restored from a database floored later than this one): to the
/// clock, or to `token` if that is higher, as a floor does, so the next token drawn is
/// above both. Under the floor lock, like every floor.
pub fn floor_above(client: &mut SpiClient<'_>, token: i64) {
    with_floor_lock(|| {
        execute(client, &FLOOR_ABOVE, &[token.max(db_clock()).into()]);
    });
}

static LEASE_ROW: Statement = Statement {
    sql: "SELECT job_name, status, fencing_token, lease_token FROM lease_sched.sys_cron_executions WHERE id = $1 FOR KEY SHARE",
    arg_types: &[UUIDOID],
};

static LOCK_ROW: Statement = Statement {
    sql: "SELECT fencing_token, lock_token FROM lease_sched.locks WHERE name = $1 FOR KEY SHARE",
    arg_types: &[TEXTOID],
};

/// Run `read` (which locks the row FOR KEY SHARE) so that the lock lasts until the
/// transaction ends when the caller gave the secret, and not a moment past `read` when it
/// did not (module doc).
fn read_row<R>(pin: bool, read: impl FnOnce() -> R) -> R {
    if pin {
        read()
    } else {
        crate::subxact::rolled_back(read)
    }
}

/// `lease_fence`'s check: None when `fencing_token` holds the RUNNING lease, else why not.
/// With `lease_token` (the holder's secret) the fence also proves the caller is the holder,
/// and the row stays locked until this transaction ends; without it, it only proves the
/// token is current at this instant (the newest row version), which anyone who can see
/// the token can claim, and pins nothing (docs/api.md, "Fences").
/// The SQL wrapper raises LS001 with the refusal: a custom SQLSTATE cannot travel through
/// Rust's error type, so PL/pgSQL raises it.
pub fn lease_fence(execution_id: Uuid, fencing_token: i64, lease_token: Option<Uuid>) -> Option<String> {
    let row = read_row(lease_token.is_some(), || Spi::connect_mut(|client| {
        let t = execute(client, &LEASE_ROW, &[execution_id.into()]);
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        Some((
            r.get::<String>(1).unwrap()?,
            r.get::<String>(2).unwrap()?,
            r.get::<i64>(3).unwrap()?,
            r.get::<Uuid>(4).unwrap()?,
        ))
    }));
    match row {
        Some((job_name, status, token, _)) if token != fencing_token => Some(format!(
            "lease_sched: fenced out: the lease {execution_id} of job \"{job_name}\" is now held with fencing token {token}, not {fencing_token} (status {status})"
        )),
        Some((job_name, status, _, _)) if status != "RUNNING" => {
            Some(format!("lease_sched: fenced out: the lease {execution_id} of job \"{job_name}\" has ended ({status})"))
        }
        Some((job_name, _, _, secret)) if lease_token.is_some_and(|given| given != secret) => Some(format!(
            "lease_sched: fenced out: the lease_token given does not hold the lease {execution_id} of job \"{job_name}\""
        )),
        Some((job_name, _, _, _)) => {
            xact::fence_passed(Fence::Lease { job_name }, lease_token.is_some());
            None
        }
        None => Some(format!("lease_sched: fenced out: there is no lease {execution_id}")),
    }
}

/// `lock_fence`'s check: None when `fencing_token` holds the lock, else why not.
/// `lock_token` as for `lease_fence`: with it the row stays locked until this transaction
/// ends, without it nothing is locked.
pub fn lock_fence(lock_name: &str, fencing_token: i64, lock_token: Option<Uuid>) -> Option<String> {
    let row: Option<(i64, Uuid)> = read_row(lock_token.is_some(), || Spi::connect_mut(|client| {
        let t = execute(client, &LOCK_ROW, &[lock_name.into()]);
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        Some((r.get::<i64>(1).unwrap()?, r.get::<Uuid>(2).unwrap()?))
    }));
    match row {
        Some((token, _)) if token != fencing_token => Some(format!(
            "lease_sched: fenced out: the lock \"{lock_name}\" is now held with fencing token {token}, not {fencing_token}"
        )),
        Some((_, secret)) if lock_token.is_some_and(|given| given != secret) => {
            Some(format!("lease_sched: fenced out: the lock_token given does not hold the lock \"{lock_name}\""))
        }
        Some(_) => {
            xact::fence_passed(Fence::Lock { name: lock_name.to_string() }, lock_token.is_some());
            None
        }
        None => Some(format!(
            "lease_sched: fenced out: the lock \"{lock_name}\" is not held (fencing token {fencing_token} no longer holds it)"
        )),
    }
}
