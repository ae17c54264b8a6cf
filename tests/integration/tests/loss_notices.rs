//! Loss notices sent by the sweeper (docs/api.md, "Tell the loser at once"): with
//! lease_sched preloaded, a steal or a takeover records its `lease_sched_lost` notice and
//! the sweeper of the database sends it once the steal has committed; nothing is sent for
//! a steal that rolled back, whole or to a savepoint. (Without preload the stealing
//! transaction notifies itself: tests/no_preload.rs.)
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// The pid that sent the lease_sched_lost notice with this payload, if one arrives
/// within `within`. Other tests share the channel; their notices are skipped.
fn notice_from(listener: &mut Client, payload: &str, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut n = listener.notifications();
        match n.timeout_iter(left).next() {
            Ok(Some(note)) if note.payload() == payload => return Some(note.process_id()),
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => panic!("notifications: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

fn make_stale(c: &mut Client, id: uuid::Uuid) {
    c.execute("UPDATE lease_sched.sys_cron_executions SET stale_after = now() - interval '1 second' WHERE id = $1", &[&id])
        .unwrap();
}

/// The pid of this database's sweeper, once it sweeps.
fn sweeper_pid(c: &mut Client) -> i32 {
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            pid = c
                .query_opt(
                    "SELECT sweeper_pid FROM lease_sched.sweeper_status() WHERE state = 'sweeping'",
                    &[],
                )
                .unwrap()
                .and_then(|r| r.get::<_, Option<i32>>(0));
            pid.is_some()
        }),
        "this database's sweeper sweeps"
    );
    pid.unwrap()
}

#[test]
fn the_sweeper_sends_the_notice_of_a_committed_steal_and_none_of_a_rolled_back_savepoint() {
    if native_only(
        "the_sweeper_sends_the_notice_of_a_committed_steal_and_none_of_a_rolled_back_savepoint",
        "the portable edition has no sweeper process: its steals notify inline",
    ) {
        return;
    }
    let mut l = connect();
    l.batch_execute("LISTEN lease_sched_lost").unwrap();
    let mut a = connect();
    let mut thief = connect();
    let sweeper = sweeper_pid(&mut a);
    let thief_pid: i32 = thief.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let job = unique("notice_sweeper");

    // Autocommit: the notice comes from the sweeper's backend, not the thief's.
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut a, held.id());
    assert_eq!(claim(&mut thief, &job, plan(), "thief").outcome, "stole");
    let from = notice_from(&mut l, &held.id().to_string(), Duration::from_secs(5)).expect("the committed steal is notified");
    assert_eq!(from, sweeper, "sent by the sweeper (thief is {thief_pid})");

    // One transaction: a steal rolled back to its savepoint, then a committed one. Only
    // the second is told, and the first holder still holds its lease. (One job each: a
    // stale lease that a later plan of its job superseded is failed by the sweep, which
    // tells its holder.)
    let (j1, j2, j3, j4) = (unique("notice_sp1"), unique("notice_sp2"), unique("notice_sp3"), unique("notice_sp4"));
    let (p1, p2, p3, p4) = (plan(), plan(), plan(), plan());
    let first = claim(&mut a, &j1, p1, "runner-a");
    let second = claim(&mut a, &j2, p2, "runner-a");
    make_stale(&mut a, first.id());
    make_stale(&mut a, second.id());
    thief.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    assert_eq!(claim(&mut thief, &j1, p1, "thief").outcome, "stole");
    thief.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    assert_eq!(claim(&mut thief, &j2, p2, "thief").outcome, "stole");
    // Nested: a savepoint released into one that rolls back drops its notice too.
    let third = claim(&mut a, &j3, p3, "runner-a");
    make_stale(&mut a, third.id());
    thief.batch_execute("SAVEPOINT outer_sp; SAVEPOINT inner_sp").unwrap();
    assert_eq!(claim(&mut thief, &j3, p3, "thief").outcome, "stole");
    thief.batch_execute("RELEASE SAVEPOINT inner_sp; ROLLBACK TO SAVEPOINT outer_sp").unwrap();
    assert_eq!(notice_from(&mut l, &second.id().to_string(), Duration::from_millis(700)), None, "nothing before the commit");
    thief.batch_execute("COMMIT").unwrap();
    assert!(notice_from(&mut l, &second.id().to_string(), Duration::from_secs(5)).is_some(), "the committed steal is told");
    assert_eq!(notice_from(&mut l, &first.id().to_string(), Duration::from_millis(1500)), None, "the rolled-back one is not");
    assert_eq!(notice_from(&mut l, &third.id().to_string(), Duration::from_millis(300)), None, "nor the nested one");
    for held in [&first, &third] {
        a.execute("SELECT lease_sched.lease_fence($1, $2)", &[&held.id(), &held.fencing_token.unwrap()])
            .expect("the holder still holds it");
    }

    // A whole transaction rolled back: nothing, and the queue gave its place back (the
    // next committed steal is still sent by the sweeper).
    let fourth = claim(&mut a, &j4, p4, "runner-a");
    make_stale(&mut a, fourth.id());
    thief.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut thief, &j4, p4, "thief").outcome, "stole");
    thief.batch_execute("ROLLBACK").unwrap();
    assert_eq!(notice_from(&mut l, &fourth.id().to_string(), Duration::from_millis(1500)), None, "a rolled-back steal sends nothing");
    assert_eq!(claim(&mut thief, &j4, p4, "thief").outcome, "stole");
    assert_eq!(notice_from(&mut l, &fourth.id().to_string(), Duration::from_secs(5)), Some(sweeper));
}

#[test]
fn a_lock_takeover_is_told_by_the_sweeper() {
    if native_only("a_lock_takeover_is_told_by_the_sweeper", "the portable edition has no sweeper process") {
        return;
    }
    let mut l = connect();
    l.batch_execute("LISTEN lease_sched_lost").unwrap();
    let mut a = connect();
    let mut b = connect();
    let sweeper = sweeper_pid(&mut a);
    let lock = unique("notice_lock");
    a.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-a', '1 hour')", &[&lock]).unwrap();
    a.execute("UPDATE lease_sched.locks SET expires_at = now() - interval '1 second' WHERE name = $1", &[&lock]).unwrap();
    let got: bool = b.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-b', '1 hour')", &[&lock]).unwrap().get(0);
    assert!(got, "takeover");
    assert_eq!(notice_from(&mut l, &format!("lock:{lock}"), Duration::from_secs(5)), Some(sweeper));

    // A lock name too long for the shared queue's entries: told inline, by the taker.
    let long = format!("{}{}", unique("notice_long"), "x".repeat(200));
    a.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-a', '1 hour')", &[&long]).unwrap();
    a.execute("UPDATE lease_sched.locks SET expires_at = now() - interval '1 second' WHERE name = $1", &[&long]).unwrap();
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let got: bool = b.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-b', '1 hour')", &[&long]).unwrap().get(0);
    assert!(got, "takeover");
    assert_eq!(notice_from(&mut l, &format!("lock:{long}"), Duration::from_secs(5)), Some(b_pid));
}
