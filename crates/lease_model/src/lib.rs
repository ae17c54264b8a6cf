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
}

impl Status {
    pub fn as_sql(self) -> &'static str {
        match self {
            Status::Running => "RUNNING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
        }
    }

    pub fn from_sql(s: &str) -> Option<Status> {
        match s {
            "RUNNING" => Some(Status::Running),
            "SUCCESS" => Some(Status::Success),
            "FAILED" => Some(Status::Failed),
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
        Status::Success => false,
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
