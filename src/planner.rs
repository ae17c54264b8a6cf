//! The catch-up planner (seed 002's latest plan and retry eligibility): which plan_time a
//! runner should claim now for a job that runs every `every`. The decision is a pure
//! function of the latest execution row and the database clock.
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::{TEXTOID, TIMESTAMPTZOID};
use pgrx::prelude::*;

use crate::lease::state::{DbTime, Status};
use crate::spi_plans::{execute, Statement};

/// The Unix epoch (`timestamptz 'epoch'`) on PostgreSQL's clock, which counts from 2000.
pub const UNIX_EPOCH: DbTime = -946_684_800_000_000;

#[derive(Clone, Copy, Debug)]
pub struct LatestPlan {
    pub plan_time: DbTime,
    pub status: Status,
    pub attempt: i32,
    pub max_attempts: i32,
    pub next_retry_at: Option<DbTime>,
    pub stale_after: Option<DbTime>,
}

impl LatestPlan {
    /// A FAILED run with attempts left whose backoff has passed (NULL: at once).
    pub fn retry_eligible(&self, now: DbTime) -> bool {
        self.status == Status::Failed
            && self.attempt < self.max_attempts
            && self.next_retry_at.is_none_or(|t| t <= now)
    }
}

/// `date_bin(stride, t, origin)`: the start of the bucket holding `t`.
pub fn date_bin(stride: i64, t: DbTime, origin: DbTime) -> DbTime {
    debug_assert!(stride > 0);
    origin + (t - origin).div_euclid(stride) * stride
}

/// The plan to claim now, or None when nothing is due. Buckets are aligned on
/// `date_bin(every, t, 'epoch')`.
pub fn next_plan(latest: Option<&LatestPlan>, every: i64, now: DbTime, catch_up: bool) -> Option<DbTime> {
    let current = date_bin(every, now, UNIX_EPOCH);
    let Some(l) = latest else { return Some(current) };
    match l.status {
        // A live run blocks overlap; a stale one is there to be taken over.
        Status::Running => l.stale_after.is_some_and(|t| t < now).then_some(l.plan_time),
        // Never skip a pending retry: stay on its plan until it is eligible.
        Status::Failed if l.attempt < l.max_attempts => l.retry_eligible(now).then_some(l.plan_time),
        // Done (SUCCESS, or FAILED with no attempts left): move on.
        _ => {
            let candidate = if catch_up { date_bin(every, l.plan_time, UNIX_EPOCH) + every } else { current };
            (candidate <= now && candidate > l.plan_time).then_some(candidate)
        }
    }
}

static LATEST: Statement = Statement {
    sql: "SELECT plan_time, status, attempt, max_attempts, next_retry_at, stale_after
            FROM lease_sched.sys_cron_executions
           WHERE job_name = $1 AND scope_kind = $2 AND scope_id = $3 AND plan_time <= $4
           ORDER BY plan_time DESC LIMIT 1",
    arg_types: &[TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID],
};

/// The latest execution of (job, scope) by plan_time at or before `now`, through the
/// unique index. A row planned in the future (a claim with a plan_time ahead of the
/// clock) is not the cursor: it neither silences the job until then nor is offered early.
pub fn latest_plan(job_name: &str, scope_kind: &str, scope_id: &str, now: DbTime) -> Option<LatestPlan> {
    Spi::connect_mut(|client| {
        let t = execute(
            client,
            &LATEST,
            &[job_name.into(), scope_kind.into(), scope_id.into(), crate::lease::timestamptz(now).into()],
        );
        if t.is_empty() {
            return None;
        }
        let r = t.first();
        let ts = |i| r.get::<TimestampWithTimeZone>(i).unwrap().map(|t| t.into_inner());
        Some(LatestPlan {
            plan_time: ts(1)?,
            status: Status::from_sql(r.get::<&str>(2).unwrap()?)?,
            attempt: r.get(3).unwrap()?,
            max_attempts: r.get(4).unwrap()?,
            next_retry_at: ts(5),
            stale_after: ts(6),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn row(status: Status, plan_time: DbTime) -> LatestPlan {
        LatestPlan { plan_time, status, attempt: 1, max_attempts: 3, next_retry_at: None, stale_after: None }
    }

    #[test]
    fn buckets_align_on_the_unix_epoch_and_floor_negative_offsets() {
        assert_eq!(date_bin(MIN, UNIX_EPOCH + 90_000_000, UNIX_EPOCH), UNIX_EPOCH + MIN);
        assert_eq!(date_bin(MIN, UNIX_EPOCH - 1, UNIX_EPOCH), UNIX_EPOCH - MIN);
        assert_eq!(date_bin(MIN, 0, UNIX_EPOCH), 0); // 2000-01-01 is a minute boundary
    }

    #[test]
    fn first_run_is_the_current_bucket() {
        assert_eq!(next_plan(None, MIN, 10 * MIN + 5, true), Some(10 * MIN));
    }

    #[test]
    fn running_blocks_unless_stale() {
        let mut r = row(Status::Running, 3 * MIN);
        r.stale_after = Some(20 * MIN);
        assert_eq!(next_plan(Some(&r), MIN, 10 * MIN, true), None);
        assert_eq!(next_plan(Some(&r), MIN, 21 * MIN, true), Some(3 * MIN));
    }

    #[test]
    fn pending_retry_keeps_the_cursor() {
        let mut r = row(Status::Failed, 3 * MIN);
        r.next_retry_at = Some(12 * MIN);
        assert_eq!(next_plan(Some(&r), MIN, 10 * MIN, true), None);
        assert_eq!(next_plan(Some(&r), MIN, 12 * MIN, true), Some(3 * MIN));
    }

    #[test]
    fn done_runs_advance_by_catch_up_or_to_now() {
        let s = row(Status::Success, 3 * MIN);
        assert_eq!(next_plan(Some(&s), MIN, 10 * MIN + 1, true), Some(4 * MIN));
        assert_eq!(next_plan(Some(&s), MIN, 10 * MIN + 1, false), Some(10 * MIN));
        let exhausted = LatestPlan { attempt: 3, ..row(Status::Failed, 3 * MIN) };
        assert_eq!(next_plan(Some(&exhausted), MIN, 10 * MIN, true), Some(4 * MIN));
        let now_done = row(Status::Success, 10 * MIN);
        assert_eq!(next_plan(Some(&now_done), MIN, 10 * MIN + 30, true), None);
        assert_eq!(next_plan(Some(&now_done), MIN, 10 * MIN + 30, false), None);
    }
}
