//! The lease subsystem's SQL on `lease_sched.sys_cron_executions`: claim, heartbeat,
//! finish, the lease fence's row read and the sweep's two passes, each statement that
//! returns rows beside the decoder of its row (`Query`), and `probe`, the one read that is
//! not a statement. The planner's statements on the same table (the latest plan, skipped
//! slots) are in src/planner/store.rs: the planner is its own subsystem and reads no
//! lease code; sql/*.sql holds the views and PL/pgSQL functions that read it.
//!
//! The statements of the API's calls (claim, heartbeat, finish) run with the caller's
//! search_path: those functions do not pin one (a `SET` clause saves and restores a
//! setting on every call, about 13,000 instructions). So every function, operator and type they
//! name is schema-qualified (`OPERATOR(pg_catalog.=)`, `pg_catalog.nextval`): nothing a
//! role puts on a search_path can stand in for them (tests/integration/tests/search_path.rs).
//! Keywords (`coalesce`, `greatest`, `bigint`) are not looked up, and the grammar turns
//! `extract(... FROM ...)` into `pg_catalog.extract` by itself.
//!
//! Times come in as parameters read once per call from the database clock, so one call
//! decides on one instant. The WHERE clause of `STEAL` is `lease_model::may_steal` in SQL:
//! the UPDATE re-checks it on the newest row version under the row lock, which is what
//! makes concurrent steals of one row produce exactly one winner.
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::{BOOLOID, INT4OID, INT8OID, INTERVALOID, JSONBOID, TEXTOID, TIMESTAMPTZOID, UUIDOID};
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use pgrx::Uuid;

use crate::spi_plans::{Query, Statement};
use lease_model::{LeaseRow, Status};

/// The row a claim is about, as `probe` reads it.
pub struct ExistingRow {
    pub id: Uuid,
    pub lease: LeaseRow,
}

/// (job_name, scope_kind, scope_id, plan_time): the unique key of an execution.
pub struct ExecutionKey<'a> {
    pub job_name: &'a str,
    pub scope_kind: &'a str,
    pub scope_id: &'a str,
    pub plan_time: TimestampWithTimeZone,
}

/// The row with this key, read through the unique index without locking it and without
/// SPI (src/lookup.rs): what a statement starting now would see. The one read of this
/// table that is not a statement: a claim's probe is its hottest step.
pub fn probe(key: &ExecutionKey<'_>) -> Option<ExistingRow> {
    use crate::lookup::{by_unique_key, value, Key};
    use pgrx::pg_sys::{F_TEXTEQ, F_TIMESTAMPTZ_EQ};
    let column = |eq_proc, datum: Option<pgrx::pg_sys::Datum>| Key { eq_proc, value: datum.expect("a non-NULL key") };
    by_unique_key(
        c"sys_cron_executions",
        c"uq_sys_cron_execution",
        &[
            column(F_TEXTEQ, key.job_name.into_datum()),
            column(F_TEXTEQ, key.scope_kind.into_datum()),
            column(F_TEXTEQ, key.scope_id.into_datum()),
            column(F_TIMESTAMPTZ_EQ, key.plan_time.into_datum()),
        ],
        &[c"id", c"status", c"attempt", c"max_attempts", c"stale_after", c"next_retry_at", c"allow_stale_reentry"],
        // SAFETY: each column is read as its SQL type (uuid, text, int, int, timestamptz,
        // timestamptz, boolean), copied out while the row is pinned.
        |v| unsafe {
            let ts = |d| value::<TimestampWithTimeZone>(d).map(|t| t.into_inner());
            let status: String = value(v[1]).expect("status is NOT NULL");
            ExistingRow {
                id: value(v[0]).expect("id is NOT NULL"),
                lease: LeaseRow {
                    status: Status::from_sql(&status).expect("the API writes only known statuses"),
                    attempt: value(v[2]).expect("attempt is NOT NULL"),
                    max_attempts: value(v[3]).expect("max_attempts is NOT NULL"),
                    stale_after: ts(v[4]),
                    next_retry_at: ts(v[5]),
                    allow_stale_reentry: value(v[6]).expect("allow_stale_reentry is NOT NULL"),
                },
            }
        },
    )
}

/// A lease granted by INSERT or STEAL: their RETURNING lists.
pub struct Granted {
    pub execution_id: Uuid,
    pub lease_token: Uuid,
    pub attempt: i32,
    pub fencing_token: i64,
    pub stale_after: TimestampWithTimeZone,
    /// STEAL only: a live (if silent) holder was deposed.
    pub deposed: bool,
    /// The token must be drawn again, above this value (`redraw`): the one drawn could be
    /// out of order. INSERT: 0 when another session drew a token after this one (drawn in
    /// VALUES, before the INSERT waited on a concurrent insert of the same key), or when
    /// that wait outlasted the lease. STEAL: the row's previous token, when the one drawn
    /// is not above it (a row restored from a database whose sequence was further on).
    pub redraw_above: Option<i64>,
}

fn granted(r: &SpiHeapTupleData<'_>) -> Option<Granted> {
    Some(Granted {
        execution_id: r.get(1).ok()??,
        lease_token: r.get(2).ok()??,
        attempt: r.get(3).ok()??,
        fencing_token: r.get(4).ok()??,
        stale_after: r.get(5).ok()??,
        deposed: r.get::<bool>(6).ok().flatten().unwrap_or(false),
        redraw_above: r.get::<i64>(7).ok().flatten(),
    })
}

/// Outcome `won`: a fresh row at attempt 1. Returns no row when another session inserted
/// the same key first (it waits for that session to commit or abort). The token is drawn
/// in VALUES, before that wait; the RETURNING list, evaluated after it, reads the sequence
/// again (an init-plan, run at its first use): when another session drew meanwhile, a claim
/// that returned before this one may hold a higher token, and `redraw_above` asks for a new
/// one (src/lease/mod.rs), so tokens keep real-time order (docs/reliability.md, G3).
pub static INSERT: Query<Granted> = Query { row: granted, statement: Statement {
    sql: "INSERT INTO lease_sched.sys_cron_executions AS e (
              job_name, scope_kind, scope_id, plan_time, status, attempt, max_attempts,
              runner_id, lease_token, fencing_token, allow_stale_reentry, stale_timeout,
              heartbeat_at, stale_after, started_at, updated_at)
          VALUES ($1, $2, $3, $4, 'RUNNING', 1, $5,
              $6, pg_catalog.gen_random_uuid(), pg_catalog.nextval('lease_sched.fencing_token_seq'), $7, $8,
              $9, $9 OPERATOR(pg_catalog.+) $8, $9, $9)
          ON CONFLICT (job_name, scope_kind, scope_id, plan_time) DO NOTHING
          RETURNING id, lease_token, attempt, fencing_token, stale_after, false,
                    CASE WHEN (SELECT last_value FROM lease_sched.fencing_token_seq) OPERATOR(pg_catalog.<>) e.fencing_token
                           OR (SELECT pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.>=) e.stale_after
                         THEN 0::bigint END",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID, BOOLOID, INTERVALOID, TIMESTAMPTZOID],
}};

/// Outcome `stole`: the same row, a new holder, token and attempt. The row is first locked
/// FOR UPDATE (re-checking `lease_model::may_steal` on its newest version), which waits for every
/// transaction that passed `lease_fence` on it (they hold it FOR KEY SHARE) to end: a steal
/// never completes between a holder's fence and its commit. The new token is drawn after
/// that wait, and so is the new lease's clock: the decision is taken at the call's instant
/// ($5), but a lease granted after waiting for a fenced transaction must not start already
/// stale. `(SELECT clock_timestamp())` is an init-plan, read once, at its first use in the
/// SET list, which PostgreSQL evaluates only for the row it has locked. `was_running` says
/// whether a live holder was deposed (NOTIFY lease_sched_lost).
pub static STEAL: Query<Granted> = Query { row: granted, statement: Statement {
    sql: "WITH held AS (
              SELECT id, status OPERATOR(pg_catalog.=) 'RUNNING' AS was_running, fencing_token AS previous_token
                FROM lease_sched.sys_cron_executions
               WHERE id OPERATOR(pg_catalog.=) $1
                 AND attempt OPERATOR(pg_catalog.<) max_attempts
                 AND ((status OPERATOR(pg_catalog.=) 'FAILED' AND coalesce(next_retry_at, $5) OPERATOR(pg_catalog.<=) $5)
                   OR (status OPERATOR(pg_catalog.=) 'RUNNING' AND stale_after OPERATOR(pg_catalog.<) $5
                       AND $3 AND allow_stale_reentry))
                 FOR UPDATE)
          UPDATE lease_sched.sys_cron_executions e
             SET status = 'RUNNING', attempt = e.attempt OPERATOR(pg_catalog.+) 1, runner_id = $2,
                 lease_token = pg_catalog.gen_random_uuid(),
                 fencing_token = pg_catalog.nextval('lease_sched.fencing_token_seq'),
                 allow_stale_reentry = $3, stale_timeout = $4,
                 heartbeat_at = (SELECT pg_catalog.clock_timestamp()),
                 stale_after = (SELECT pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.+) $4,
                 started_at = (SELECT pg_catalog.clock_timestamp()),
                 finished_at = NULL, duration_ms = NULL, next_retry_at = NULL, error_code = NULL,
                 error_msg = NULL, rows_affected = NULL, result = NULL,
                 updated_at = (SELECT pg_catalog.clock_timestamp())
            FROM held
           WHERE e.id OPERATOR(pg_catalog.=) held.id
          RETURNING e.id, e.lease_token, e.attempt, e.fencing_token, e.stale_after, held.was_running,
                    CASE WHEN e.fencing_token OPERATOR(pg_catalog.<=) held.previous_token THEN held.previous_token END",
    arg_types: &[UUIDOID, TEXTOID, BOOLOID, INTERVALOID, TIMESTAMPTZOID],
}};

/// A new token for a lease this transaction has just granted (INSERT or STEAL asked for
/// it: `redraw_above`), and the lease's clock read again: the grant happens now.
pub static REDRAW: Query<Granted> = Query {
    row: granted,
    statement: Statement {
        sql: "UPDATE lease_sched.sys_cron_executions
             SET fencing_token = pg_catalog.nextval('lease_sched.fencing_token_seq'),
                 heartbeat_at = (SELECT pg_catalog.clock_timestamp()),
                 stale_after = (SELECT pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.+) stale_timeout,
                 started_at = (SELECT pg_catalog.clock_timestamp()),
                 updated_at = (SELECT pg_catalog.clock_timestamp())
           WHERE id OPERATOR(pg_catalog.=) $1
          RETURNING id, lease_token, attempt, fencing_token, stale_after",
        arg_types: &[UUIDOID],
    },
};

/// Only the columns no index covers change, so this is a HOT update.
pub static HEARTBEAT: Statement = Statement {
    sql: "UPDATE lease_sched.sys_cron_executions
             SET heartbeat_at = $3, stale_after = $3 OPERATOR(pg_catalog.+) stale_timeout, updated_at = $3
           WHERE id OPERATOR(pg_catalog.=) $1 AND lease_token OPERATOR(pg_catalog.=) $2
             AND status OPERATOR(pg_catalog.=) 'RUNNING'",
    arg_types: &[UUIDOID, UUIDOID, TIMESTAMPTZOID],
};

/// The terminal write. A FAILED run with attempts left gets `next_retry_at`: `retry_in`
/// ($9) when given, else `lease_sched.retry_backoff` (the model's `retry_backoff`, which
/// saturates at max for any attempt: it never overflows).
pub static FINISH: Statement = Statement {
    sql: "UPDATE lease_sched.sys_cron_executions
             SET status = $3, finished_at = $4,
                 duration_ms = greatest(0, (extract(epoch FROM $4 OPERATOR(pg_catalog.-) started_at)
                                            OPERATOR(pg_catalog.*) 1000)::bigint),
                 result = $5, rows_affected = $6, error_code = $7, error_msg = $8,
                 next_retry_at = CASE WHEN $3 OPERATOR(pg_catalog.=) 'FAILED' AND attempt OPERATOR(pg_catalog.<) max_attempts
                     THEN $4 OPERATOR(pg_catalog.+) coalesce($9, lease_sched.retry_backoff(attempt, $10, $11))
                 END,
                 updated_at = $4
           WHERE id OPERATOR(pg_catalog.=) $1 AND lease_token OPERATOR(pg_catalog.=) $2
             AND status OPERATOR(pg_catalog.=) 'RUNNING'",
    arg_types: &[
        UUIDOID, UUIDOID, TEXTOID, TIMESTAMPTZOID, JSONBOID, INT8OID, TEXTOID, TEXTOID, INTERVALOID,
        INTERVALOID, INTERVALOID,
    ],
};

/// The sweep's lease pass: RUNNING leases past `stale_after` that nobody may steal
/// (`lease_model::is_abandoned`) become FAILED, so no row stays RUNNING forever. So does a stale
/// lease that a later plan of its job has superseded: the planner offers only the latest
/// plan, so no scheduler would ever come back to steal it (two schedulers on either side
/// of a bucket boundary can leave one behind). FAILED with attempts left, it can still be
/// claimed explicitly. With attempts
/// left they get the default backoff, like any failure, and a later claim retries them.
/// SKIP LOCKED: a row someone holds locked (a fenced transaction, say) waits for the next
/// sweep instead of stalling this one (the sweep never waits on a runner). Each failed
/// lease's holder is told on channel lease_sched_lost (one row per lease).
pub static FAIL_ABANDONED: Statement = Statement {
    sql: "WITH failed AS (
          UPDATE lease_sched.sys_cron_executions
             SET status = 'FAILED', finished_at = $1,
                 duration_ms = greatest(0, (extract(epoch FROM $1 - started_at) * 1000)::bigint),
                 error_code = 'stale_timeout', error_msg = 'lease expired without heartbeat',
                 next_retry_at = CASE WHEN attempt < max_attempts
                     THEN $1 + lease_sched.retry_backoff(attempt, $2, $3)
                 END,
                 updated_at = $1
           WHERE id IN (SELECT id FROM lease_sched.sys_cron_executions e
                         WHERE status = 'RUNNING' AND stale_after < $1
                           AND (NOT allow_stale_reentry OR attempt >= max_attempts
                                OR EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions later
                                            WHERE later.job_name = e.job_name AND later.scope_kind = e.scope_kind
                                              AND later.scope_id = e.scope_id AND later.plan_time > e.plan_time))
                           FOR UPDATE SKIP LOCKED)
          RETURNING id)
          SELECT pg_notify('lease_sched_lost', id::text) FROM failed",
    arg_types: &[TIMESTAMPTZOID, INTERVALOID, INTERVALOID],
};

/// Retention: one bounded batch of the oldest finished rows, through the finished index.
/// Never a row that may still run (a FAILED run with attempts left waits for its retry),
/// and never the latest plan (at or before now, $3) of its (job, scope): the planner's cursor lives there, and
/// deleting it would let lease_next_plan hand out that plan again. A "run now" plan
/// (job_trigger) is not the cursor, so a later one does not count; and its trigger row goes
/// with its execution row (a trigger without one is a pending "run now").
pub static PRUNE_BATCH: Statement = Statement {
    sql: "WITH pruned AS (
          DELETE FROM lease_sched.sys_cron_executions
           WHERE id IN (SELECT e.id FROM lease_sched.sys_cron_executions e
                         WHERE e.status <> 'RUNNING' AND e.finished_at < $1
                           AND (e.status = 'SUCCESS' OR e.attempt >= e.max_attempts)
                           AND EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions later
                                        WHERE later.job_name = e.job_name AND later.scope_kind = e.scope_kind
                                          AND later.scope_id = e.scope_id AND later.plan_time > e.plan_time
                                          AND later.plan_time <= $3
                                          AND NOT EXISTS (SELECT 1 FROM lease_sched.job_triggers t
                                                           WHERE t.job_name = later.job_name
                                                             AND t.scope_kind = later.scope_kind
                                                             AND t.scope_id = later.scope_id
                                                             AND t.plan_time = later.plan_time))
                         ORDER BY e.finished_at LIMIT $2
                         FOR UPDATE OF e SKIP LOCKED)
          RETURNING job_name, scope_kind, scope_id, plan_time),
          triggers AS (
          DELETE FROM lease_sched.job_triggers t USING pruned p
           WHERE t.job_name = p.job_name AND t.scope_kind = p.scope_kind AND t.scope_id = p.scope_id
             AND t.plan_time = p.plan_time)
          SELECT 1 FROM pruned",
    arg_types: &[TIMESTAMPTZOID, INT4OID, TIMESTAMPTZOID],
};

/// The row `lease_fence` checks: read FOR KEY SHARE, so the check holds until the caller's
/// transaction ends (src/lease/fence.rs).
pub struct FenceRow {
    pub job_name: String,
    pub status: String,
    pub fencing_token: i64,
    pub lease_token: Uuid,
}

pub static FENCE_ROW: Query<FenceRow> = Query {
    statement: Statement {
        sql: "SELECT job_name, status, fencing_token, lease_token FROM lease_sched.sys_cron_executions WHERE id = $1 FOR KEY SHARE",
        arg_types: &[UUIDOID],
    },
    row: |r| {
        Some(FenceRow {
            job_name: r.get(1).ok()??,
            status: r.get(2).ok()??,
            fencing_token: r.get(3).ok()??,
            lease_token: r.get(4).ok()??,
        })
    },
};
