//! Fencing that protects data: fence checks inside the writer's transaction, and fencing
//! tokens that never repeat.
//!
//! **Fences.** `lease_fence` / `lock_fence` read the lease or lock row `FOR KEY SHARE`:
//! the check holds until the caller's transaction ends, because a steal and a takeover
//! lock the row `FOR UPDATE` first, which waits for every KEY SHARE holder. A heartbeat
//! (a non-key UPDATE, lock mode FOR NO KEY UPDATE) does not conflict with KEY SHARE, so a
//! holder's heartbeats on another connection never wait for its own fenced writes; the
//! sweep (FOR UPDATE SKIP LOCKED) skips a fenced row until the fenced transaction ends.
//!
//! **Tokens that never repeat.** Tokens come from one sequence. Before a backend draws its
//! first token on a timeline, it makes sure the sequence was *floored* on that timeline:
//! moved up to at least the database clock in microseconds (`token_floor`). Tokens grow by
//! one per grant from there, so as long as grants average under one per microsecond a token
//! is never above the clock at its grant. Every event that could otherwise repeat tokens
//! starts with a floor: `CREATE EXTENSION` (also after a DROP, and in a restore whose
//! sequence was not carried) leaves `token_floor` at timeline 0, and promoting a replica
//! starts a new timeline; either way the next grant floors the sequence above the clock,
//! hence above every token granted before the event, provided the clock did not go back
//! across it (docs/reliability.md states the assumption).
use std::cell::Cell;

use pgrx::pg_sys::{self, INT8OID, TEXTOID, TIMESTAMPTZOID, UUIDOID};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::Uuid;

use crate::lease::{db_clock, timestamptz};
use crate::spi_plans::{execute, Statement};
use crate::xact::{self, Fence};

static FLOORED_ON: Statement = Statement {
    sql: "SELECT timeline FROM lease_sched.token_floor",
    arg_types: &[],
};

/// Floor the sequence once per timeline. The setval is in RETURNING, evaluated only by the
/// one session whose UPDATE wins the row (others wait, then find the timeline already
/// recorded); `greatest` with the sequence's own value means it never moves back.
static FLOOR: Statement = Statement {
    sql: "UPDATE lease_sched.token_floor SET timeline = $1, floored_at = $2
           WHERE timeline IS DISTINCT FROM $1
          RETURNING pg_catalog.setval('lease_sched.fencing_token_seq',
                        greatest((SELECT last_value FROM lease_sched.fencing_token_seq), $3))",
    arg_types: &[INT8OID, TIMESTAMPTZOID, INT8OID],
};

thread_local! {
    // The timeline this backend has seen floored (0: none yet).
    static FLOORED_TIMELINE: Cell<i64> = const { Cell::new(0) };
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

/// Call before drawing a fencing token. Costs a comparison, except for the first grant of
/// a backend on a timeline (one SELECT) and the first grant anywhere after an event (the
/// floor itself).
pub fn ensure_token_floor(client: &mut SpiClient<'_>) {
    let Some(timeline) = current_timeline() else { return };
    if FLOORED_TIMELINE.get() == timeline {
        return;
    }
    let recorded: Option<i64> = execute(client, &FLOORED_ON, &[]).first().get(1).ok().flatten();
    if recorded != Some(timeline) {
        let now = db_clock();
        execute(client, &FLOOR, &[timeline.into(), timestamptz(now).into(), now.into()]);
    }
    FLOORED_TIMELINE.set(timeline);
}

static LEASE_ROW: Statement = Statement {
    sql: "SELECT job_name, status, fencing_token FROM lease_sched.sys_cron_executions WHERE id = $1 FOR KEY SHARE",
    arg_types: &[UUIDOID],
};

static LOCK_ROW: Statement = Statement {
    sql: "SELECT fencing_token FROM lease_sched.locks WHERE name = $1 FOR KEY SHARE",
    arg_types: &[TEXTOID],
};

/// `lease_fence`'s check: None when `fencing_token` holds the RUNNING lease (the row stays
/// locked until this transaction ends), else why not. The SQL wrapper raises LS001 with it:
/// a custom SQLSTATE cannot travel through Rust's error type, so PL/pgSQL raises it.
pub fn lease_fence(execution_id: Uuid, fencing_token: i64) -> Option<String> {
    let row = Spi::connect_mut(|client| {
        let t = execute(client, &LEASE_ROW, &[execution_id.into()]);
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        Some((r.get::<String>(1).unwrap()?, r.get::<String>(2).unwrap()?, r.get::<i64>(3).unwrap()?))
    });
    match row {
        Some((job_name, status, token)) if status == "RUNNING" && token == fencing_token => {
            xact::fence_passed(Fence::Lease { job_name });
            None
        }
        Some((job_name, status, token)) if token != fencing_token => Some(format!(
            "lease_sched: fenced out: the lease {execution_id} of job \"{job_name}\" is now held with fencing token {token}, not {fencing_token} (status {status})"
        )),
        Some((job_name, status, _)) => {
            Some(format!("lease_sched: fenced out: the lease {execution_id} of job \"{job_name}\" has ended ({status})"))
        }
        None => Some(format!("lease_sched: fenced out: there is no lease {execution_id}")),
    }
}

/// `lock_fence`'s check: None when `fencing_token` holds the lock (the row stays locked
/// until this transaction ends), else why not.
pub fn lock_fence(lock_name: &str, fencing_token: i64) -> Option<String> {
    let token: Option<i64> = Spi::connect_mut(|client| {
        let t = execute(client, &LOCK_ROW, &[lock_name.into()]);
        if t.is_empty() {
            None
        } else {
            t.first().get(1).unwrap()
        }
    });
    match token {
        Some(token) if token == fencing_token => {
            xact::fence_passed(Fence::Lock { name: lock_name.to_string() });
            None
        }
        Some(token) => Some(format!(
            "lease_sched: fenced out: the lock \"{lock_name}\" is now held with fencing token {token}, not {fencing_token}"
        )),
        None => Some(format!("lease_sched: fenced out: the lock \"{lock_name}\" is not held (fencing token {fencing_token} no longer holds it)")),
    }
}
