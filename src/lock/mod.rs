//! Named single-holder locks with a TTL (leader election), decided on the database clock.
//!
//! A holder proves itself with its secret `lock_token` (random, returned only by the grant);
//! the fencing token is public. Every grant draws its fencing token from the same sequence
//! as leases, and draws it only once the row is ours, with no wait left before the call
//! returns: a token is therefore higher than every token returned before it (a token
//! drawn before a wait could be handed out after a higher one; see `acquire`).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::Uuid;

use crate::clock::{db_clock, timestamptz};
use crate::spi_plans::execute;

pub mod fence;
mod store;
pub use store::LockInfo;

/// The one row lock_acquire returns.
pub struct Acquired {
    pub acquired: bool,
    pub lock_token: Option<Uuid>,
    pub fencing_token: Option<i64>,
    pub holder: Option<String>,
    pub expires_at: Option<TimestampWithTimeZone>,
}

fn acquired(g: store::Granted) -> Acquired {
    Acquired {
        acquired: true,
        lock_token: Some(g.lock_token),
        fencing_token: Some(g.fencing_token),
        holder: Some(g.holder),
        expires_at: Some(g.expires_at),
    }
}

/// Take the lock if it is free, released or expired; else describe the live holder.
/// Two rounds: a lost insert race means a row appeared, which the next round reads.
pub fn acquire(name: &str, holder: &str, ttl: Interval) -> Acquired {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| {
        crate::token_floor::ensure_token_floor(client);
        for _ in 0..2 {
            let args = [name.into(), holder.into(), now.into(), ttl.into()];
            if let Some(mut got) = store::TAKE_OVER.first(client, &args) {
                if let Some(above) = got.redraw_above {
                    crate::token_floor::floor_above(client, above);
                    got = store::REDRAW.first(client, &[name.into()]).expect("the row this call took over");
                }
                // The expired holder never released: tell it (delivered at commit).
                crate::notices::lost(client, format!("lock:{name}"));
                return acquired(got);
            }
            if !execute(client, &store::INSERT_FREE, &args).is_empty() {
                return acquired(store::GRANT_TOKEN.first(client, &[name.into()]).expect("the row this call inserted"));
            }
            // Expired between our two statements: the next round takes it over.
            if let Some(live) = store::HOLDER.first(client, &[name.into()]).filter(|h| h.expires_at > now) {
                return Acquired {
                    acquired: false,
                    lock_token: None,
                    fencing_token: None,
                    holder: Some(live.holder),
                    expires_at: Some(live.expires_at),
                };
            }
        }
        Acquired { acquired: false, lock_token: None, fencing_token: None, holder: None, expires_at: None }
    })
}

/// Extend the lock held by `lock_token`. Like a lease's heartbeat, this also revives an
/// expired lock nobody has taken over yet: the token is lost only to a takeover.
pub fn heartbeat(name: &str, lock_token: Uuid) -> bool {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| {
        execute(client, &store::HEARTBEAT, &[name.into(), lock_token.into(), now.into()]).len() == 1
    })
}

pub fn release(name: &str, lock_token: Uuid) -> bool {
    Spi::connect_mut(|client| execute(client, &store::RELEASE, &[name.into(), lock_token.into()]).len() == 1)
}

pub fn info(name: &str) -> Option<LockInfo> {
    let now = timestamptz(db_clock());
    Spi::connect_mut(|client| store::INFO.first(client, &[name.into(), now.into()]))
}
