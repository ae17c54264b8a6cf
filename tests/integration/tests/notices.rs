//! NOTIFY lease_sched_lost (docs/api.md, "Fences"): at the commit of a steal, a takeover and
//! a sweep that fails an abandoned lease, the deposed holder is told on the channel
//! `lease_sched_lost`; a rolled-back steal or takeover, a retry of a FAILED run, a release
//! and a fresh acquire send nothing. With lease_sched preloaded, a steal or a takeover
//! records its notice and the sweeper of the database sends it once the steal has committed
//! (off the stealer's commit path); nothing is sent for a steal rolled back whole or to a
//! savepoint. Without preload the stealing transaction notifies itself (no_preload.rs).
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// The pid that sent the lease_sched_lost notification with this payload, if one arrives
/// within `within`. Other tests share the channel; their notifications are skipped.
fn notice_from(listener: &mut Client, payload: &str, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut n = listener.notifications();
        match n.timeout_iter(left).next() {
            Ok(Some(note)) => {
                assert_eq!(note.channel(), "lease_sched_lost");
                if note.payload() == payload {
                    return Some(note.process_id());
                }
            }
            Ok(None) => return None,
            Err(e) => panic!("notifications: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Whether a lease_sched_lost notification with this payload arrives within `within`.
fn notified(listener: &mut Client, payload: &str, within: Duration) -> bool {
    notice_from(listener, payload, within).is_some()
}

fn listener() -> Client {
    let mut l = connect();
    l.batch_execute("LISTEN lease_sched_lost").unwrap();
    l
}

#[test]
fn a_steal_notifies_the_loser_at_commit_and_a_rolled_back_steal_sends_nothing() {
    let mut l = listener();
    let mut a = connect();
    let mut thief = connect();
    let job = unique("notify_steal");

    // Committed steal, autocommit: notified within a second.
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut a, held.id());
    let stolen = claim(&mut thief, &job, plan(), "thief");
    assert_eq!(stolen.outcome, "stole");
    let at = Instant::now();
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)), "steal notified within 1 s");
    eprintln!("steal notification after {:?}", at.elapsed());

    // A steal in an open transaction: nothing before the commit, then at once.
    let p2 = plan() + chrono::Duration::hours(1);
    let held = claim(&mut a, &job, p2, "runner-a");
    make_stale(&mut a, held.id());
    thief.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut thief, &job, p2, "thief").outcome, "stole");
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(700)), "nothing before the steal commits");
    thief.batch_execute("COMMIT").unwrap();
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)), "notified at the commit");

    // A rolled-back steal sends nothing; the lease stays with its holder, and a later
    // committed steal of it is notified (the listener was live all along).
    let p3 = plan() + chrono::Duration::hours(2);
    let held = claim(&mut a, &job, p3, "runner-a");
    make_stale(&mut a, held.id());
    thief.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut thief, &job, p3, "thief").outcome, "stole");
    thief.batch_execute("ROLLBACK").unwrap();
    assert!(
        !notified(&mut l, &held.id().to_string(), Duration::from_millis(1500)),
        "a rolled-back steal sends nothing"
    );
    lease_fence(&mut a, held.id(), held.fencing_token.unwrap()).expect("the holder still holds it");
    assert_eq!(claim(&mut thief, &job, p3, "thief").outcome, "stole");
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)));

    // A retry of a FAILED run deposes nobody: no notification.
    let p4 = plan() + chrono::Duration::hours(3);
    let held = claim(&mut a, &job, p4, "runner-a");
    assert!(finish_failed(&mut a, held.id(), held.token(), Duration::ZERO));
    assert_eq!(claim(&mut thief, &job, p4, "thief").outcome, "stole");
    assert!(
        !notified(&mut l, &held.id().to_string(), Duration::from_millis(700)),
        "a retry of a FAILED run sends nothing"
    );
}

#[test]
fn with_notify_lost_off_a_steal_sends_nothing_and_only_a_superuser_may_turn_it_off() {
    if native_only("with_notify_lost_off_a_steal_sends_nothing_and_only_a_superuser_may_turn_it_off", "lease_sched.notify_lost is a superuser-only setting of the library; in the portable edition it is a placeholder any role may set for its own session (docs/portable.md)") {
        return;
    }
    let mut l = listener();
    let mut a = connect();
    let mut thief = connect();
    let job = unique("notify_off");
    thief.batch_execute("SET lease_sched.notify_lost = off").unwrap();
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut a, held.id());
    assert_eq!(claim(&mut thief, &job, plan(), "thief").outcome, "stole");
    assert!(
        !notified(&mut l, &held.id().to_string(), Duration::from_millis(1000)),
        "notify_lost = off: no notification"
    );
    // Back on: the next steal is notified again.
    thief.batch_execute("RESET lease_sched.notify_lost").unwrap();
    let p2 = plan() + chrono::Duration::hours(1);
    let held = claim(&mut a, &job, p2, "runner-a");
    make_stale(&mut a, held.id());
    assert_eq!(claim(&mut thief, &job, p2, "thief").outcome, "stole");
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)));
    // A role that is not superuser cannot silence its steals.
    let role = unique("notify_runner");
    a.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    let mut r = connect_as(&role);
    let e =
        r.batch_execute("SET lease_sched.notify_lost = off").expect_err("a runner role may not turn notifications off");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    drop(r);
    a.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

#[test]
fn a_takeover_notifies_lock_name_and_a_rolled_back_takeover_sends_nothing() {
    let mut l = listener();
    let mut a = connect();
    let mut b = connect();
    let lock = unique("notify-lock");
    let payload = format!("lock:{lock}");

    lock_acquire(&mut a, &lock, "node-a").unwrap();
    expire_lock(&mut a, &lock);
    b.batch_execute("BEGIN").unwrap();
    lock_acquire(&mut b, &lock, "node-b").expect("takeover");
    b.batch_execute("ROLLBACK").unwrap();
    assert!(!notified(&mut l, &payload, Duration::from_millis(1500)), "a rolled-back takeover sends nothing");
    lock_acquire(&mut b, &lock, "node-b").expect("takeover");
    assert!(notified(&mut l, &payload, Duration::from_secs(1)), "takeover notified within 1 s");

    // Release and a fresh acquire depose nobody.
    let name2 = unique("notify-free");
    let (t, _) = lock_acquire(&mut a, &name2, "node-a").unwrap();
    let released: bool = a.query_one("SELECT lease_sched.lock_release($1, $2)", &[&name2, &t]).unwrap().get(0);
    assert!(released);
    lock_acquire(&mut b, &name2, "node-b").unwrap();
    assert!(!notified(&mut l, &format!("lock:{name2}"), Duration::from_millis(700)), "release + acquire sends nothing");
}

#[test]
fn the_sweep_failing_an_abandoned_lease_notifies_its_holder() {
    let mut l = listener();
    let mut c = connect();
    let lease = abandoned_lease(&mut c); // stale in 200 ms, may not be stolen
    std::thread::sleep(Duration::from_millis(300));
    // The background sweeper (every second) or this sweep fails it; either way the holder
    // hears of it within a second of this sweep's return.
    c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    assert!(notified(&mut l, &lease.id().to_string(), Duration::from_secs(1)), "sweep notified");
    assert_eq!(status_of(&mut c, lease.id()), "FAILED");
}

fn make_stale(c: &mut Client, id: uuid::Uuid) {
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET stale_after = now() - interval '1 second' WHERE id = $1",
        &[&id],
    )
    .unwrap();
}

/// The pid of this database's sweeper, once it sweeps.
fn sweeping_sweeper_pid(c: &mut Client) -> i32 {
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            pid = c
                .query_opt("SELECT sweeper_pid FROM lease_sched.sweeper_status() WHERE state = 'sweeping'", &[])
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
    let sweeper = sweeping_sweeper_pid(&mut a);
    let thief_pid: i32 = thief.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let job = unique("notice_sweeper");

    // Autocommit: the notice comes from the sweeper's backend, not the thief's.
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut a, held.id());
    assert_eq!(claim(&mut thief, &job, plan(), "thief").outcome, "stole");
    let from =
        notice_from(&mut l, &held.id().to_string(), Duration::from_secs(5)).expect("the committed steal is notified");
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
    assert_eq!(
        notice_from(&mut l, &second.id().to_string(), Duration::from_millis(700)),
        None,
        "nothing before the commit"
    );
    thief.batch_execute("COMMIT").unwrap();
    assert!(
        notice_from(&mut l, &second.id().to_string(), Duration::from_secs(5)).is_some(),
        "the committed steal is told"
    );
    assert_eq!(
        notice_from(&mut l, &first.id().to_string(), Duration::from_millis(1500)),
        None,
        "the rolled-back one is not"
    );
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
    assert_eq!(
        notice_from(&mut l, &fourth.id().to_string(), Duration::from_millis(1500)),
        None,
        "a rolled-back steal sends nothing"
    );
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
    let sweeper = sweeping_sweeper_pid(&mut a);
    let lock = unique("notice_lock");
    a.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-a', '1 hour')", &[&lock]).unwrap();
    a.execute("UPDATE lease_sched.locks SET expires_at = now() - interval '1 second' WHERE name = $1", &[&lock])
        .unwrap();
    let got: bool =
        b.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-b', '1 hour')", &[&lock]).unwrap().get(0);
    assert!(got, "takeover");
    assert_eq!(notice_from(&mut l, &format!("lock:{lock}"), Duration::from_secs(5)), Some(sweeper));

    // A lock name too long for the shared queue's entries: told inline, by the taker.
    let long = format!("{}{}", unique("notice_long"), "x".repeat(200));
    a.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-a', '1 hour')", &[&long]).unwrap();
    a.execute("UPDATE lease_sched.locks SET expires_at = now() - interval '1 second' WHERE name = $1", &[&long])
        .unwrap();
    let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let got: bool =
        b.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-b', '1 hour')", &[&long]).unwrap().get(0);
    assert!(got, "takeover");
    assert_eq!(notice_from(&mut l, &format!("lock:{long}"), Duration::from_secs(5)), Some(b_pid));
}
