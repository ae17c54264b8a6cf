//! The planner (`lease_next_plan`): which plan a runner should claim now, and, for a job
//! with a definition (`job_define`), which missed slots to record as SKIPPED first. Pure
//! functions of the latest execution row, the definition and the database clock; the
//! extension's src/planner/ reads the rows and writes what these decide. Checked
//! exhaustively for every misfire policy in tests/planner_model_check.rs.
use crate::{DbTime, Status};

/// The Unix epoch (`timestamptz 'epoch'`) on PostgreSQL's clock, which counts from 2000.
pub const UNIX_EPOCH: DbTime = -946_684_800_000_000;

/// The most SKIPPED rows one planner call writes. A longer backlog is recorded over
/// several calls (each returns no plan until the backlog is written).
pub const MAX_SKIPS_PER_CALL: i64 = 1000;

/// What the planner needs to know about the latest execution (by plan_time, at or
/// before now) of a (job, scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
        self.status == Status::Failed && self.attempt < self.max_attempts && self.next_retry_at.is_none_or(|t| t <= now)
    }
}

/// `date_bin(stride, t, origin)`: the start of the bucket holding `t`.
pub fn date_bin(stride: i64, t: DbTime, origin: DbTime) -> DbTime {
    debug_assert!(stride > 0);
    origin + (t - origin).div_euclid(stride) * stride
}

/// The slot of `t`: buckets of `every` aligned on the Unix epoch.
pub fn slot(every: i64, t: DbTime) -> DbTime {
    date_bin(every, t, UNIX_EPOCH)
}

/// Where the latest plan leaves the cursor: `Err(answer)` when it decides by itself
/// (a live lease: nothing; a stale one: its plan; a pending retry: its plan once due),
/// `Ok(())` when it is done (SUCCESS, FAILED without attempts left, SKIPPED) or absent.
fn pending(latest: Option<&LatestPlan>, now: DbTime) -> Result<(), Option<DbTime>> {
    match latest {
        // A live run blocks overlap; a stale one is there to be taken over.
        Some(l) if l.status == Status::Running => Err(l.stale_after.is_some_and(|t| t < now).then_some(l.plan_time)),
        // Never skip a pending retry: stay on its plan until it is eligible.
        Some(l) if l.status == Status::Failed && l.attempt < l.max_attempts => {
            Err(l.retry_eligible(now).then_some(l.plan_time))
        }
        _ => Ok(()),
    }
}

/// Jobs without a definition (0.1 behaviour): `catch_up` walks every missed bucket,
/// otherwise the current bucket if later than the latest plan. Nothing is skipped.
pub fn next_plan(latest: Option<&LatestPlan>, every: i64, now: DbTime, catch_up: bool) -> Option<DbTime> {
    let current = slot(every, now);
    if let Err(answer) = pending(latest, now) {
        return answer;
    }
    let Some(l) = latest else { return Some(current) };
    let candidate = if catch_up { slot(every, l.plan_time) + every } else { current };
    (candidate <= now && candidate > l.plan_time).then_some(candidate)
}

/// What happens to slots nobody ran in time (`job_define(misfire => ...)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Misfire {
    /// Every missed slot runs, oldest first, then the current one.
    All,
    /// Only the most recent missed slot runs (the older ones are SKIPPED), then the current one.
    Latest,
    /// Missed slots are SKIPPED; only the current slot runs.
    Skip,
}

impl Misfire {
    pub fn as_sql(self) -> &'static str {
        match self {
            Misfire::All => "all",
            Misfire::Latest => "latest",
            Misfire::Skip => "skip",
        }
    }
    pub fn from_sql(s: &str) -> Option<Misfire> {
        match s {
            "all" => Some(Misfire::All),
            "latest" => Some(Misfire::Latest),
            "skip" => Some(Misfire::Skip),
            _ => None,
        }
    }
}

/// Why a slot was SKIPPED (its `error_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The misfire policy dropped it (`latest`, `skip`).
    Misfire,
    /// It was due while the job was paused (before `job_resume`).
    Paused,
    /// It was older than now - grace when the planner saw it.
    Grace,
}

impl SkipReason {
    pub fn as_sql(self) -> &'static str {
        match self {
            SkipReason::Misfire => "misfire",
            SkipReason::Paused => "paused",
            SkipReason::Grace => "grace",
        }
    }
}

/// A job definition, as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    /// The stride in microseconds (positive).
    pub every: i64,
    pub misfire: Misfire,
    /// Slots older than now - grace are skipped (microseconds, positive).
    pub grace: Option<i64>,
    pub paused: bool,
    /// The last `job_resume`: slots due before it that never ran are skipped (paused).
    pub resumed_at: Option<DbTime>,
}

/// `count` slots `from, from + every, ...`, all skipped for `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SkipRange {
    pub from: DbTime,
    pub count: i64,
    pub reason: SkipReason,
}

impl SkipRange {
    pub fn slots(&self, every: i64) -> impl Iterator<Item = DbTime> + '_ {
        let from = self.from;
        (0..self.count).map(move |i| from + i * every)
    }
}

/// What one planner call does: write `skip` (oldest first, at most
/// `MAX_SKIPS_PER_CALL` slots in all), then offer `run`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    pub skip: Vec<SkipRange>,
    pub run: Option<DbTime>,
}

/// The planner for a job with a definition.
///
/// Slots are `slot(every, t)`; the *current* slot holds now, a *missed* slot is an
/// earlier one after the latest plan that nobody ran. A paused job gets nothing (and
/// nothing is written). A running, stale or retrying latest plan decides as without a
/// definition. Otherwise the slots after the latest plan up to the current one are, in
/// order: those due before the last resume (skipped: paused), those older than
/// now - grace (skipped: grace), then the rest, where the policy picks the plan:
/// `all` the oldest, `latest` the most recent missed slot (older missed ones skipped:
/// misfire) or else the current one, `skip` the current one (missed ones skipped:
/// misfire). With no history at all the first plan is the current slot.
pub fn decide(latest: Option<&LatestPlan>, now: DbTime, p: &Policy) -> Decision {
    if p.paused {
        return Decision::default();
    }
    if let Err(run) = pending(latest, now) {
        return Decision { skip: vec![], run };
    }
    let every = p.every;
    let current = slot(every, now);
    let mut lo = match latest {
        None => current,
        Some(l) => slot(every, l.plan_time) + every,
    };
    if lo > current {
        return Decision::default();
    }
    let mut skip = Vec::new();
    let take = |lo: &mut DbTime, last: DbTime, reason: SkipReason, skip: &mut Vec<SkipRange>| {
        let last = last.min(current);
        if last >= *lo {
            let count = (last - *lo) / every + 1;
            skip.push(SkipRange { from: *lo, count, reason });
            *lo = last + every;
        }
    };
    // Due while paused: every slot before the resume that nobody ran.
    if let Some(r) = p.resumed_at {
        take(&mut lo, slot(every, r - 1), SkipReason::Paused, &mut skip);
    }
    // Too late to be worth running.
    if let Some(g) = p.grace {
        take(&mut lo, slot(every, now - g - 1), SkipReason::Grace, &mut skip);
    }
    let run = if lo > current {
        None
    } else {
        match p.misfire {
            Misfire::All => Some(lo),
            Misfire::Latest if lo < current => {
                take(&mut lo, current - 2 * every, SkipReason::Misfire, &mut skip);
                Some(lo)
            }
            Misfire::Latest => Some(current),
            Misfire::Skip => {
                take(&mut lo, current - every, SkipReason::Misfire, &mut skip);
                Some(current)
            }
        }
    };
    bound(Decision { skip, run })
}

/// At most `MAX_SKIPS_PER_CALL` skipped slots per call, oldest first; when the backlog
/// is longer, no plan is offered until a later call has written the rest (the skipped
/// rows move the cursor forward, so nothing is ever left unrecorded).
fn bound(mut d: Decision) -> Decision {
    let mut budget = MAX_SKIPS_PER_CALL;
    let mut cut = false;
    d.skip.retain_mut(|r| {
        if budget == 0 {
            cut = true;
            return false;
        }
        if r.count > budget {
            r.count = budget;
            cut = true;
        }
        budget -= r.count;
        true
    });
    if cut {
        d.run = None;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn done(plan_time: DbTime) -> LatestPlan {
        LatestPlan {
            plan_time,
            status: Status::Success,
            attempt: 1,
            max_attempts: 3,
            next_retry_at: None,
            stale_after: None,
        }
    }

    fn policy(misfire: Misfire) -> Policy {
        Policy { every: MIN, misfire, grace: None, paused: false, resumed_at: None }
    }

    fn r(from: DbTime, count: i64, reason: SkipReason) -> SkipRange {
        SkipRange { from, count, reason }
    }

    #[test]
    fn buckets_align_on_the_unix_epoch_and_floor_negative_offsets() {
        assert_eq!(date_bin(MIN, UNIX_EPOCH + 90_000_000, UNIX_EPOCH), UNIX_EPOCH + MIN);
        assert_eq!(date_bin(MIN, UNIX_EPOCH - 1, UNIX_EPOCH), UNIX_EPOCH - MIN);
        assert_eq!(date_bin(MIN, 0, UNIX_EPOCH), 0);
    }

    #[test]
    fn on_time_every_policy_runs_the_current_slot() {
        for m in [Misfire::All, Misfire::Latest, Misfire::Skip] {
            let d = decide(Some(&done(9 * MIN)), 10 * MIN + 5, &policy(m));
            assert_eq!(d, Decision { skip: vec![], run: Some(10 * MIN) }, "{m:?}");
            assert_eq!(decide(None, 10 * MIN + 5, &policy(m)).run, Some(10 * MIN));
            assert_eq!(decide(Some(&done(10 * MIN)), 10 * MIN + 5, &policy(m)), Decision::default());
        }
    }

    #[test]
    fn after_an_outage_each_policy_chooses_its_way() {
        // latest plan at 3, now in slot 10: slots 4..9 were missed.
        let l = done(3 * MIN);
        let now = 10 * MIN + 5;
        assert_eq!(decide(Some(&l), now, &policy(Misfire::All)), Decision { skip: vec![], run: Some(4 * MIN) });
        assert_eq!(
            decide(Some(&l), now, &policy(Misfire::Latest)),
            Decision { skip: vec![r(4 * MIN, 5, SkipReason::Misfire)], run: Some(9 * MIN) }
        );
        assert_eq!(
            decide(Some(&l), now, &policy(Misfire::Skip)),
            Decision { skip: vec![r(4 * MIN, 6, SkipReason::Misfire)], run: Some(10 * MIN) }
        );
        // latest, once the most recent missed slot ran: the current slot.
        assert_eq!(decide(Some(&done(9 * MIN)), now, &policy(Misfire::Latest)).run, Some(10 * MIN));
    }

    #[test]
    fn grace_skips_old_slots_under_any_policy() {
        let l = done(3 * MIN);
        let now = 10 * MIN + 5;
        let p = Policy { grace: Some(2 * MIN), ..policy(Misfire::All) };
        // now - grace = 8:00.000005 -> slots 4..8 are older than that.
        assert_eq!(
            decide(Some(&l), now, &p),
            Decision { skip: vec![r(4 * MIN, 5, SkipReason::Grace)], run: Some(9 * MIN) }
        );
        // the current slot too, once grace has passed
        let p = Policy { grace: Some(MIN / 2), ..policy(Misfire::All) };
        let d = decide(Some(&done(9 * MIN)), 10 * MIN + MIN / 2 + 1, &p);
        assert_eq!(d, Decision { skip: vec![r(10 * MIN, 1, SkipReason::Grace)], run: None });
    }

    #[test]
    fn paused_jobs_get_nothing_and_slots_due_while_paused_are_skipped() {
        let p = Policy { paused: true, ..policy(Misfire::All) };
        assert_eq!(decide(Some(&done(3 * MIN)), 10 * MIN, &p), Decision::default());
        assert_eq!(decide(None, 10 * MIN, &p), Decision::default());
        let p = Policy { resumed_at: Some(7 * MIN + 1), ..policy(Misfire::All) };
        assert_eq!(
            decide(Some(&done(3 * MIN)), 10 * MIN + 5, &p),
            Decision { skip: vec![r(4 * MIN, 4, SkipReason::Paused)], run: Some(8 * MIN) }
        );
        // resumed exactly on a slot: that slot runs
        let p = Policy { resumed_at: Some(8 * MIN), ..policy(Misfire::Skip) };
        assert_eq!(
            decide(Some(&done(3 * MIN)), 8 * MIN + 5, &p),
            Decision { skip: vec![r(4 * MIN, 4, SkipReason::Paused)], run: Some(8 * MIN) }
        );
    }

    #[test]
    fn a_pending_plan_decides_as_without_a_definition() {
        let running = LatestPlan { status: Status::Running, stale_after: Some(20 * MIN), ..done(3 * MIN) };
        assert_eq!(decide(Some(&running), 10 * MIN, &policy(Misfire::Skip)), Decision::default());
        assert_eq!(decide(Some(&running), 21 * MIN, &policy(Misfire::Skip)).run, Some(3 * MIN));
        let retry = LatestPlan { status: Status::Failed, next_retry_at: Some(12 * MIN), ..done(3 * MIN) };
        assert_eq!(decide(Some(&retry), 11 * MIN, &policy(Misfire::Skip)).run, None);
        assert_eq!(decide(Some(&retry), 12 * MIN, &policy(Misfire::Skip)).run, Some(3 * MIN));
        let skipped = LatestPlan { status: Status::Skipped, ..done(9 * MIN) };
        assert_eq!(decide(Some(&skipped), 10 * MIN, &policy(Misfire::Skip)).run, Some(10 * MIN));
    }

    #[test]
    fn long_backlogs_are_written_in_bounded_batches() {
        let l = done(0);
        let now = 5000 * MIN;
        let d = decide(Some(&l), now, &policy(Misfire::Skip));
        assert_eq!(d, Decision { skip: vec![r(MIN, MAX_SKIPS_PER_CALL, SkipReason::Misfire)], run: None });
        let d = decide(Some(&done(4000 * MIN)), now, &policy(Misfire::Skip));
        assert_eq!(d, Decision { skip: vec![r(4001 * MIN, 999, SkipReason::Misfire)], run: Some(5000 * MIN) });
    }

    #[test]
    fn legacy_planner() {
        assert_eq!(next_plan(None, MIN, 10 * MIN + 5, true), Some(10 * MIN));
        let s = done(3 * MIN);
        assert_eq!(next_plan(Some(&s), MIN, 10 * MIN + 1, true), Some(4 * MIN));
        assert_eq!(next_plan(Some(&s), MIN, 10 * MIN + 1, false), Some(10 * MIN));
        let now_done = done(10 * MIN);
        assert_eq!(next_plan(Some(&now_done), MIN, 10 * MIN + 30, true), None);
    }
}
