//! Every SQL statement on `lease_sched.runtimes`. `last_seen_at` is in no index, so
//! touches and flushes are HOT updates; online rows are found through a partial index.
use pgrx::pg_sys::{JSONBOID, TEXTOID, TIMESTAMPTZOID, UUIDARRAYOID, UUIDOID};

use crate::spi_plans::Statement;

pub static REGISTER: Statement = Statement {
    sql: "INSERT INTO lease_sched.runtimes (name, status, last_seen_at, registered_at, metadata)
          VALUES ($1, 'online', $2, $2, $3) RETURNING id",
    arg_types: &[TEXTOID, TIMESTAMPTZOID, JSONBOID],
};

pub static STATUS: Statement = Statement {
    sql: "SELECT status FROM lease_sched.runtimes WHERE id = $1",
    arg_types: &[UUIDOID],
};

/// The synchronous path: online now, seen now.
pub static TOUCH_NOW: Statement = Statement {
    sql: "UPDATE lease_sched.runtimes SET status = 'online', last_seen_at = greatest(last_seen_at, $2) WHERE id = $1",
    arg_types: &[UUIDOID, TIMESTAMPTZOID],
};

/// One set-based bump of the online rows among $1; returns the ids it did not touch.
pub static TOUCH_BATCH: Statement = Statement {
    sql: "WITH touched AS (
              UPDATE lease_sched.runtimes SET last_seen_at = greatest(last_seen_at, $2)
               WHERE id = ANY($1) AND status = 'online'
              RETURNING id)
          SELECT coalesce(array_agg(DISTINCT u.id), '{}')
            FROM unnest($1) AS u(id)
           WHERE NOT EXISTS (SELECT 1 FROM touched t WHERE t.id = u.id)",
    arg_types: &[UUIDARRAYOID, TIMESTAMPTZOID],
};

/// Write buffered touches: each row gets its own latest touch time, online rows only (a
/// row raced to offline stays offline until its next live touch). Skips rows already
/// newer, so a flush never moves last_seen_at back and never writes for nothing.
pub static FLUSH: Statement = Statement {
    sql: "UPDATE lease_sched.runtimes r SET last_seen_at = u.seen
            FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, seen)
           WHERE r.id = u.id AND r.status = 'online' AND r.last_seen_at < u.seen",
    arg_types: &[UUIDARRAYOID, pgrx::pg_sys::TIMESTAMPTZARRAYOID],
};

/// Online runtimes silent since before $1.
pub static SILENT: Statement = Statement {
    sql: "SELECT id FROM lease_sched.runtimes WHERE status = 'online' AND last_seen_at < $1",
    arg_types: &[TIMESTAMPTZOID],
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

