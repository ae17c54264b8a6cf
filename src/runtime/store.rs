//! Every SQL statement on `lease_sched.runtimes`, each statement that returns rows beside
//! the decoder of its row (`Query`), and `probe`, the touch's read of a row's status
//! through the primary key without SQL (src/lookup.rs). TOUCH_NOW and TOUCH_BATCH run with the caller's search_path
//! (runtime_touch pins none), so they name every function and operator with its schema
//! (see src/lease/store.rs). `last_seen_at` is in no index, so
//! touches and flushes are HOT updates; online rows are found through a partial index.
use pgrx::pg_sys::{JSONBOID, TEXTOID, TIMESTAMPTZOID, UUIDARRAYOID, UUIDOID};
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::spi_plans::{Query, Statement};

/// What `probe` read of a runtime's row.
pub struct Probed {
    /// Its status is `online`.
    pub online: bool,
    /// The version read is settled (`lookup::by_unique_key_settled`): a touch may mark the
    /// runtime known online only then.
    pub settled: bool,
}

/// The runtime's row read through the primary key without locking it and without SPI:
/// what a statement starting now would see. None for an unknown id. The one read of this
/// table that is not a statement: it keeps a buffered touch free of SQL.
pub fn probe(id: Uuid) -> Option<Probed> {
    use crate::lookup::{by_unique_key_settled, value, Key};
    by_unique_key_settled(
        c"runtimes",
        c"runtimes_pkey",
        &[Key { eq_proc: pgrx::pg_sys::F_UUID_EQ, value: id.into_datum().expect("a uuid is never NULL") }],
        &[c"status"],
        // SAFETY: status is a text column.
        |values, settled| Probed {
            online: unsafe { value::<String>(values[0]) }.as_deref() == Some("online"),
            settled,
        },
    )
}

/// Returns the new runtime's id.
pub static REGISTER: Query<Uuid> = Query {
    statement: Statement {
        sql: "INSERT INTO lease_sched.runtimes (name, status, last_seen_at, registered_at, metadata)
              VALUES ($1, 'online', $2, $2, $3) RETURNING id",
        arg_types: &[TEXTOID, TIMESTAMPTZOID, JSONBOID],
    },
    row: |r| r.get(1).ok()?,
};

/// The synchronous path: online now, seen now.
pub static TOUCH_NOW: Statement = Statement {
    sql: "UPDATE lease_sched.runtimes SET status = 'online', last_seen_at = greatest(last_seen_at, $2)
           WHERE id OPERATOR(pg_catalog.=) $1",
    arg_types: &[UUIDOID, TIMESTAMPTZOID],
};

/// The direct path for a row read online: names no status, so the table's trigger on
/// status (runtimes_left_online) does not fire. Touches nothing (0 rows) when the row
/// left online since; the caller then takes TOUCH_NOW.
pub static TOUCH_ONLINE: Statement = Statement {
    sql: "UPDATE lease_sched.runtimes SET last_seen_at = greatest(last_seen_at, $2)
           WHERE id OPERATOR(pg_catalog.=) $1 AND status OPERATOR(pg_catalog.=) 'online'",
    arg_types: &[UUIDOID, TIMESTAMPTZOID],
};

/// One set-based bump of the online rows among $1; returns the ids it did not touch.
pub static TOUCH_BATCH: Query<Vec<Uuid>> = Query {
    row: |r| r.get(1).ok()?,
    statement: Statement {
        sql: "WITH touched AS (
              UPDATE lease_sched.runtimes SET last_seen_at = greatest(last_seen_at, $2)
               WHERE id OPERATOR(pg_catalog.=) ANY($1) AND status OPERATOR(pg_catalog.=) 'online'
              RETURNING id)
          SELECT coalesce(pg_catalog.array_agg(DISTINCT u.id), '{}')
            FROM pg_catalog.unnest($1) AS u(id)
           WHERE NOT EXISTS (SELECT 1 FROM touched t WHERE t.id OPERATOR(pg_catalog.=) u.id)",
        arg_types: &[UUIDARRAYOID, TIMESTAMPTZOID],
    },
};

/// Write buffered touches: each row gets its own latest touch time, online rows only (a
/// row raced to offline stays offline until its next live touch). Skips rows already
/// newer, so a flush never moves last_seen_at back and never writes for nothing.
/// SKIP LOCKED: a row someone holds locked (a runner's open transaction, a prepared
/// transaction) is left alone and never waited for; the statement returns how many rows it
/// wrote and the ids it skipped for a lock, whose touches stay buffered for the next flush.
pub struct Flushed {
    pub written: i64,
    pub skipped_for_lock: Vec<Uuid>,
}

pub static FLUSH: Query<Flushed> = Query {
    row: |r| Some(Flushed { written: r.get(1).ok()??, skipped_for_lock: r.get(2).ok()?.unwrap_or_default() }),
    statement: Statement {
        sql: "WITH pending AS (
              SELECT * FROM unnest($1::uuid[], $2::timestamptz[]) AS p(id, seen)),
          ready AS (
              SELECT r.id, p.seen FROM lease_sched.runtimes r JOIN pending p ON p.id = r.id
               WHERE r.status = 'online' AND r.last_seen_at < p.seen
                 FOR UPDATE OF r SKIP LOCKED),
          written AS (
              UPDATE lease_sched.runtimes r SET last_seen_at = ready.seen
                FROM ready WHERE r.id = ready.id
              RETURNING r.id)
          SELECT (SELECT count(*) FROM written),
                 ARRAY(SELECT p.id FROM pending p
                        WHERE NOT EXISTS (SELECT 1 FROM written w WHERE w.id = p.id)
                          AND EXISTS (SELECT 1 FROM lease_sched.runtimes r
                                       WHERE r.id = p.id AND r.status = 'online' AND r.last_seen_at < p.seen))",
        arg_types: &[UUIDARRAYOID, pgrx::pg_sys::TIMESTAMPTZARRAYOID],
    },
};

/// Online runtimes silent since before $1.
pub static SILENT: Query<Uuid> = Query {
    statement: Statement {
        sql: "SELECT id FROM lease_sched.runtimes WHERE status = 'online' AND last_seen_at < $1",
        arg_types: &[TIMESTAMPTZOID],
    },
    row: |r| r.get(1).ok()?,
};

/// Mark these silent runtimes offline, re-checking silence on the newest row version;
/// a row locked by someone (a touch in flight) is left for the next sweep.
pub static MARK_OFFLINE: Statement = Statement {
    sql: "UPDATE lease_sched.runtimes SET status = 'offline'
           WHERE id IN (SELECT id FROM lease_sched.runtimes
                         WHERE id = ANY($1) AND status = 'online' AND last_seen_at < $2
                         FOR UPDATE SKIP LOCKED)",
    arg_types: &[UUIDARRAYOID, TIMESTAMPTZOID],
};
