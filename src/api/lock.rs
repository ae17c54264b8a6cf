//! lock_acquire, lock_heartbeat, lock_release, lock_info (declared in sql/locks.sql).
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;

use super::args::{non_empty, positive_interval, required};
use crate::lock;

#[pg_extern(sql = false)]
fn lock_acquire(lock_name: Option<&str>, holder: Option<&str>, ttl: Option<Interval>) -> Option<i64> {
    lock::acquire(non_empty(lock_name, "lock_name"), non_empty(holder, "holder"), positive_interval(ttl, "ttl"))
}

#[pg_extern(sql = false)]
fn lock_heartbeat(lock_name: Option<&str>, fencing_token: Option<i64>) -> bool {
    lock::heartbeat(non_empty(lock_name, "lock_name"), required(fencing_token, "fencing_token"))
}

#[pg_extern(sql = false)]
fn lock_release(lock_name: Option<&str>, fencing_token: Option<i64>) -> bool {
    lock::release(non_empty(lock_name, "lock_name"), required(fencing_token, "fencing_token"))
}

#[pg_extern(sql = false)]
fn lock_info(
    lock_name: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(holder, String),
        name!(fencing_token, i64),
        name!(acquired_at, TimestampWithTimeZone),
        name!(heartbeat_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
        name!(expired, bool),
    ),
> {
    let info = lock::info(non_empty(lock_name, "lock_name"));
    TableIterator::new(info.map(|i| (i.holder, i.fencing_token, i.acquired_at, i.heartbeat_at, i.expires_at, i.expired)))
}
