//! Fencing tokens that never repeat (the fences that check them are src/lease/fence.rs
//! and src/lock/fence.rs).
//!
//! Tokens come from one sequence. Before a backend draws its first token, it makes sure
//! the sequence was *floored* since this server started, on this timeline and in this copy
//! of the database: moved up to at least the database clock in microseconds
//! (`token_floor_timeline`, `token_floor_server_start` and `token_floor_copy` record the
//! last floor). Tokens grow by one per grant from
//! there, so as long as grants average under one per microsecond a token is never above
//! the clock at its grant. Every event that could otherwise repeat tokens starts with a
//! floor: `CREATE EXTENSION` (also after a DROP, and in a restore whose sequence was not
//! carried) leaves both records at 0; a copy started from a base backup or a volume
//! snapshot (whose sequence is as it was at the copy, behind what the original granted
//! since) is a new server start; promoting a replica starts a new timeline; CREATE
//! DATABASE ... TEMPLATE (every sequence copied as it is) is a new database oid. Either way the
//! next grant floors the sequence above the clock, hence above every token granted before
//! the event, provided the clock did not go back across it (docs/reliability.md states the
//! assumption). The cost: one floor statement per database per server start, and for each
//! backend one read of the two records at its first grant.
use std::cell::Cell;

use pgrx::pg_sys::{self, INT8OID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::clock::db_clock;
use crate::spi_plans::{execute, Query, Statement};

/// The timeline, the server start (PgStartTime, microseconds since 2000) and the copy of the
/// database (`database_copy`) the token sequence was last floored on (0: never, the state
/// after CREATE EXTENSION). Sequences,
/// not a table row, on purpose: setval is not transactional, so recording a floor takes no
/// row lock that other sessions' first grants would wait on until the flooring transaction
/// ends. Neither is dumped: a restored copy floors at its first grant.
static FLOORED_ON: Query<(i64, i64, i64)> = Query {
    statement: Statement {
        sql: "SELECT t.last_value, s.last_value, c.last_value
                FROM lease_sched.token_floor_timeline t, lease_sched.token_floor_server_start s,
                     lease_sched.token_floor_copy c",
        arg_types: &[],
    },
    row: |r| Some((r.get(1).ok()??, r.get(2).ok()??, r.get(3).ok()??)),
};

/// `greatest` with the sequence's own value: a floor never moves the sequence back. Run
/// only under `FLOOR_LOCK`, so two floors never interleave their read and their setval.
static FLOOR: Statement = Statement {
    sql: "SELECT pg_catalog.setval('lease_sched.fencing_token_seq',
                     greatest((SELECT last_value FROM lease_sched.fencing_token_seq), $2)),
                 pg_catalog.setval('lease_sched.token_floor_timeline', $1),
                 pg_catalog.setval('lease_sched.token_floor_server_start', $3),
                 pg_catalog.setval('lease_sched.token_floor_copy', $4)",
    arg_types: &[INT8OID, INT8OID, INT8OID, INT8OID],
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

/// The oid of the relation `name` in schema lease_sched (two syscache lookups, no I/O;
/// InvalidOid when missing).
fn relation_oid(name: &std::ffi::CStr) -> u32 {
    // SAFETY: syscache lookups by name; missing_ok so a missing schema yields InvalidOid.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"lease_sched".as_ptr(), true);
        pg_sys::get_relname_relid(name.as_ptr(), schema).to_u32()
    }
}

/// This copy of the database, as `token_floor_copy` records it: the database's oid << 32 |
/// fencing_token_seq's oid (the portable edition's `portable_database_copy()` computes the
/// same, with SQL's wrapping shift).
fn database_copy() -> i64 {
    // SAFETY: a plain read of the backend's database oid, set once at connection.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32() as u64;
    ((database << 32) | relation_oid(c"fencing_token_seq") as u64) as i64
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
    let key = (timeline, start, relation_oid(c"token_floor_timeline"));
    if FLOORED.get() == key {
        return;
    }
    let floored_on = |client: &mut SpiClient<'_>| FLOORED_ON.first(client, &[]);
    let copy = database_copy();
    let current = Some((timeline, start, copy));
    if floored_on(client) != current {
        with_floor_lock(|| {
            // Re-read under the lock: another session may have floored meanwhile.
            if floored_on(client) != current {
                execute(client, &FLOOR, &[timeline.into(), db_clock().into(), start.into(), copy.into()]);
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
