//! The lease state machine of lease_sched as pure functions of (row state, database time).
//!
//! This crate is the specification: the extension decides claims with `decide_claim`, and
//! its SQL (src/lease/store.rs in the extension) implements the same transitions as the
//! whole-row functions at the bottom (`claim`, `heartbeat`, `finish`, `sweep`). Free of
//! PostgreSQL, it is unit-tested, explored exhaustively by a model checker
//! (tests/model_check.rs), and replayed against the real SQL on random traces (the
//! extension's tests/integration/tests/model_traces.rs).

/// Database time in microseconds since 2000-01-01 (PostgreSQL's TimestampTz).
pub type DbTime = i64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Running,
    Success,
    Failed,
    /// A slot the planner decided not to run (misfire policy, pause, grace): written by
    /// `lease_next_plan` for a job with a definition, final, never claimable.
    Skipped,
}

impl Status {
    pub fn as_sql(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
            Status::Skipped => "SKIPPED",
        }
    }

    pub fn from_sql(s: &str) -> Option<Status> {
        match s {
            "RUNNING" => Some(Status::Running),
            "SUCCESS" => Some(Status::Success),
            "FAILED" => Some(Status::Failed),
            "SKIPPED" => Some(Status::Skipped),
            _ => None,
        }
    }
}

/// What a claim needs to know about an existing execution row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseRow {
    pub status: Status,
    pub attempt: i32,
    pub max_attempts: i32,
    pub stale_after: Option<DbTime>,
    pub next_retry_at: Option<DbTime>,
    pub allow_stale_reentry: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// No row yet: insert a fresh RUNNING row (outcome `won`, attempt 1).
    Insert,
    /// Take the same row over (outcome `stole`, attempt + 1).
    Steal,
    /// Leave the row alone (outcome `conflicted`).
    Conflict,
}

/// May a claimer take this row over at `now`?
///
/// A steal needs attempts left, and either a FAILED run whose backoff has passed
/// (NULL `next_retry_at` means "as soon as possible"), or a RUNNING lease past
/// `stale_after` when both the row and the claimer allow stale re-entry.
pub fn may_steal(row: &LeaseRow, now: DbTime, claimer_allows_reentry: bool) -> bool {
    if row.attempt >= row.max_attempts {
        return false;
    }
    match row.status {
        Status::Failed => row.next_retry_at.is_none_or(|t| t <= now),
        Status::Running => {
            claimer_allows_reentry && row.allow_stale_reentry && row.stale_after.is_some_and(|t| t < now)
        }
        // Final: a finished success, and a slot the planner skipped.
        Status::Success | Status::Skipped => false,
    }
}

pub fn decide_claim(row: Option<&LeaseRow>, now: DbTime, claimer_allows_reentry: bool) -> ClaimDecision {
    match row {
        None => ClaimDecision::Insert,
        Some(row) if may_steal(row, now, claimer_allows_reentry) => ClaimDecision::Steal,
        Some(_) => ClaimDecision::Conflict,
    }
}

/// Is a RUNNING lease past its stale time with nobody allowed to steal it? The sweeper
/// fails such rows so that none stays RUNNING forever.
pub fn is_abandoned(row: &LeaseRow, now: DbTime) -> bool {
    row.status == Status::Running
        && row.stale_after.is_some_and(|t| t < now)
        && (!row.allow_stale_reentry || row.attempt >= row.max_attempts)
}

/// Default retry delay in microseconds: base * 2^(attempt-1), capped at `max`; never
/// overflows (the product saturates), whatever the attempt. The extension's SQL function
/// `lease_sched.retry_backoff` is this function.
///
/// The doubling is not cut off at a fixed count: with a base of 1 ms and a max of
/// `i32::MAX` ms (the GUC range) the delay keeps doubling until it reaches the max, at
/// attempt 32. (A cut-off at 2^30 left such a backoff at base * 2^30, below max, forever.)
pub fn retry_backoff(attempt: i32, base: i64, max: i64) -> i64 {
    let doublings = (attempt.max(1) - 1) as u32;
    let delay = if base == 0 {
        0
    } else if doublings >= 63 {
        if base > 0 { i64::MAX } else { i64::MIN }
    } else {
        base.saturating_mul(1i64 << doublings)
    };
    delay.min(max)
}

/// The longest error message stored, in characters.
pub const ERROR_MSG_MAX_CHARS: usize = 4000;
/// The largest `result` accepted, in bytes of JSON text.
pub const RESULT_MAX_BYTES: usize = 16 * 1024;

/// Cut `s` to at most `max_chars` characters, never inside a UTF-8 sequence.
pub fn truncate_chars(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((byte_index, _)) => &s[..byte_index],
        None => s,
    }
}


/// Named locks with a TTL (the extension's `lock_acquire` / `lock_heartbeat` /
/// `lock_release`, src/lock/mod.rs): one row per held (or expired, not yet taken over)
/// lock, none once released. The holder proves itself with `lock_token`, a secret drawn
/// for each grant; `fencing_token` is public and drawn from the same sequence as leases.
/// Checked exhaustively in tests/lock_model_check.rs.
pub mod lock {
    use super::DbTime;

    /// A lock row. Secrets and holders are opaque numbers here (a uuid and a text in SQL).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct LockRow {
        pub holder: u32,
        pub lock_token: u64,
        pub fencing_token: i64,
        pub expires_at: DbTime,
        pub ttl: DbTime,
    }

    /// What `lock_acquire` returns (always one row).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum Acquire {
        /// acquired = true: the new secret, the new fencing token and the expiry.
        Acquired { lock_token: u64, fencing_token: i64, expires_at: DbTime },
        /// acquired = false: who holds it and until when.
        Held { holder: u32, expires_at: DbTime },
    }

    /// A lock is expired once the clock reaches `expires_at` (`expires_at <= now`).
    pub fn is_expired(row: &LockRow, now: DbTime) -> bool {
        row.expires_at <= now
    }

    /// `lock_acquire`: take the lock when there is no row (never held, or released) or it
    /// has expired (a takeover: new secret, new fencing token, the caller's ttl); else
    /// report the live holder and leave the row alone.
    pub fn acquire(row: &mut Option<LockRow>, now: DbTime, holder: u32, ttl: DbTime, new_secret: u64, new_fencing: i64) -> Acquire {
        match row {
            Some(r) if !is_expired(r, now) => Acquire::Held { holder: r.holder, expires_at: r.expires_at },
            _ => {
                let expires_at = now + ttl;
                *row = Some(LockRow { holder, lock_token: new_secret, fencing_token: new_fencing, expires_at, ttl });
                Acquire::Acquired { lock_token: new_secret, fencing_token: new_fencing, expires_at }
            }
        }
    }

    /// `lock_heartbeat`: extend by the lock's ttl from now when `secret` holds it. Like the
    /// SQL (and a lease's heartbeat) this revives an expired lock nobody has taken over yet:
    /// a secret is lost only to a takeover or a release.
    pub fn heartbeat(row: &mut Option<LockRow>, secret: u64, now: DbTime) -> bool {
        match row {
            Some(r) if r.lock_token == secret => {
                r.expires_at = now + r.ttl;
                true
            }
            _ => false,
        }
    }

    /// `lock_release`: delete the row when `secret` holds it.
    pub fn release(row: &mut Option<LockRow>, secret: u64) -> bool {
        if row.as_ref().is_some_and(|r| r.lock_token == secret) {
            *row = None;
            true
        } else {
            false
        }
    }
}

/// The planner (`lease_next_plan`): which plan a runner should claim now, and, for a job
/// with a definition (`job_define`), which missed slots to record as SKIPPED first. Pure
/// functions of the latest execution row, the definition and the database clock; the
/// extension's src/planner/ reads the rows and writes what these decide. Checked
/// exhaustively for every misfire policy in tests/planner_model_check.rs.
pub mod planner {
    use super::{DbTime, Status};

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
            LatestPlan { plan_time, status: Status::Success, attempt: 1, max_attempts: 3, next_retry_at: None, stale_after: None }
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
            assert_eq!(decide(Some(&l), now, &p), Decision { skip: vec![r(4 * MIN, 5, SkipReason::Grace)], run: Some(9 * MIN) });
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
}

/// One execution row, as far as the state machine is concerned. Tokens are opaque.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Execution {
    pub status: Status,
    pub attempt: i32,
    pub max_attempts: i32,
    pub allow_stale_reentry: bool,
    pub stale_timeout: DbTime,
    pub stale_after: DbTime,
    pub next_retry_at: Option<DbTime>,
    pub lease_token: u64,
    pub fencing_token: i64,
}

impl Execution {
    pub fn lease(&self) -> LeaseRow {
        LeaseRow {
            status: self.status,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            stale_after: Some(self.stale_after),
            next_retry_at: self.next_retry_at,
            allow_stale_reentry: self.allow_stale_reentry,
        }
    }
}

/// What a claimer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClaimParams {
    pub allow_stale_reentry: bool,
    pub stale_timeout: DbTime,
    pub max_attempts: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    Won,
    Stole,
    Conflicted,
}

impl ClaimOutcome {
    /// The `outcome` column of lease_try_claim.
    pub fn as_sql(self) -> &'static str {
        match self {
            ClaimOutcome::Won => "won",
            ClaimOutcome::Stole => "stole",
            ClaimOutcome::Conflicted => "conflicted",
        }
    }
}

/// `lease_try_claim`: insert (won), take over (stole: attempt + 1, new tokens, the
/// claimer's stale settings, finish fields cleared) or leave the row alone (conflicted).
/// `new_token` and `new_fencing` are what the database would draw for a grant.
pub fn claim(row: &mut Option<Execution>, now: DbTime, p: ClaimParams, new_token: u64, new_fencing: i64) -> ClaimOutcome {
    match decide_claim(row.as_ref().map(|r| r.lease()).as_ref(), now, p.allow_stale_reentry) {
        ClaimDecision::Insert => {
            *row = Some(Execution {
                status: Status::Running,
                attempt: 1,
                max_attempts: p.max_attempts,
                allow_stale_reentry: p.allow_stale_reentry,
                stale_timeout: p.stale_timeout,
                stale_after: now + p.stale_timeout,
                next_retry_at: None,
                lease_token: new_token,
                fencing_token: new_fencing,
            });
            ClaimOutcome::Won
        }
        ClaimDecision::Steal => {
            let r = row.as_mut().expect("steal needs a row");
            r.status = Status::Running;
            r.attempt += 1;
            r.allow_stale_reentry = p.allow_stale_reentry;
            r.stale_timeout = p.stale_timeout;
            r.stale_after = now + p.stale_timeout;
            r.next_retry_at = None;
            r.lease_token = new_token;
            r.fencing_token = new_fencing;
            ClaimOutcome::Stole
        }
        ClaimDecision::Conflict => ClaimOutcome::Conflicted,
    }
}

fn held_by(row: &Option<Execution>, token: u64) -> bool {
    row.as_ref().is_some_and(|r| r.status == Status::Running && r.lease_token == token)
}

/// `lease_heartbeat`: extend a lease held by `token`.
pub fn heartbeat(row: &mut Option<Execution>, token: u64, now: DbTime) -> bool {
    if !held_by(row, token) {
        return false;
    }
    let r = row.as_mut().unwrap();
    r.stale_after = now + r.stale_timeout;
    true
}

/// `lease_finish`: the terminal write of the holder of `token`. A FAILED run with attempts
/// left may be retried `retry_delay` after now (retry_in, or the default backoff).
pub fn finish(row: &mut Option<Execution>, token: u64, now: DbTime, status: Status, retry_delay: DbTime) -> bool {
    if !held_by(row, token) || status == Status::Running {
        return false;
    }
    let r = row.as_mut().unwrap();
    r.status = status;
    r.next_retry_at = (status == Status::Failed && r.attempt < r.max_attempts).then_some(now + retry_delay);
    true
}

/// The sweep's lease pass: an abandoned lease (stale, and nobody may steal it) is FAILED,
/// retryable after `retry_delay` when attempts are left.
pub fn sweep(row: &mut Option<Execution>, now: DbTime, retry_delay: DbTime) -> bool {
    let Some(r) = row.as_mut() else { return false };
    if !is_abandoned(&r.lease(), now) {
        return false;
    }
    r.status = Status::Failed;
    r.next_retry_at = (r.attempt < r.max_attempts).then_some(now + retry_delay);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(stale_after: DbTime) -> LeaseRow {
        LeaseRow {
            status: Status::Running,
            attempt: 1,
            max_attempts: 3,
            stale_after: Some(stale_after),
            next_retry_at: None,
            allow_stale_reentry: true,
        }
    }

    #[test]
    fn no_row_is_inserted() {
        assert_eq!(decide_claim(None, 0, true), ClaimDecision::Insert);
    }

    #[test]
    fn live_lease_conflicts_and_stale_lease_is_stolen() {
        let row = running(100);
        assert_eq!(decide_claim(Some(&row), 100, true), ClaimDecision::Conflict);
        assert_eq!(decide_claim(Some(&row), 101, true), ClaimDecision::Steal);
        assert_eq!(decide_claim(Some(&row), 101, false), ClaimDecision::Conflict);
        let no_reentry = LeaseRow { allow_stale_reentry: false, ..row };
        assert_eq!(decide_claim(Some(&no_reentry), 101, true), ClaimDecision::Conflict);
    }

    #[test]
    fn failed_waits_for_backoff_and_attempts() {
        let row = LeaseRow { status: Status::Failed, next_retry_at: Some(50), ..running(0) };
        assert_eq!(decide_claim(Some(&row), 49, true), ClaimDecision::Conflict);
        assert_eq!(decide_claim(Some(&row), 50, true), ClaimDecision::Steal);
        let asap = LeaseRow { next_retry_at: None, ..row };
        assert_eq!(decide_claim(Some(&asap), 0, false), ClaimDecision::Steal);
        let exhausted = LeaseRow { attempt: 3, ..row };
        assert_eq!(decide_claim(Some(&exhausted), 1000, true), ClaimDecision::Conflict);
    }

    #[test]
    fn success_is_final() {
        let row = LeaseRow { status: Status::Success, ..running(0) };
        assert_eq!(decide_claim(Some(&row), i64::MAX, true), ClaimDecision::Conflict);
    }

    #[test]
    fn skipped_is_final() {
        let row = LeaseRow { status: Status::Skipped, stale_after: None, ..running(0) };
        assert_eq!(decide_claim(Some(&row), i64::MAX, true), ClaimDecision::Conflict);
        assert_eq!(Status::from_sql("SKIPPED"), Some(Status::Skipped));
        assert!(!is_abandoned(&row, i64::MAX));
    }

    #[test]
    fn abandoned_means_stale_and_unstealable() {
        assert!(!is_abandoned(&running(10), 11));
        assert!(is_abandoned(&LeaseRow { allow_stale_reentry: false, ..running(10) }, 11));
        assert!(is_abandoned(&LeaseRow { attempt: 3, ..running(10) }, 11));
        assert!(!is_abandoned(&LeaseRow { attempt: 3, ..running(10) }, 10));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_backoff(1, 10, 1000), 10);
        assert_eq!(retry_backoff(2, 10, 1000), 20);
        assert_eq!(retry_backoff(4, 10, 1000), 80);
        assert_eq!(retry_backoff(50, 10, 1000), 1000);
        assert_eq!(retry_backoff(i32::MAX, i64::MAX / 2, i64::MAX), i64::MAX);
        // base 1 ms, max i32::MAX ms: doubles past 2^30 until it saturates at the max.
        let max = i32::MAX as i64 * 1000;
        assert_eq!(retry_backoff(31, 1000, max), 1000 << 30);
        assert_eq!(retry_backoff(32, 1000, max), max);
        assert_eq!(retry_backoff(i32::MAX, 1000, max), max);
        assert_eq!(retry_backoff(i32::MIN, 1000, max), 1000);
        assert_eq!(retry_backoff(i32::MAX, 0, max), 0);
    }

    #[test]
    fn locks_are_taken_when_free_or_expired_and_guarded_by_their_secret() {
        use lock::*;
        let mut row = None;
        assert_eq!(acquire(&mut row, 0, 1, 10, 100, 1), Acquire::Acquired { lock_token: 100, fencing_token: 1, expires_at: 10 });
        assert_eq!(acquire(&mut row, 9, 2, 10, 101, 2), Acquire::Held { holder: 1, expires_at: 10 });
        assert!(!heartbeat(&mut row, 101, 9));
        assert!(heartbeat(&mut row, 100, 9));
        assert_eq!(row.unwrap().expires_at, 19);
        // expired, not taken over: the heartbeat revives it
        assert!(heartbeat(&mut row, 100, 25));
        assert_eq!(row.unwrap().expires_at, 35);
        assert!(matches!(acquire(&mut row, 35, 2, 5, 102, 3), Acquire::Acquired { fencing_token: 3, expires_at: 40, .. }));
        assert!(!heartbeat(&mut row, 100, 36));
        assert!(!release(&mut row, 100));
        assert!(release(&mut row, 102));
        assert_eq!(row, None);
        assert!(matches!(acquire(&mut row, 36, 1, 5, 103, 4), Acquire::Acquired { .. }));
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 10), "abc");
        let s = "a".repeat(3999) + &"é".repeat(50);
        let cut = truncate_chars(&s, 4000);
        assert_eq!(cut.chars().count(), 4000);
        assert!(cut.ends_with('é'));
    }
}
