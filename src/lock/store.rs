//! Every SQL statement on `lease_sched.locks`, each statement that returns rows beside
//! the decoder of its row (`Query`).
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::{INTERVALOID, TEXTOID, TIMESTAMPTZOID, UUIDOID};
use pgrx::spi::SpiHeapTupleData;
use pgrx::Uuid;

use crate::spi_plans::{Query, Statement};

/// A grant: TAKE_OVER's and GRANT_TOKEN's RETURNING lists.
pub struct Granted {
    pub lock_token: Uuid,
    pub fencing_token: i64,
    pub holder: String,
    pub expires_at: TimestampWithTimeZone,
    /// TAKE_OVER only: the lock's previous token, when the token drawn is not above it (a
    /// row restored from a database whose sequence was further on): draw again (REDRAW).
    pub redraw_above: Option<i64>,
}

fn granted(r: &SpiHeapTupleData<'_>) -> Option<Granted> {
    Some(Granted {
        lock_token: r.get(1).ok()??,
        fencing_token: r.get(2).ok()??,
        holder: r.get(3).ok()??,
        expires_at: r.get(4).ok()??,
        redraw_above: r.get::<i64>(5).ok().flatten(),
    })
}

/// Take over an expired lock. The UPDATE waits for a concurrent holder of the row lock; if
/// that session changed the row meanwhile, PostgreSQL re-evaluates the SET list (and so
/// draws a fresh token) on the newest version, and if the row is gone (released) nothing
/// is updated. A token drawn before a wait is used only when nobody changed the row, so
/// no newer grant of this lock can exist.
///
/// The row is locked FOR UPDATE first: that waits for every transaction that passed
/// `lock_fence` on it (FOR KEY SHARE), so a takeover never completes between the deposed
/// holder's fence and its commit. The new holder's times are read after that wait (an
/// init-plan evaluated for the locked row), so a takeover that waited is not born expired.
pub static TAKE_OVER: Query<Granted> = Query { row: granted, statement: Statement {
    sql: "WITH held AS (
              SELECT name, fencing_token AS previous_token FROM lease_sched.locks WHERE name = $1 AND expires_at <= $3 FOR UPDATE)
          UPDATE lease_sched.locks l
             SET holder = $2, fencing_token = nextval('lease_sched.fencing_token_seq'),
                 lock_token = gen_random_uuid(), acquired_at = (SELECT clock_timestamp()),
                 heartbeat_at = (SELECT clock_timestamp()), expires_at = (SELECT clock_timestamp()) + $4, ttl = $4
            FROM held
           WHERE l.name = held.name
          RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at,
                    CASE WHEN l.fencing_token <= held.previous_token THEN held.previous_token END",
    arg_types: &[TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID],
}};

/// A new token for the lock this transaction has just taken over (TAKE_OVER asked for it).
pub static REDRAW: Query<Granted> = Query {
    row: granted,
    statement: Statement {
        sql: "UPDATE lease_sched.locks SET fencing_token = nextval('lease_sched.fencing_token_seq')
           WHERE name = $1
          RETURNING lock_token, fencing_token, holder, expires_at",
        arg_types: &[TEXTOID],
    },
};

/// Insert a free lock with no token yet (0). The VALUES list is computed before the
/// INSERT waits on a concurrent inserter of the same name, so a token drawn there could
/// predate grants that session makes and commits meanwhile: `GRANT_TOKEN` draws it after.
pub static INSERT_FREE: Statement = Statement {
    sql: "INSERT INTO lease_sched.locks (name, holder, fencing_token, acquired_at, heartbeat_at, expires_at, ttl, lock_token)
          VALUES ($1, $2, 0, $3, $3, $3 + $4, $4, gen_random_uuid())
          ON CONFLICT (name) DO NOTHING
          RETURNING name",
    arg_types: &[TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID],
};

/// The row was inserted by this transaction just now: no wait is possible here. The times
/// are read again too: the INSERT may have waited for a concurrent inserter.
pub static GRANT_TOKEN: Query<Granted> = Query {
    row: granted,
    statement: Statement {
        sql: "UPDATE lease_sched.locks SET fencing_token = nextval('lease_sched.fencing_token_seq'),
                 acquired_at = (SELECT clock_timestamp()), heartbeat_at = (SELECT clock_timestamp()),
                 expires_at = (SELECT clock_timestamp()) + ttl
           WHERE name = $1
          RETURNING lock_token, fencing_token, holder, expires_at",
        arg_types: &[TEXTOID],
    },
};

/// Who holds the lock, and until when.
pub struct Holder {
    pub holder: String,
    pub expires_at: TimestampWithTimeZone,
}

pub static HOLDER: Query<Holder> = Query {
    statement: Statement {
        sql: "SELECT holder, expires_at FROM lease_sched.locks WHERE name = $1",
        arg_types: &[TEXTOID],
    },
    row: |r| Some(Holder { holder: r.get(1).ok()??, expires_at: r.get(2).ok()?? }),
};

pub static HEARTBEAT: Statement = Statement {
    sql: "UPDATE lease_sched.locks SET heartbeat_at = $3, expires_at = $3 + ttl
           WHERE name = $1 AND lock_token = $2",
    arg_types: &[TEXTOID, UUIDOID, TIMESTAMPTZOID],
};

pub static RELEASE: Statement = Statement {
    sql: "DELETE FROM lease_sched.locks WHERE name = $1 AND lock_token = $2",
    arg_types: &[TEXTOID, UUIDOID],
};

pub struct LockInfo {
    pub holder: String,
    pub fencing_token: i64,
    pub acquired_at: TimestampWithTimeZone,
    pub heartbeat_at: TimestampWithTimeZone,
    pub expires_at: TimestampWithTimeZone,
    pub expired: bool,
}

pub static INFO: Query<LockInfo> = Query {
    statement: Statement {
        sql: "SELECT holder, fencing_token, acquired_at, heartbeat_at, expires_at, expires_at <= $2
                FROM lease_sched.locks WHERE name = $1",
        arg_types: &[TEXTOID, TIMESTAMPTZOID],
    },
    row: |r| {
        Some(LockInfo {
            holder: r.get(1).ok()??,
            fencing_token: r.get(2).ok()??,
            acquired_at: r.get(3).ok()??,
            heartbeat_at: r.get(4).ok()??,
            expires_at: r.get(5).ok()??,
            expired: r.get(6).ok()??,
        })
    },
};

/// The row `lock_fence` checks: read FOR KEY SHARE, so the check holds until the caller's
/// transaction ends (src/lock/fence.rs).
pub struct FenceRow {
    pub fencing_token: i64,
    pub lock_token: Uuid,
}

pub static FENCE_ROW: Query<FenceRow> = Query {
    statement: Statement {
        sql: "SELECT fencing_token, lock_token FROM lease_sched.locks WHERE name = $1 FOR KEY SHARE",
        arg_types: &[TEXTOID],
    },
    row: |r| Some(FenceRow { fencing_token: r.get(1).ok()??, lock_token: r.get(2).ok()?? }),
};
