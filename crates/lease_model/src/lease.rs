//! The lease state machine: what a claim decides about an execution row (`decide_claim`,
//! which the extension runs), and the whole-row transitions its SQL implements
//! (src/lease/store.rs in the extension): `claim`, `heartbeat`, `finish`, `sweep`.
//! Checked exhaustively in tests/model_check.rs.
use crate::DbTime;

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
        if base > 0 {
            i64::MAX
        } else {
            i64::MIN
        }
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
pub fn claim(
    row: &mut Option<Execution>,
    now: DbTime,
    p: ClaimParams,
    new_token: u64,
    new_fencing: i64,
) -> ClaimOutcome {
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
    fn truncation_respects_characters() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("abc", 10), "abc");
        let s = "a".repeat(3999) + &"é".repeat(50);
        let cut = truncate_chars(&s, 4000);
        assert_eq!(cut.chars().count(), 4000);
        assert!(cut.ends_with('é'));
    }
}
