//! Job definitions (`lease_sched.jobs`): what a job is, said once, read by the
//! planner (`lease_next_plan`) and by `run()`. Arguments arrive validated (`api::jobs`).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::{INT4OID, INTERVALOID, TEXTOID, TIMESTAMPTZOID};
use pgrx::prelude::*;

use crate::clock::{db_clock, timestamptz};
use crate::spi_plans::{execute, Query, Statement};
use lease_model::planner::Misfire;

pub struct Definition {
    /// None for a job defined with cron.
    pub every: Option<Interval>,
    pub misfire: Misfire,
    pub grace: Option<Interval>,
    pub max_attempts: i32,
    pub stale_timeout: Interval,
    pub paused: bool,
    pub resumed_at: Option<TimestampWithTimeZone>,
    /// The cron expression of a calendar job (sql/calendar.sql evaluates it).
    pub cron: Option<String>,
    pub timezone: String,
    /// The oldest job_trigger plan still to run (not while paused).
    pub pending_trigger: Option<TimestampWithTimeZone>,
}

pub struct JobKey<'a> {
    pub job_name: &'a str,
    pub scope_kind: &'a str,
    pub scope_id: &'a str,
}

/// Create or replace: every setting is the caller's (defaults included); the paused state,
/// `paused_at`, `resumed_at` and `created_at` are kept. Returns whether the row is new.
/// A cron expression is parsed here, once (lease_sched.cron_parse raises 22023 naming
/// `cron` and the position of the error), and the time zone checked against the server's
/// tz database; the row keeps the parsed form for the planner.
static DEFINE: Statement = Statement {
    sql: "INSERT INTO lease_sched.jobs AS j (job_name, scope_kind, scope_id, every, misfire, grace, max_attempts,
                                             stale_timeout, paused, created_at, updated_at, cron, timezone, cron_spec)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, $9, $9, $10, lease_sched.cron_check_timezone($11, 'timezone'),
                  CASE WHEN $10 IS NOT NULL THEN lease_sched.cron_parse($10, 'cron') END)
          ON CONFLICT (job_name, scope_kind, scope_id) DO UPDATE
             SET every = excluded.every, misfire = excluded.misfire, grace = excluded.grace,
                 max_attempts = excluded.max_attempts, stale_timeout = excluded.stale_timeout,
                 updated_at = excluded.updated_at, cron = excluded.cron, timezone = excluded.timezone,
                 cron_spec = excluded.cron_spec
          RETURNING j.xmax = 0",
    arg_types: &[
        TEXTOID,
        TEXTOID,
        TEXTOID,
        INTERVALOID,
        TEXTOID,
        INTERVALOID,
        INT4OID,
        INTERVALOID,
        TIMESTAMPTZOID,
        TEXTOID,
        TEXTOID,
    ],
};

/// Pausing a paused job changes nothing (its `paused_at` stays).
static PAUSE: Statement = Statement {
    sql: "UPDATE lease_sched.jobs
             SET paused = true, paused_at = CASE WHEN paused THEN paused_at ELSE $4 END,
                 updated_at = CASE WHEN paused THEN updated_at ELSE $4 END
           WHERE job_name = $1 AND scope_kind = $2 AND scope_id = $3
          RETURNING true",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
};

/// Resuming a job that is not paused changes nothing: `resumed_at` moves only on a real
/// resume (the planner skips, as `paused`, the slots due before it).
static RESUME: Statement = Statement {
    sql: "UPDATE lease_sched.jobs
             SET paused = false, resumed_at = CASE WHEN paused THEN $4 ELSE resumed_at END,
                 updated_at = CASE WHEN paused THEN $4 ELSE updated_at END
           WHERE job_name = $1 AND scope_kind = $2 AND scope_id = $3
          RETURNING true",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
};

/// The history stays.
static DROP: Statement = Statement {
    sql: "DELETE FROM lease_sched.jobs WHERE job_name = $1 AND scope_kind = $2 AND scope_id = $3 RETURNING true",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID],
};

static GET: Query<Definition> = Query {
    statement: Statement {
        // The trigger check is one probe of an index that is nearly always empty.
        sql: "SELECT every, misfire, grace, max_attempts, stale_timeout, paused, resumed_at, cron, timezone,
                     CASE WHEN NOT paused AND EXISTS (
                               SELECT 1 FROM lease_sched.job_triggers t
                                WHERE t.job_name = $1 AND t.scope_kind = $2 AND t.scope_id = $3)
                          THEN lease_sched.job_trigger_due($1, $2, $3) END
                FROM lease_sched.jobs
               WHERE job_name = $1 AND scope_kind = $2 AND scope_id = $3",
        arg_types: &[TEXTOID, TEXTOID, TEXTOID],
    },
    row: |r| {
        Some(Definition {
            every: r.get(1).ok()?,
            misfire: Misfire::from_sql(r.get::<&str>(2).ok()??)?,
            grace: r.get(3).ok()?,
            max_attempts: r.get(4).ok()??,
            stale_timeout: r.get(5).ok()??,
            paused: r.get(6).ok()??,
            resumed_at: r.get(7).ok()?,
            cron: r.get(8).ok()?,
            timezone: r.get(9).ok()??,
            pending_trigger: r.get(10).ok()?,
        })
    },
};

pub struct Settings<'a> {
    /// Exactly one of every and cron (checked by the caller).
    pub every: Option<Interval>,
    pub cron: Option<&'a str>,
    pub timezone: &'a str,
    pub misfire: Misfire,
    pub grace: Option<Interval>,
    pub max_attempts: i32,
    pub stale_timeout: Interval,
    pub key: JobKey<'a>,
}

fn key_args(k: &JobKey<'_>) -> Vec<pgrx::datum::DatumWithOid<'static>> {
    vec![k.job_name.to_string().into(), k.scope_kind.to_string().into(), k.scope_id.to_string().into()]
}

/// Returns true when the definition is new, false when an existing one was replaced.
pub fn define(s: &Settings<'_>) -> bool {
    let now = timestamptz(db_clock());
    let mut args = key_args(&s.key);
    args.push(match s.every {
        Some(e) => e.into(),
        None => pgrx::datum::DatumWithOid::null_oid(INTERVALOID),
    });
    args.push(s.misfire.as_sql().into());
    args.push(match s.grace {
        Some(g) => g.into(),
        None => pgrx::datum::DatumWithOid::null_oid(INTERVALOID),
    });
    args.push(s.max_attempts.into());
    args.push(s.stale_timeout.into());
    args.push(now.into());
    args.push(match s.cron {
        Some(c) => c.to_string().into(),
        None => pgrx::datum::DatumWithOid::null_oid(TEXTOID),
    });
    args.push(s.timezone.to_string().into());
    Spi::connect_mut(|client| {
        let t = execute(client, &DEFINE, &args);
        t.first().get::<bool>(1).ok().flatten().unwrap_or(false)
    })
}

fn by_key(statement: &'static Statement, k: &JobKey<'_>, with_clock: bool) -> bool {
    let mut args = key_args(k);
    if with_clock {
        args.push(timestamptz(db_clock()).into());
    }
    Spi::connect_mut(|client| !execute(client, statement, &args).is_empty())
}

pub fn pause(k: &JobKey<'_>) -> bool {
    by_key(&PAUSE, k, true)
}

pub fn resume(k: &JobKey<'_>) -> bool {
    by_key(&RESUME, k, true)
}

pub fn drop(k: &JobKey<'_>) -> bool {
    by_key(&DROP, k, false)
}

pub fn definition(k: &JobKey<'_>) -> Option<Definition> {
    Spi::connect_mut(|client| GET.first(client, &key_args(k)))
}
