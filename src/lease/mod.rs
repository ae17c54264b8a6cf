//! Lease operations on `sys_cron_executions`: claim, heartbeat, finish.
//! Arguments arrive validated (see `api::lease`); this module decides and writes.
pub mod store;

use pgrx::datum::{DatumWithOid, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::spi::SpiTupleTable;
use pgrx::Uuid;

use crate::clock::{db_clock, timestamptz};
use crate::{settings, stats};
use crate::spi_plans::execute;
use lease_model::{decide_claim, ClaimDecision, ClaimOutcome, LeaseRow, Status};

pub struct ClaimRequest<'a> {
    pub job_name: &'a str,
    pub scope_kind: &'a str,
    pub scope_id: &'a str,
    pub plan_time: TimestampWithTimeZone,
    pub runner_id: &'a str,
    pub stale_timeout: Interval,
    pub max_attempts: i32,
    pub allow_stale_reentry: bool,
}

pub struct Claim {
    pub outcome: ClaimOutcome,
    pub execution_id: Option<Uuid>,
    pub lease_token: Option<Uuid>,
    pub attempt: Option<i32>,
    pub fencing_token: Option<i64>,
    pub stale_after: Option<TimestampWithTimeZone>,
    /// A steal took a RUNNING lease from a live (if silent) holder.
    pub deposed: bool,
}

struct ExistingRow {
    id: Uuid,
    lease: LeaseRow,
}

/// The row a claim is about, read through the unique key without locking it and without
/// SPI (src/lookup.rs): what a statement starting now would see.
fn probe(req: &ClaimRequest<'_>) -> Option<ExistingRow> {
    use crate::lookup::{by_unique_key, value, Key};
    use pgrx::pg_sys::{F_TEXTEQ, F_TIMESTAMPTZ_EQ};
    let key = |eq_proc, datum: Option<pgrx::pg_sys::Datum>| Key { eq_proc, value: datum.expect("a non-NULL key") };
    by_unique_key(
        c"sys_cron_executions",
        c"uq_sys_cron_execution",
        &[
            key(F_TEXTEQ, req.job_name.into_datum()),
            key(F_TEXTEQ, req.scope_kind.into_datum()),
            key(F_TEXTEQ, req.scope_id.into_datum()),
            key(F_TIMESTAMPTZ_EQ, req.plan_time.into_datum()),
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

/// Read the RETURNING row of INSERT or STEAL as a granted lease.
fn granted(table: SpiTupleTable<'_>, outcome: ClaimOutcome) -> Option<Claim> {
    if table.is_empty() {
        return None;
    }
    let row = table.first();
    Some(Claim {
        outcome,
        execution_id: row.get(1).unwrap(),
        lease_token: row.get(2).unwrap(),
        attempt: row.get(3).unwrap(),
        fencing_token: row.get(4).unwrap(),
        stale_after: row.get(5).unwrap(),
        // STEAL returns a sixth column; INSERT does not.
        deposed: row.get::<bool>(6).ok().flatten().unwrap_or(false),
    })
}

fn conflicted(existing: Option<&ExistingRow>) -> Claim {
    Claim {
        outcome: ClaimOutcome::Conflicted,
        execution_id: existing.map(|e| e.id),
        lease_token: None,
        attempt: existing.map(|e| e.lease.attempt),
        fencing_token: None,
        stale_after: existing
            .filter(|e| e.lease.status == Status::Running)
            .and_then(|e| e.lease.stale_after)
            .map(timestamptz),
        deposed: false,
    }
}

/// One claim: probe the row without locking; insert when absent, steal when the state
/// machine allows it, else report the conflict. A lost insert race re-reads the row the
/// winner committed and decides again, so every caller gets a definite outcome.
pub fn claim(req: &ClaimRequest<'_>) -> Claim {
    let claim = decide_and_write(req);
    match claim.outcome {
        ClaimOutcome::Won => stats::add(|s| &s.claims_won, 1),
        ClaimOutcome::Stole => stats::add(|s| &s.claims_stole, 1),
        ClaimOutcome::Conflicted => stats::add(|s| &s.claims_conflicted, 1),
    }
    claim
}

fn decide_and_write(req: &ClaimRequest<'_>) -> Claim {
    let now = db_clock();
    Spi::connect_mut(|client| {
        let mut existing = probe(req);
        // Two rounds suffice: after a lost insert race the row exists. A third round only
        // happens if that row was deleted meanwhile, which we report as a conflict.
        for _ in 0..3 {
            match decide_claim(existing.as_ref().map(|e| &e.lease), now, req.allow_stale_reentry) {
                ClaimDecision::Insert => {
                    crate::fencing::ensure_token_floor(client);
                    let inserted = execute(
                        client,
                        &store::INSERT,
                        &[
                            req.job_name.into(),
                            req.scope_kind.into(),
                            req.scope_id.into(),
                            req.plan_time.into(),
                            req.max_attempts.into(),
                            req.runner_id.into(),
                            req.allow_stale_reentry.into(),
                            req.stale_timeout.into(),
                            timestamptz(now).into(),
                        ],
                    );
                    if let Some(won) = granted(inserted, ClaimOutcome::Won) {
                        return won;
                    }
                    existing = probe(req);
                }
                ClaimDecision::Steal => {
                    let id = existing.as_ref().expect("steal needs a row").id;
                    crate::fencing::ensure_token_floor(client);
                    let stolen = execute(
                        client,
                        &store::STEAL,
                        &[
                            id.into(),
                            req.runner_id.into(),
                            req.allow_stale_reentry.into(),
                            req.stale_timeout.into(),
                            timestamptz(now).into(),
                        ],
                    );
                    if let Some(stole) = granted(stolen, ClaimOutcome::Stole) {
                        if stole.deposed {
                            notify_lost(client, id.to_string());
                        }
                        return stole;
                    }
                    // Someone changed the row first (stole, heartbeat, finished, swept):
                    // report the row as it is now, not as we first saw it.
                    existing = probe(req);
                    return conflicted(existing.as_ref());
                }
                ClaimDecision::Conflict => return conflicted(existing.as_ref()),
            }
        }
        conflicted(existing.as_ref())
    })
}

/// NOTIFY lease_sched_lost with `payload` (an execution_id, or `lock:<name>`), delivered at
/// commit, unless `lease_sched.notify_lost` is off. The sweep notifies in its own statement.
pub fn notify_lost(client: &mut pgrx::spi::SpiClient<'_>, payload: String) {
    if settings::NOTIFY_LOST.get() {
        execute(client, &store::NOTIFY_LOST, &[payload.into()]);
    }
}

/// Extend a held lease; false when the token no longer holds a RUNNING row.
pub fn heartbeat(execution_id: Uuid, lease_token: Uuid) -> bool {
    let now = db_clock();
    let extended = Spi::connect_mut(|client| {
        execute(client, &store::HEARTBEAT, &[execution_id.into(), lease_token.into(), timestamptz(now).into()])
            .len()
            == 1
    });
    stats::add(if extended { |s| &s.heartbeats_ok } else { |s| &s.heartbeats_lost }, 1);
    extended
}

pub struct Finish {
    pub status: Status,
    /// A jsonb datum, passed through untouched.
    pub result: Option<pgrx::pg_sys::Datum>,
    pub rows_affected: Option<i64>,
    pub error_code: Option<String>,
    pub error_msg: Option<String>,
    pub retry_in: Option<Interval>,
}

/// Write the terminal state of a held lease; false (nothing written) when lost.
pub fn finish(execution_id: Uuid, lease_token: Uuid, f: Finish) -> bool {
    let now = db_clock();
    let (backoff_base, backoff_max) = settings::retry_backoff_bounds();
    let args: Vec<DatumWithOid> = vec![
        execution_id.into(),
        lease_token.into(),
        f.status.as_sql().into(),
        timestamptz(now).into(),
        match f.result {
            // SAFETY: a jsonb datum the caller received as this call's argument.
            Some(datum) => unsafe { DatumWithOid::new(datum, pgrx::pg_sys::JSONBOID) },
            None => DatumWithOid::null_oid(pgrx::pg_sys::JSONBOID),
        },
        opt(f.rows_affected, pgrx::pg_sys::INT8OID),
        opt(f.error_code, pgrx::pg_sys::TEXTOID),
        opt(f.error_msg, pgrx::pg_sys::TEXTOID),
        opt(f.retry_in, pgrx::pg_sys::INTERVALOID),
        backoff_base.into(),
        backoff_max.into(),
    ];
    let written = Spi::connect_mut(|client| execute(client, &store::FINISH, &args).len() == 1);
    stats::add(if written { |s| &s.finishes } else { |s| &s.finishes_lost }, 1);
    written
}

/// A nullable statement argument.
fn opt<'a, T: IntoDatum>(value: Option<T>, oid: pgrx::pg_sys::Oid) -> DatumWithOid<'a> {
    match value {
        Some(v) => v.into(),
        None => DatumWithOid::null_oid(oid),
    }
}
