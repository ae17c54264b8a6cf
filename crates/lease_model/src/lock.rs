//! Named locks with a TTL (the extension's `lock_acquire` / `lock_heartbeat` /
//! `lock_release`, src/lock/mod.rs): one row per held (or expired, not yet taken over)
//! lock, none once released. The holder proves itself with `lock_token`, a secret drawn
//! for each grant; `fencing_token` is public and drawn from the same sequence as leases.
//! Checked exhaustively in tests/lock_model_check.rs.
use crate::DbTime;

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
pub fn acquire(
    row: &mut Option<LockRow>,
    now: DbTime,
    holder: u32,
    ttl: DbTime,
    new_secret: u64,
    new_fencing: i64,
) -> Acquire {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_taken_when_free_or_expired_and_guarded_by_their_secret() {
        let mut row = None;
        assert_eq!(
            acquire(&mut row, 0, 1, 10, 100, 1),
            Acquire::Acquired { lock_token: 100, fencing_token: 1, expires_at: 10 }
        );
        assert_eq!(acquire(&mut row, 9, 2, 10, 101, 2), Acquire::Held { holder: 1, expires_at: 10 });
        assert!(!heartbeat(&mut row, 101, 9));
        assert!(heartbeat(&mut row, 100, 9));
        assert_eq!(row.unwrap().expires_at, 19);
        // expired, not taken over: the heartbeat revives it
        assert!(heartbeat(&mut row, 100, 25));
        assert_eq!(row.unwrap().expires_at, 35);
        assert!(matches!(
            acquire(&mut row, 35, 2, 5, 102, 3),
            Acquire::Acquired { fencing_token: 3, expires_at: 40, .. }
        ));
        assert!(!heartbeat(&mut row, 100, 36));
        assert!(!release(&mut row, 100));
        assert!(release(&mut row, 102));
        assert_eq!(row, None);
        assert!(matches!(acquire(&mut row, 36, 1, 5, 103, 4), Acquire::Acquired { .. }));
    }
}
