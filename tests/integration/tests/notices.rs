//! NOTIFY lease_sched_lost (docs/api.md, "Fences"): at the commit of a steal, a takeover and
//! a sweep that fails an abandoned lease, the deposed holder is told on the channel
//! `lease_sched_lost`; a rolled-back steal or takeover, a retry of a FAILED run, a release
//! and a fresh acquire send nothing.
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// Wait up to `within` for a lease_sched_lost notification with this payload. Other tests
/// share the channel; their notifications are skipped.
fn notified(listener: &mut Client, payload: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(left);
        match it.next() {
            Ok(Some(note)) => {
                assert_eq!(note.channel(), "lease_sched_lost");
                if note.payload() == payload {
                    return true;
                }
            }
            Err(e) => panic!("notifications: {e}"),
            Ok(None) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
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
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(1500)), "a rolled-back steal sends nothing");
    lease_fence(&mut a, held.id(), held.fencing_token.unwrap()).expect("the holder still holds it");
    assert_eq!(claim(&mut thief, &job, p3, "thief").outcome, "stole");
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)));

    // A retry of a FAILED run deposes nobody: no notification.
    let p4 = plan() + chrono::Duration::hours(3);
    let held = claim(&mut a, &job, p4, "runner-a");
    assert!(finish_failed(&mut a, held.id(), held.token(), Duration::ZERO));
    assert_eq!(claim(&mut thief, &job, p4, "thief").outcome, "stole");
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(700)), "a retry of a FAILED run sends nothing");
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
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(1000)), "notify_lost = off: no notification");
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
    let e = r.batch_execute("SET lease_sched.notify_lost = off").expect_err("a runner role may not turn notifications off");
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
