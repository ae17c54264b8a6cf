//! Lease operations on `sys_cron_executions`: claim, heartbeat, finish, the sweep's two
//! lease passes (fail abandoned leases, prune finished history), and the fence (`fence`).
//! Arguments arrive validated (see `api::lease`); this module decides and writes.
pub mod fence;
pub mod store;

use pgrx::datum::{DatumWithOid, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::clock::{db_clock, micros_from_s, timestamptz, DbTime};
use crate::spi_plans::execute;
use crate::{settings, stats};
use lease_model::{decide_claim, ClaimDecision, ClaimOutcome, Status};
use store::{ExecutionKey, ExistingRow};

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
}

/// A granted lease as the API returns it.
fn claim_of(g: store::Granted, outcome: ClaimOutcome) -> Claim {
    Claim {
        outcome,
        execution_id: Some(g.execution_id),
        lease_token: Some(g.lease_token),
        attempt: Some(g.attempt),
        fencing_token: Some(g.fencing_token),
        stale_after: Some(g.stale_after),
    }
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
    let key = ExecutionKey {
        job_name: req.job_name,
        scope_kind: req.scope_kind,
        scope_id: req.scope_id,
        plan_time: req.plan_time,
    };
    Spi::connect_mut(|client| {
        let mut existing = store::probe(&key);
        // Two rounds suffice: after a lost insert race the row exists. A third round only
        // happens if that row was deleted meanwhile, which we report as a conflict.
        for _ in 0..3 {
            match decide_claim(existing.as_ref().map(|e| &e.lease), now, req.allow_stale_reentry) {
                ClaimDecision::Insert => {
                    crate::token_floor::ensure_token_floor(client);
                    let inserted = store::INSERT.first(
                        client,
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
                    if let Some(won) = inserted {
                        return claim_of(redrawn(client, won), ClaimOutcome::Won);
                    }
                    existing = store::probe(&key);
                }
                ClaimDecision::Steal => {
                    let id = existing.as_ref().expect("steal needs a row").id;
                    crate::token_floor::ensure_token_floor(client);
                    let stolen = store::STEAL.first(
                        client,
                        &[
                            id.into(),
                            req.runner_id.into(),
                            req.allow_stale_reentry.into(),
                            req.stale_timeout.into(),
                            timestamptz(now).into(),
                        ],
                    );
                    if let Some(stole) = stolen {
                        if stole.deposed {
                            crate::notices::lost(client, id.to_string());
                        }
                        return claim_of(redrawn(client, stole), ClaimOutcome::Stole);
                    }
                    // Someone changed the row first (stole, heartbeat, finished, swept):
                    // report the row as it is now, not as we first saw it.
                    existing = store::probe(&key);
                    return conflicted(existing.as_ref());
                }
                ClaimDecision::Conflict => return conflicted(existing.as_ref()),
            }
        }
        conflicted(existing.as_ref())
    })
}

/// The grant as it stands, or with a new token when its statement asked for one
/// (`Granted::redraw_above`): the sequence is first moved above the row's previous token
/// when that is what the token was not above.
fn redrawn(client: &mut pgrx::spi::SpiClient<'_>, g: store::Granted) -> store::Granted {
    let Some(above) = g.redraw_above else { return g };
    if above > 0 {
        crate::token_floor::floor_above(client, above);
    }
    let again = store::REDRAW.first(client, &[g.execution_id.into()]).expect("the row this call granted");
    store::Granted { deposed: g.deposed, redraw_above: None, ..again }
}

/// Extend a held lease; false when the token no longer holds a RUNNING row.
pub fn heartbeat(execution_id: Uuid, lease_token: Uuid) -> bool {
    let now = db_clock();
    let extended = Spi::connect_mut(|client| {
        execute(client, &store::HEARTBEAT, &[execution_id.into(), lease_token.into(), timestamptz(now).into()]).len()
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

/// The sweep's lease pass: fail every abandoned lease (`store::FAIL_ABANDONED`); returns
/// how many.
pub fn fail_abandoned(client: &mut pgrx::spi::SpiClient<'_>, now: DbTime) -> i64 {
    let (base, max) = settings::retry_backoff_bounds();
    execute(client, &store::FAIL_ABANDONED, &[timestamptz(now).into(), base.into(), max.into()]).len() as i64
}

/// Rows deleted per statement, and statements per sweep, by retention.
const PRUNE_BATCH_ROWS: i32 = 1000;
const PRUNE_BATCHES_PER_SWEEP: usize = 10;

/// The sweep's retention pass: delete finished rows older than `retention_s` seconds,
/// in bounded batches (`store::PRUNE_BATCH`); returns how many.
pub fn prune_finished(client: &mut pgrx::spi::SpiClient<'_>, now: DbTime, retention_s: i32) -> i64 {
    let cutoff = timestamptz(now - micros_from_s(retention_s));
    let mut pruned = 0;
    for _ in 0..PRUNE_BATCHES_PER_SWEEP {
        let n = execute(client, &store::PRUNE_BATCH, &[cutoff.into(), PRUNE_BATCH_ROWS.into(), timestamptz(now).into()])
            .len() as i64;
        pruned += n;
        if n < PRUNE_BATCH_ROWS as i64 {
            break;
        }
    }
    pruned
}
