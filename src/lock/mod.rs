//! Named single-holder locks with a TTL (leader election), decided on the database clock.
//!
//! A holder proves itself with its secret `lock_token` (random, returned only by the grant);
//! the fencing token is public. Every grant draws its fencing token from the same sequence
//! as leases, and draws it only once the row is ours, with no wait left before the call
//! returns: a token is therefore higher than every token returned before it (a token
//! drawn before a wait could be handed out after a higher one; see `acquire`).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::clock::{db_clock, timestamptz};
use crate::spi_plans::{execute, Statement};
use pgrx::pg_sys::{INTERVALOID, TEXTOID, TIMESTAMPTZOID, UUIDOID};

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
static TAKE_OVER: Statement = Statement {
    sql: "WITH held AS (
              SELECT name FROM lease_sched.locks WHERE name = $1 AND expires_at <= $3 FOR UPDATE)
          UPDATE lease_sched.locks l
             SET holder = $2, fencing_token = nextval('lease_sched.fencing_token_seq'),
                 lock_token = gen_random_uuid(), acquired_at = (SELECT clock_timestamp()),
                 heartbeat_at = (SELECT clock_timestamp()), expires_at = (SELECT clock_timestamp()) + $4, ttl = $4
            FROM held
           WHERE l.name = held.name
          RETURNING l.lock_token, l.fencing_token, l.holder, l.expires_at",
    arg_types: &[TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID],
};

/// Insert a free lock with no token yet (0). The VALUES list is computed before the
/// INSERT waits on a concurrent inserter of the same name, so a token drawn there could
/// predate grants that session makes and commits meanwhile: `GRANT_TOKEN` draws it after.
static INSERT_FREE: Statement = Statement {
    sql: "INSERT INTO lease_sched.locks (name, holder, fencing_token, acquired_at, heartbeat_at, expires_at, ttl, lock_token)
          VALUES ($1, $2, 0, $3, $3, $3 + $4, $4, gen_random_uuid())
          ON CONFLICT (name) DO NOTHING
          RETURNING name",
    arg_types: &[TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID],
};

/// The row was inserted by this transaction just now: no wait is possible here. The times
/// are read again too: the INSERT may have waited for a concurrent inserter.
static GRANT_TOKEN: Statement = Statement {
    sql: "UPDATE lease_sched.locks SET fencing_token = nextval('lease_sched.fencing_token_seq'),
                 acquired_at = (SELECT clock_timestamp()), heartbeat_at = (SELECT clock_timestamp()),
                 expires_at = (SELECT clock_timestamp()) + ttl
           WHERE name = $1
          RETURNING lock_token, fencing_token, holder, expires_at",
    arg_types: &[TEXTOID],
};

static HOLDER: Statement = Statement {
    sql: "SELECT holder, expires_at FROM lease_sched.locks WHERE name = $1",
    arg_types: &[TEXTOID],
};

static HEARTBEAT: Statement = Statement {
    sql: "UPDATE lease_sched.locks SET heartbeat_at = $3, expires_at = $3 + ttl
           WHERE name = $1 AND lock_token = $2",
    arg_types: &[TEXTOID, UUIDOID, TIMESTAMPTZOID],
};

static RELEASE: Statement = Statement {
    sql: "DELETE FROM lease_sched.locks WHERE name = $1 AND lock_token = $2",
    arg_types: &[TEXTOID, UUIDOID],
};

static INFO: Statement = Statement {
    sql: "SELECT holder, fencing_token, acquired_at, heartbeat_at, expires_at, expires_at <= $2
            FROM lease_sched.locks WHERE name = $1",
    arg_types: &[TEXTOID, TIMESTAMPTZOID],
};

/// The one row lock_acquire returns.
pub struct Acquired {
    pub acquired: bool,
    pub lock_token: Option<Uuid>,
    pub fencing_token: Option<i64>,
    pub holder: Option<String>,
    pub expires_at: Option<TimestampWithTimeZone>,
}

fn granted(client: &mut SpiClient<'_>, statement: &'static Statement, args: &[pgrx::datum::DatumWithOid<'_>]) -> Option<Acquired> {
    let t = execute(client, statement, args);
    if t.is_empty() {
        return None;
    }
    let r = t.first();
    Some(Acquired {
        acquired: true,
        lock_token: r.get(1).unwrap(),
        fencing_token: r.get(2).unwrap(),
        holder: r.get(3).unwrap(),
        expires_at: r.get(4).unwrap(),
    })
}

/// Take the lock if it is free, released or expired; else describe the live holder.
/// Two rounds: a lost insert race means a row appeared, which the next round reads.
pub fn acquire(name: &str, holder: &str, ttl: Interval) -> Acquired {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| {
        crate::fencing::ensure_token_floor(client);
        for _ in 0..2 {
            let args = [name.into(), holder.into(), now.into(), ttl.into()];
            if let Some(got) = granted(client, &TAKE_OVER, &args) {
                // The expired holder never released: tell it (delivered at commit).
                crate::lease::notify_lost(client, format!("lock:{name}"));
                return got;
            }
            if !execute(client, &INSERT_FREE, &args).is_empty() {
                return granted(client, &GRANT_TOKEN, &[name.into()]).expect("the row this call inserted");
            }
            let t = execute(client, &HOLDER, &[name.into()]);
            if !t.is_empty() {
                let r = t.first();
                let expires_at: Option<TimestampWithTimeZone> = r.get(2).unwrap();
                // Expired between our two statements: the next round takes it over.
                if expires_at.is_some_and(|e| e > now) {
                    return Acquired {
                        acquired: false,
                        lock_token: None,
                        fencing_token: None,
                        holder: r.get(1).unwrap(),
                        expires_at,
                    };
                }
            }
        }
        Acquired { acquired: false, lock_token: None, fencing_token: None, holder: None, expires_at: None }
    })
}

/// Extend the lock held by `lock_token`. Like a lease's heartbeat, this also revives an
/// expired lock nobody has taken over yet: the token is lost only to a takeover.
pub fn heartbeat(name: &str, lock_token: Uuid) -> bool {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| execute(client, &HEARTBEAT, &[name.into(), lock_token.into(), now.into()]).len() == 1)
}

pub fn release(name: &str, lock_token: Uuid) -> bool {
    Spi::connect_mut(|client| execute(client, &RELEASE, &[name.into(), lock_token.into()]).len() == 1)
}

pub struct LockInfo {
    pub holder: String,
    pub fencing_token: i64,
    pub acquired_at: TimestampWithTimeZone,
    pub heartbeat_at: TimestampWithTimeZone,
    pub expires_at: TimestampWithTimeZone,
    pub expired: bool,
}

pub fn info(name: &str) -> Option<LockInfo> {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| {
        let t = execute(client, &INFO, &[name.into(), now.into()]);
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        Some(LockInfo {
            holder: r.get(1).unwrap()?,
            fencing_token: r.get(2).unwrap()?,
            acquired_at: r.get(3).unwrap()?,
            heartbeat_at: r.get(4).unwrap()?,
            expires_at: r.get(5).unwrap()?,
            expired: r.get(6).unwrap()?,
        })
    })
}
