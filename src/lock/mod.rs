//! Named single-holder locks with a TTL (seed 001), decided on the database clock.
//! Every acquisition takes a token from the same sequence as leases, so a takeover
//! always carries a higher fencing token than any holder before it.
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use crate::lease::{db_clock, timestamptz};
use crate::spi_plans::{execute, Statement};
use pgrx::pg_sys::{INT8OID, INTERVALOID, TEXTOID, TIMESTAMPTZOID};

/// Insert a free lock, or take over an expired one. The token of a takeover is drawn in
/// the UPDATE, after the row is locked, so it is higher than every token issued before.
static ACQUIRE: Statement = Statement {
    sql: "INSERT INTO lease_sched.locks AS l (name, holder, fencing_token, acquired_at, heartbeat_at, expires_at, ttl)
          VALUES ($1, $2, nextval('lease_sched.fencing_token_seq'), $3, $3, $3 + $4, $4)
          ON CONFLICT (name) DO UPDATE
             SET holder = excluded.holder, fencing_token = nextval('lease_sched.fencing_token_seq'),
                 acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at,
                 expires_at = excluded.expires_at, ttl = excluded.ttl
           WHERE l.expires_at <= $3
          RETURNING fencing_token",
    arg_types: &[TEXTOID, TEXTOID, TIMESTAMPTZOID, INTERVALOID],
};

static HEARTBEAT: Statement = Statement {
    sql: "UPDATE lease_sched.locks SET heartbeat_at = $3, expires_at = $3 + ttl
           WHERE name = $1 AND fencing_token = $2",
    arg_types: &[TEXTOID, INT8OID, TIMESTAMPTZOID],
};

static RELEASE: Statement = Statement {
    sql: "DELETE FROM lease_sched.locks WHERE name = $1 AND fencing_token = $2",
    arg_types: &[TEXTOID, INT8OID],
};

static INFO: Statement = Statement {
    sql: "SELECT holder, fencing_token, acquired_at, heartbeat_at, expires_at, expires_at <= $2
            FROM lease_sched.locks WHERE name = $1",
    arg_types: &[TEXTOID, TIMESTAMPTZOID],
};

pub fn acquire(name: &str, holder: &str, ttl: Interval) -> Option<i64> {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| {
        let t = execute(client, &ACQUIRE, &[name.into(), holder.into(), now.into(), ttl.into()]);
        if t.is_empty() {
            None
        } else {
            t.first().get::<i64>(1).unwrap()
        }
    })
}

pub fn heartbeat(name: &str, token: i64) -> bool {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| execute(client, &HEARTBEAT, &[name.into(), token.into(), now.into()]).len() == 1)
}

pub fn release(name: &str, token: i64) -> bool {
    Spi::connect_mut(|client| execute(client, &RELEASE, &[name.into(), token.into()]).len() == 1)
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
