//! The launcher and the sweeper come back after being terminated
//! (in either order), cancelling the launcher changes nothing (exactly one sweeper, same
//! launcher), and a fast shutdown finishes while a prepared transaction holds a runtime row
//! whose touch is buffered. Some tests restart the server, so they run one at a time (`serial()`).
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::Client;

fn pids(c: &mut Client, backend_type: &str) -> Vec<i32> {
    c.query("SELECT pid FROM pg_stat_activity WHERE backend_type = $1 ORDER BY pid", &[&backend_type])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn launchers(c: &mut Client) -> Vec<i32> {
    pids(c, "lease_sched launcher")
}

fn sweepers(c: &mut Client) -> Vec<i32> {
    pids(c, "lease_sched sweeper")
}

fn terminate(c: &mut Client, pid: i32) {
    let ok: bool = c.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap().get(0);
    assert!(ok, "terminate {pid}");
}

/// Both workers are back, with pids other than `gone`, and the sweeper sweeps.
fn both_back(c: &mut Client, gone: &[i32]) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            let (l, s) = (launchers(c), sweepers(c));
            l.len() == 1 && s.len() == 1 && !gone.contains(&l[0]) && !gone.contains(&s[0])
        }),
        "launcher and sweeper are back: launchers {:?}, sweepers {:?} (terminated {gone:?})",
        launchers(c),
        sweepers(c)
    );
    exactly_one_sweeper_for(c, Duration::from_secs(3));
    let lease = abandoned_lease(c);
    assert!(wait_until(Duration::from_secs(15), || status_of(c, lease.id()) == "FAILED"), "and sweeping");
}

fn exactly_one_sweeper_for(c: &mut Client, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let s = sweepers(c);
        assert_eq!(s.len(), 1, "exactly one sweeper: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ready(c: &mut Client) {
    assert!(
        wait_until(Duration::from_secs(20), || launchers(c).len() == 1 && sweepers(c).len() == 1),
        "the workers run"
    );
}

#[test]
fn a_terminated_launcher_then_sweeper_both_come_back() {
    let _g = serial();
    let mut c = connect();
    ready(&mut c);
    let launcher = launchers(&mut c)[0];
    terminate(&mut c, launcher);
    assert!(
        wait_until(Duration::from_secs(10), || launchers(&mut c).first().is_some_and(|&p| p != launcher)),
        "the launcher comes back"
    );
    let sweeper = sweepers(&mut c)[0];
    terminate(&mut c, sweeper);
    both_back(&mut c, &[launcher, sweeper]);
}

#[test]
fn a_terminated_sweeper_then_launcher_both_come_back() {
    let _g = serial();
    let mut c = connect();
    ready(&mut c);
    let (launcher, sweeper) = (launchers(&mut c)[0], sweepers(&mut c)[0]);
    terminate(&mut c, sweeper);
    terminate(&mut c, launcher);
    both_back(&mut c, &[launcher, sweeper]);
    // And both at once, launcher first.
    let (launcher, sweeper) = (launchers(&mut c)[0], sweepers(&mut c)[0]);
    terminate(&mut c, launcher);
    terminate(&mut c, sweeper);
    both_back(&mut c, &[launcher, sweeper]);
}

#[test]
fn cancelling_the_launcher_changes_nothing() {
    let _g = serial();
    let mut c = connect();
    ready(&mut c);
    let (launcher, sweeper) = (launchers(&mut c)[0], sweepers(&mut c)[0]);
    for _ in 0..5 {
        let sent: bool = c.query_one("SELECT pg_cancel_backend($1)", &[&launcher]).unwrap().get(0);
        assert!(sent, "the launcher {launcher} is still there (a cancel must not make it error out and restart)");
        std::thread::sleep(Duration::from_millis(600));
    }
    exactly_one_sweeper_for(&mut c, Duration::from_secs(4));
    assert_eq!(launchers(&mut c), vec![launcher], "the launcher ignored the cancels");
    assert_eq!(sweepers(&mut c), vec![sweeper], "and kept its one sweeper");
    // Cancelling the sweeper is ignored too.
    for _ in 0..3 {
        c.query_one("SELECT pg_cancel_backend($1)", &[&sweeper]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    exactly_one_sweeper_for(&mut c, Duration::from_secs(2));
    let lease = abandoned_lease(&mut c);
    assert!(wait_until(Duration::from_secs(15), || status_of(&mut c, lease.id()) == "FAILED"), "still sweeping");
    // Terminating the one sweeper does not close the touch buffer for good.
    let s = sweepers(&mut c)[0];
    terminate(&mut c, s);
    both_back(&mut c, &[sweeper]);
    let id = register_runtime(&mut c);
    flush(&mut c);
    let buffered_before = stat(&mut c, "touches_buffered");
    assert!(touch(&mut c, id));
    assert_eq!(stat(&mut c, "touches_buffered"), buffered_before + 1, "touches are buffered again");
    flush(&mut c);
}

/// A fast shutdown finishes although a prepared transaction holds a runtime row whose touch
/// is buffered (an exit drain that waits for that row would wait forever), and the touch
/// survives.
#[test]
fn a_fast_shutdown_finishes_while_a_prepared_transaction_holds_a_buffered_runtime() {
    let _g = serial();
    let mut c = connect();
    let max: String = c.query_one("SHOW max_prepared_transactions", &[]).unwrap().get(0);
    if max == "0" {
        skip(
            "a_fast_shutdown_finishes_while_a_prepared_transaction_holds_a_buffered_runtime",
            "max_prepared_transactions = 0 in the test cluster",
        );
        return;
    }
    ready(&mut c);
    let id = register_runtime(&mut c);
    set_last_seen_ago(&mut c, id, 120);
    flush(&mut c);
    assert!(touch(&mut c, id));
    assert_eq!(pending(&mut c), 1);
    let gid = unique("h3gid");
    let mut holder = connect();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM lease_sched.runtimes WHERE id = '{id}' FOR UPDATE; PREPARE TRANSACTION '{gid}'"
        ))
        .unwrap();
    drop(holder);
    drop(c);
    let started = Instant::now();
    pg_ctl(&["-m", "fast", "-t", "60", "stop"]);
    let took = started.elapsed();
    pg_ctl(&["start"]);
    let mut c = wait_for_server();
    c.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")).unwrap();
    assert!(took < Duration::from_secs(10), "the fast shutdown took {took:?}");
    ready(&mut c);
    // The row was locked, so the drain could not write its touch: the sweeper saved it in
    // the data directory, and the new sweeper wrote it back once the lock was gone (kept only
    // in shared memory, it would be lost with it).
    assert!(
        wait_until(Duration::from_secs(15), || {
            flush(&mut c);
            runtime_state(&mut c, id).1 < 60.0
        }),
        "the touch acknowledged before the shutdown is kept"
    );
}
