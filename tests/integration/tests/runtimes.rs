//! Runtimes, the shared touch buffer and the background sweeper, against the real
//! preloaded worker (in the test cluster: sweep_interval = 1s, runtime_offline_after = 20min,
//! touch_flush_interval = 10min unless a test changes it): buffered touches survive failed
//! and rolled-back flushes and locked rows; the sweep fails abandoned and superseded leases,
//! survives errors, locked rows and overflowing backoffs, and prunes only what may not run
//! again. Tests that look at the buffer or wait for the sweep share them, so they take
//! `serial()`.
use std::thread;
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::Client;
use uuid::Uuid;

/// The buffer and the sweeper to this test alone (`serial()`), a connection, and a runtime
/// registered just now.
fn alone_with_a_runtime() -> (std::sync::MutexGuard<'static, ()>, Client, Uuid) {
    let guard = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
    (guard, c, id)
}

#[test]
fn a_silent_runtime_is_marked_offline_by_the_worker() {
    let (_g, mut c, id) = alone_with_a_runtime();
    set_last_seen_ago(&mut c, id, 3600);
    assert!(wait_until(Duration::from_secs(10), || runtime_state(&mut c, id).0 == "offline"));
}

#[test]
fn a_buffered_touch_rescues_a_silent_runtime_and_is_written_by_the_sweep() {
    let (_g, mut c, id) = alone_with_a_runtime();
    flush(&mut c);
    set_last_seen_ago(&mut c, id, 3600);
    assert!(touch(&mut c, id));
    assert_eq!(pending(&mut c), 1, "the touch waits in the buffer");
    thread::sleep(Duration::from_millis(2500)); // two sweeps
    let (status, ago) = runtime_state(&mut c, id);
    assert_eq!(status, "online");
    assert!(ago < 10.0, "the sweep wrote the pending touch instead of judging it silent ({ago}s)");
    assert_eq!(pending(&mut c), 0);
}

#[test]
fn a_buffered_touch_of_a_healthy_runtime_waits_for_the_flush() {
    let (_g, mut c, id) = alone_with_a_runtime();
    flush(&mut c);
    set_last_seen_ago(&mut c, id, 60); // inside the offline window: not a sweep candidate
    assert!(touch(&mut c, id));
    thread::sleep(Duration::from_millis(2500)); // sweeps pass; the flush interval does not
    let (_, ago) = runtime_state(&mut c, id);
    assert!(ago > 55.0, "sweeps must not flush the whole buffer ({ago}s)");
    assert_eq!(pending(&mut c), 1);
    assert_eq!(flush(&mut c), 1);
    assert!(runtime_state(&mut c, id).1 < 5.0);
}

#[test]
fn the_worker_flushes_the_whole_buffer_every_flush_interval() {
    let (_g, mut c, id) = alone_with_a_runtime();
    flush(&mut c);
    set_last_seen_ago(&mut c, id, 60);
    assert!(touch(&mut c, id));
    c.batch_execute("ALTER SYSTEM SET lease_sched.touch_flush_interval = '1s'").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let flushed = wait_until(Duration::from_secs(10), || runtime_state(&mut c, id).1 < 30.0);
    c.batch_execute("ALTER SYSTEM RESET lease_sched.touch_flush_interval").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(flushed, "a sweep wrote the buffer once the interval passed");
    assert_eq!(pending(&mut c), 0);
}

#[test]
fn fifty_concurrent_touches_of_one_runtime_leave_one_pending_entry() {
    let (_g, mut c, id) = alone_with_a_runtime();
    flush(&mut c);
    let handles: Vec<_> = (0..50)
        .map(|_| {
            thread::spawn(move || {
                let mut c = connect();
                assert!(touch(&mut c, id));
            })
        })
        .collect();
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(pending(&mut c), 1);
    assert_eq!(flush(&mut c), 1);
}

#[test]
fn flushing_an_empty_buffer_writes_nothing() {
    let _g = serial();
    let mut c = connect();
    flush(&mut c);
    assert_eq!(flush(&mut c), 0);
    assert_eq!(pending(&mut c), 0);
}

#[test]
fn a_runtime_raced_to_offline_stays_offline_until_its_next_beat() {
    let (_g, mut c, id) = alone_with_a_runtime();
    flush(&mut c);
    assert!(touch(&mut c, id));
    c.execute("UPDATE lease_sched.runtimes SET status = 'offline' WHERE id = $1", &[&id]).unwrap();
    assert_eq!(flush(&mut c), 0, "the flush is guarded by status = 'online'");
    assert_eq!(runtime_state(&mut c, id).0, "offline");
    assert!(touch(&mut c, id), "the next beat takes the synchronous path");
    assert_eq!(runtime_state(&mut c, id).0, "online");
}

// A runtime touched before is known online: its touches are buffered without reading the
// row. Whatever takes the row out of online must undo that, or the runtime would keep
// beating into the buffer while it stays offline.
#[test]
fn a_runtime_the_sweep_marked_offline_comes_back_at_its_next_touch() {
    let (_g, mut c, id) = alone_with_a_runtime();
    for _ in 0..3 {
        assert!(touch(&mut c, id)); // read online, then known online
    }
    flush(&mut c);
    set_last_seen_ago(&mut c, id, 3600);
    assert!(wait_until(Duration::from_secs(10), || runtime_state(&mut c, id).0 == "offline"));
    assert!(touch(&mut c, id));
    assert_eq!(runtime_state(&mut c, id).0, "online", "the touch after the sweep takes the synchronous path");
    assert!(touch(&mut c, id));
    assert_eq!(runtime_state(&mut c, id).0, "online");
}

#[test]
fn a_deleted_runtime_is_unknown_to_its_next_touch() {
    let (_g, mut c, id) = alone_with_a_runtime();
    assert!(touch(&mut c, id));
    assert!(touch(&mut c, id));
    flush(&mut c);
    c.execute("DELETE FROM lease_sched.runtimes WHERE id = $1", &[&id]).unwrap();
    assert!(!touch(&mut c, id), "an unknown id is false, known online before or not");
}

#[test]
fn an_offline_write_in_replica_mode_or_rolled_back_keeps_touches_right() {
    let (_g, mut c, id) = alone_with_a_runtime();
    assert!(touch(&mut c, id));
    assert!(touch(&mut c, id));
    flush(&mut c);
    // A rolled-back offline write changes nothing the touch relies on.
    c.batch_execute(&format!("BEGIN; UPDATE lease_sched.runtimes SET status = 'offline' WHERE id = '{id}'; ROLLBACK;"))
        .unwrap();
    assert!(touch(&mut c, id));
    assert_eq!(runtime_state(&mut c, id).0, "online");
    // A restore or replication apply writes with session_replication_role = replica.
    c.batch_execute(&format!(
        "SET session_replication_role = replica; UPDATE lease_sched.runtimes SET status = 'offline' WHERE id = '{id}'; \
         RESET session_replication_role;"
    ))
    .unwrap();
    assert!(touch(&mut c, id));
    assert_eq!(runtime_state(&mut c, id).0, "online");
    // The runtime's own transaction flips it online and touches again before it commits,
    // then rolls back: the second touch must not leave it known online.
    c.execute("UPDATE lease_sched.runtimes SET status = 'offline' WHERE id = $1", &[&id]).unwrap();
    c.batch_execute(&format!(
        "BEGIN; SELECT lease_sched.runtime_touch('{id}'); SELECT lease_sched.runtime_touch('{id}'); ROLLBACK;"
    ))
    .unwrap();
    assert_eq!(runtime_state(&mut c, id).0, "offline");
    assert!(touch(&mut c, id));
    assert_eq!(runtime_state(&mut c, id).0, "online");
}

#[test]
fn touch_batch_bumps_online_rows_and_returns_the_rest() {
    let _g = serial();
    let mut c = connect();
    let online: Vec<uuid::Uuid> = (0..300).map(|_| register_runtime(&mut c)).collect();
    let offline: Vec<uuid::Uuid> = (0..50).map(|_| register_runtime(&mut c)).collect();
    c.execute("UPDATE lease_sched.runtimes SET status = 'offline', last_seen_at = now() - interval '1 day' WHERE id = ANY($1)", &[&offline])
        .unwrap();
    for id in &online {
        set_last_seen_ago(&mut c, *id, 100);
    }
    let unknown: Vec<uuid::Uuid> = (0..20).map(|_| uuid::Uuid::new_v4()).collect();
    let mut ids: Vec<uuid::Uuid> = online.iter().chain(&offline).chain(&unknown).copied().collect();
    ids.extend_from_slice(&online[..10]); // duplicates are fine
    ids.extend_from_slice(&unknown[..5]);
    let untouched: Vec<uuid::Uuid> = c.query_one("SELECT lease_sched.runtime_touch_batch($1)", &[&ids]).unwrap().get(0);
    let mut expected: Vec<_> = offline.iter().chain(&unknown).copied().collect();
    expected.sort();
    let mut got = untouched.clone();
    got.sort();
    assert_eq!(got, expected);
    let fresh: i64 = c
        .query_one(
            "SELECT count(*) FROM lease_sched.runtimes WHERE id = ANY($1) AND last_seen_at > now() - interval '5 s'",
            &[&online],
        )
        .unwrap()
        .get(0);
    assert_eq!(fresh, 300);
    let still_offline: i64 = c
        .query_one("SELECT count(*) FROM lease_sched.runtimes WHERE id = ANY($1) AND status = 'offline' AND last_seen_at < now() - interval '1 hour'", &[&offline])
        .unwrap()
        .get(0);
    assert_eq!(still_offline, 50);
    let e = c.query("SELECT lease_sched.runtime_touch_batch(ARRAY[gen_random_uuid(), NULL])", &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "22004");
}

#[test]
fn abandoned_leases_are_failed_by_the_worker_and_stealable_ones_are_left() {
    let _g = serial();
    let mut c = connect();
    let short = |reentry, attempts| ClaimArgs {
        stale_timeout: Duration::from_millis(300),
        max_attempts: attempts,
        allow_stale_reentry: reentry,
    };
    let job = unique("abandon");
    let no_reentry = claim_with(&mut c, &job, plan(), "r1", &short(false, 3));
    let last_attempt = claim_with(&mut c, &job, plan() + chrono::Duration::minutes(1), "r1", &short(true, 1));
    let stealable = claim_with(&mut c, &job, plan() + chrono::Duration::minutes(2), "r1", &short(true, 3));
    assert!(wait_until(Duration::from_secs(10), || {
        status_of(&mut c, no_reentry.id()) == "FAILED" && status_of(&mut c, last_attempt.id()) == "FAILED"
    }));
    let code: String = c
        .query_one("SELECT error_code FROM lease_sched.sys_cron_executions WHERE id = $1", &[&no_reentry.id()])
        .unwrap()
        .get(0);
    assert_eq!(code, "stale_timeout");
    assert_eq!(status_of(&mut c, stealable.id()), "RUNNING", "a stealable stale lease waits for a thief");
    assert_eq!(claim(&mut c, &job, plan() + chrono::Duration::minutes(2), "r2").outcome, "stole");
}

#[test]
fn a_locked_row_does_not_hold_up_the_sweep_of_the_others() {
    let _g = serial();
    let mut c = connect();
    let (locked, free) = (abandoned_lease(&mut c), abandoned_lease(&mut c));
    let mut locker = connect();
    let mut tx = locker.transaction().unwrap();
    tx.query("SELECT 1 FROM lease_sched.sys_cron_executions WHERE id = $1 FOR UPDATE", &[&locked.id()]).unwrap();
    assert!(wait_until(Duration::from_secs(10), || status_of(&mut c, free.id()) == "FAILED"));
    assert_eq!(status_of(&mut c, locked.id()), "RUNNING");
    tx.rollback().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || status_of(&mut c, locked.id()) == "FAILED"),
        "the next sweep catches up"
    );
}

#[test]
fn an_error_in_a_sweep_does_not_stop_the_worker() {
    if native_only(
        "an_error_in_a_sweep_does_not_stop_the_worker",
        "the background worker; the portable sweep() isolates a failing pass the same way, and pg_cron calls it again",
    ) {
        return;
    }
    let _g = serial();
    let mut c = connect();
    assert!(wait_until(Duration::from_secs(10), || sweeper_pid(&mut c).is_some()));
    let before = sweeper_pid(&mut c);
    let errors_before = stat(&mut c, "sweep_errors");
    // A table lock held past the sweep's lock_timeout (1 s here) makes sweeps fail.
    let mut locker = connect();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE lease_sched.runtimes IN ACCESS EXCLUSIVE MODE").unwrap();
    assert!(wait_until(Duration::from_secs(10), || stat(&mut c, "sweep_errors") > errors_before));
    tx.rollback().unwrap();
    let lease = abandoned_lease(&mut c);
    assert!(wait_until(Duration::from_secs(10), || status_of(&mut c, lease.id()) == "FAILED"), "sweeping goes on");
    assert_eq!(sweeper_pid(&mut c), before, "the same worker process kept sweeping");
}

/// The sweeper's warnings name the error by PostgreSQL's SQLSTATE (what operators grep
/// for), never by a Rust enum name such as ERRCODE_LOCK_NOT_AVAILABLE.
#[test]
fn a_failed_sweep_logs_the_sqlstate_code() {
    if native_only("a_failed_sweep_logs_the_sqlstate_code", "the background worker's log line; the portable sweep() raises the same WARNING to its caller (pg_cron logs it)") {
        return;
    }
    let _g = serial();
    let Ok(log) = std::env::var("LEASE_SCHED_LOG") else {
        skip("a_failed_sweep_logs_the_sqlstate_code", "LEASE_SCHED_LOG is not set (run through scripts/test.sh)");
        return;
    };
    let mut c = connect();
    assert!(wait_until(Duration::from_secs(10), || sweeper_pid(&mut c).is_some()));
    let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let errors_before = stat(&mut c, "sweep_errors");
    let mut locker = connect();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE lease_sched.runtimes IN ACCESS EXCLUSIVE MODE").unwrap();
    assert!(wait_until(Duration::from_secs(10), || stat(&mut c, "sweep_errors") > errors_before));
    tx.rollback().unwrap();
    let written = || {
        let all = std::fs::read(&log).unwrap_or_default();
        String::from_utf8_lossy(&all[(from as usize).min(all.len())..]).into_owned()
    };
    // The warning reaches the log file a moment after the counter moves.
    assert!(wait_until(Duration::from_secs(10), || written().contains("failed and was rolled back")), "{}", written());
    let text = written();
    let warning = text.lines().find(|l| l.contains("failed and was rolled back")).unwrap();
    assert!(warning.contains("(SQLSTATE 55P03)"), "lock_timeout is 55P03: {warning}");
    assert!(!text.contains("ERRCODE_"), "no Rust enum names in the log: {text}");
}

#[test]
fn sweep_on_demand_reports_what_it_did() {
    let (_g, mut c, id) = alone_with_a_runtime();
    set_last_seen_ago(&mut c, id, 3600);
    let r = c.query_one("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    let offline: i64 = r.get("runtimes_offline");
    // The worker may have got there first; either way the runtime is offline now.
    assert!(offline <= 1);
    assert_eq!(runtime_state(&mut c, id).0, "offline");
}

#[test]
fn retention_prunes_old_finished_runs_only() {
    let _g = serial();
    let mut c = connect();
    let job = unique("prune");
    let old = claim(&mut c, &job, plan(), "r1");
    assert!(finish_ok(&mut c, old.id(), old.token()));
    let running = claim(&mut c, &job, plan() + chrono::Duration::minutes(1), "r1");
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET finished_at = now() - interval '40 days' WHERE id = $1",
        &[&old.id()],
    )
    .unwrap();
    c.query_one("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    let left: Vec<uuid::Uuid> = c
        .query("SELECT id FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![running.id()], "the 40-day-old run is pruned (default retention 30 days)");
}

#[test]
fn stats_and_views_report_the_leases() {
    if native_only("stats_and_views_report_the_leases", "the per-call counters of stats() live in the native edition's shared memory (they read 0 in the portable edition, docs/portable.md)") {
        return;
    }
    let _g = serial();
    let mut c = connect();
    assert_eq!(stat(&mut c, "preloaded"), 1);
    let won = stat(&mut c, "claims_won");
    let job = unique("views");
    let r = claim_with(
        &mut c,
        &job,
        plan(),
        "r1",
        &ClaimArgs { stale_timeout: Duration::from_secs(60), ..Default::default() },
    );
    assert!(stat(&mut c, "claims_won") > won);
    let row = c
        .query_one(
            "SELECT seconds_until_stale, is_stale FROM lease_sched.active_leases WHERE execution_id = $1",
            &[&r.id()],
        )
        .unwrap();
    let secs: f64 = row.get(0);
    assert!(secs > 50.0 && secs <= 60.0);
    assert!(!row.get::<_, bool>(1));
    assert!(finish_ok(&mut c, r.id(), r.token()));
    let s = c.query_one("SELECT runs, succeeded, failed, p50_duration_ms IS NOT NULL FROM lease_sched.job_summary WHERE job_name = $1", &[&job]).unwrap();
    assert_eq!((s.get::<_, i64>(0), s.get::<_, i64>(1), s.get::<_, i64>(2), s.get::<_, bool>(3)), (1, 1, 0, true));
    assert!(stat(&mut c, "sweeps") > 0 && stat(&mut c, "last_sweep_unix_seconds") > 1_700_000_000);
}

// ---------------------------------------------------------------------------------------
// flushes and sweeps next to locked rows and rolled-back transactions

/// `n` runtimes whose rows are `ago` seconds behind, each with one touch buffered.
fn runtimes_with_touch(c: &mut Client, n: usize, ago: i64) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| register_runtime(c)).collect();
    flush(c);
    for &id in &ids {
        set_last_seen_ago(c, id, ago);
    }
    for &id in &ids {
        assert!(touch(c, id));
    }
    assert_eq!(pending(c), n as i64, "the touches are buffered");
    ids
}

fn runtime_with_touch(c: &mut Client, ago: i64) -> Uuid {
    runtimes_with_touch(c, 1, ago)[0]
}

fn seen_ago(c: &mut Client, id: Uuid) -> f64 {
    runtime_state(c, id).1
}

/// The next flush writes the one buffered touch (of `id`): nothing stays pending, and the
/// row is fresh.
fn assert_next_flush_writes(c: &mut Client, id: Uuid, what: &str) {
    assert_eq!(flush(c), 1, "{what}");
    assert_eq!(pending(c), 0);
    assert!(seen_ago(c, id) < 60.0);
}

fn lock_row(id: Uuid) -> Client {
    let mut holder = connect();
    holder.batch_execute("BEGIN").unwrap();
    holder.execute("SELECT 1 FROM lease_sched.runtimes WHERE id = $1 FOR UPDATE", &[&id]).unwrap();
    holder
}

/// A flush skips a runtime row another transaction holds locked, without waiting for it,
/// writes the others, and keeps the locked one's touch for the next flush.
#[test]
fn a_flush_skips_a_locked_runtime_and_keeps_its_touch_for_the_next_flush() {
    let _g = serial();
    let mut c = connect();
    let ids = runtimes_with_touch(&mut c, 2, 120);
    let (locked, free) = (ids[0], ids[1]);
    let mut holder = lock_row(locked);

    c.batch_execute("SET lock_timeout = '500ms'").unwrap();
    let started = Instant::now();
    let written =
        c.query_one("SELECT lease_sched.runtime_flush()", &[]).expect("the flush does not fail on a locked row");
    assert!(started.elapsed() < Duration::from_millis(450), "nor waits for it ({:?})", started.elapsed());
    assert_eq!(written.get::<_, i64>(0), 1, "the other runtime's touch is written");
    assert_eq!(pending(&mut c), 1, "the locked runtime's touch stays buffered");
    assert!(seen_ago(&mut c, free) < 60.0);
    assert!(seen_ago(&mut c, locked) >= 115.0);

    holder.batch_execute("COMMIT").unwrap();
    assert_next_flush_writes(&mut c, locked, "the next flush writes it");
}

/// A flush rolled back (to a savepoint, with its transaction, or by a later failure in its
/// transaction) loses no touch: they stay buffered for the next flush.
#[test]
fn a_flush_rolled_back_to_a_savepoint_or_with_its_transaction_keeps_the_touches() {
    let _g = serial();
    let mut c = connect();
    let id = runtime_with_touch(&mut c, 120);
    assert_eq!(pending(&mut c), 1);

    c.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    assert_eq!(flush(&mut c), 1);
    c.batch_execute("ROLLBACK TO SAVEPOINT s; COMMIT").unwrap();
    assert_eq!(pending(&mut c), 1, "a flush rolled back to its savepoint keeps its touches");
    assert!(seen_ago(&mut c, id) >= 115.0);

    c.batch_execute("BEGIN").unwrap();
    assert_eq!(flush(&mut c), 1);
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(pending(&mut c), 1, "a flush whose transaction rolls back keeps its touches");
    assert!(seen_ago(&mut c, id) >= 115.0);

    // A flush that fails outright (here: cancelled by a statement timeout on a lock wait
    // that PostgreSQL takes before the flush statement) keeps them too.
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(flush(&mut c), 1);
    let e = c.batch_execute("SELECT 1/0").expect_err("the transaction fails after the flush");
    assert_eq!(sqlstate(&e), "22012");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(pending(&mut c), 1, "an aborted transaction keeps its flush's touches");

    assert_next_flush_writes(&mut c, id, "a later flush writes them");
}

/// A runtime row held locked over several sweeps fails no sweep and stops none: the
/// sweeper fails an abandoned lease meanwhile, and writes the touch once the row is free.
#[test]
fn a_locked_runtime_row_does_not_stop_the_sweeps() {
    let _g = serial();
    let mut c = connect();
    // Silent (a sweep candidate) with a touch buffered: the sweep wants to write this row.
    let id = runtime_with_touch(&mut c, 3 * 3600);
    let mut holder = lock_row(id);
    let errors = stat(&mut c, "sweep_errors");
    let sweeps = stat(&mut c, "sweeps");
    let lease = abandoned_lease(&mut c);
    assert!(
        wait_until(Duration::from_secs(10), || status_of(&mut c, lease.id()) == "FAILED"),
        "the abandoned lease failed while a runtime row is locked"
    );
    // Keep the row locked over several sweep intervals (1 s in the test cluster).
    std::thread::sleep(Duration::from_secs(4));
    assert!(stat(&mut c, "sweeps") >= sweeps + 3, "sweeps ran");
    assert_eq!(stat(&mut c, "sweep_errors"), errors, "no sweep failed on the locked row");
    assert_eq!(pending(&mut c), 1, "its touch stays buffered");
    let (status, _) = runtime_state(&mut c, id);
    assert_eq!(status, "online", "a runtime with a buffered touch is not marked offline");
    holder.batch_execute("COMMIT").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || seen_ago(&mut c, id) < 60.0),
        "once unlocked, the sweep writes the touch"
    );
    assert_eq!(runtime_state(&mut c, id).0, "online");
}

/// One lease whose backoff would overflow does not poison the sweep: the other abandoned
/// leases still fail. Pins the hole where every sweep failed with "interval out of range"
/// while such a lease was there, so no abandoned lease was failed any more.
#[test]
fn a_lease_at_a_huge_attempt_does_not_poison_the_sweep() {
    let _g = serial(); // sweep() may flush the touch buffer
    let mut c = connect();
    let poison = lease_at_attempt(&mut c, 35, Duration::from_secs(3600));
    let other = claim_with(
        &mut c,
        &unique("victim"),
        plan(),
        "r1",
        &ClaimArgs { stale_timeout: Duration::from_secs(3600), allow_stale_reentry: false, ..Default::default() },
    );
    // Make both stale inside this transaction (so the background sweeper, which skips
    // locked rows, leaves them to us) and sweep with the overflowing setting.
    c.batch_execute("BEGIN; SET LOCAL lease_sched.retry_backoff_base = '20d'").unwrap();
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - interval '1 second' WHERE id = ANY($1)",
        &[&vec![poison.id(), other.id()]],
    )
    .unwrap();
    let swept = c.query_one("SELECT leases_failed FROM lease_sched.sweep()", &[]);
    let failed: i64 = match swept {
        Ok(r) => r.get(0),
        Err(e) => {
            assert_clean_error(&e, "sweep");
            panic!("the sweep failed: {e}");
        }
    };
    c.batch_execute("COMMIT").unwrap();
    assert!(failed >= 2, "both abandoned leases failed ({failed})");
    assert_eq!(status_of(&mut c, other.id()), "FAILED");
    assert_eq!(status_of(&mut c, poison.id()), "FAILED");
    let capped: bool = retry_at_backoff_max(&mut c, poison.id());
    assert!(capped);
}

fn exists(c: &mut Client, id: Uuid) -> bool {
    c.query_one("SELECT EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions WHERE id = $1)", &[&id]).unwrap().get(0)
}

/// Retention never prunes what may still run (a FAILED plan waiting for its retry) nor a
/// job's latest row (the planner's cursor); a retry of a kept plan is still attempt 2.
#[test]
fn retention_keeps_pending_retries_and_each_jobs_latest_row() {
    let _g = serial(); // sweep() may flush the touch buffer
    let mut c = connect();
    let retention: String = c.query_one("SHOW lease_sched.retention", &[]).unwrap().get(0);
    let long_ago = "400 days";
    // A FAILED plan waiting for its retry (attempts left, next_retry_at ahead), then a later plan.
    let job = unique("ret_retry");
    let pending_retry = claim(&mut c, &job, plan(), "r1");
    assert!(finish_failed(&mut c, pending_retry.id(), pending_retry.token(), Duration::from_secs(10 * 86400)));
    let later = claim(&mut c, &job, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, later.id(), later.token()));
    // A job with two finished plans: the older goes, the latest (the planner's cursor) stays.
    let job2 = unique("ret_old");
    let old = claim(&mut c, &job2, plan(), "r1");
    assert!(finish_ok(&mut c, old.id(), old.token()));
    let latest = claim(&mut c, &job2, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, latest.id(), latest.token()));
    // A FAILED plan with no attempts left is prunable like a success.
    let job3 = unique("ret_exhausted");
    let args = ClaimArgs { max_attempts: 1, ..Default::default() };
    let exhausted = claim_with(&mut c, &job3, plan(), "r1", &args);
    assert!(finish_failed(&mut c, exhausted.id(), exhausted.token(), Duration::from_secs(10 * 86400)));
    let latest3 = claim(&mut c, &job3, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, latest3.id(), latest3.token()));

    let ids = vec![pending_retry.id(), later.id(), old.id(), latest.id(), exhausted.id(), latest3.id()];
    c.execute(
        &format!(
            "UPDATE lease_sched.sys_cron_executions SET finished_at = now() - interval '{long_ago}' WHERE id = ANY($1)"
        ),
        &[&ids],
    )
    .unwrap();
    // The background sweeper prunes (every second); an explicit sweep too.
    c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !exists(&mut c, old.id()) && !exists(&mut c, exhausted.id())),
        "finished rows older than retention ({retention}) are pruned"
    );
    c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    assert!(exists(&mut c, pending_retry.id()), "a FAILED plan waiting for its retry is kept");
    assert!(exists(&mut c, later.id()), "the latest row of a job is kept");
    assert!(exists(&mut c, latest.id()), "the latest row of a job is kept");
    assert!(exists(&mut c, latest3.id()));
    // The kept plan is still retried as attempt 2, not won again as attempt 1.
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET next_retry_at = now() - interval '1 s' WHERE id = $1",
        &[&pending_retry.id()],
    )
    .unwrap();
    let retry = claim(&mut c, &job, plan(), "r2");
    assert_ne!(retry.outcome, "conflicted");
    assert_eq!(retry.attempt, Some(2), "the retry is attempt 2 ({}), not a fresh attempt 1", retry.outcome);
}

/// A stale lease that a later plan of its job superseded is failed by the sweep, even
/// though it may be stolen: the planner only offers the latest plan, so no scheduler would
/// come back for it. Pins the hole where it stayed RUNNING forever (two schedulers on
/// either side of a bucket boundary, the first one dying, were enough).
#[test]
fn a_stale_lease_superseded_by_a_later_plan_is_failed_by_the_sweep() {
    let _g = serial(); // waits for the background sweep
    let mut c = connect();
    let job = unique("superseded");
    let short = ClaimArgs { stale_timeout: Duration::from_millis(300), ..Default::default() };
    let orphan = claim_with(&mut c, &job, plan(), "dies", &short);
    assert_eq!(orphan.outcome, "won");
    let later = claim_with(&mut c, &job, plan() + chrono::Duration::minutes(1), "lives", &short);
    assert!(finish_ok(&mut c, later.id(), later.token()));
    assert!(
        wait_until(Duration::from_secs(10), || status_of(&mut c, orphan.id()) == "FAILED"),
        "the superseded stale lease is failed by the sweeper"
    );
    let code: Option<String> = c
        .query_one("SELECT error_code FROM lease_sched.sys_cron_executions WHERE id = $1", &[&orphan.id()])
        .unwrap()
        .get(0);
    assert_eq!(code.as_deref(), Some("stale_timeout"));
    // Its holder is fenced out, and with attempts left the plan can still be claimed explicitly.
    assert!(!heartbeat(&mut c, orphan.id(), orphan.token()));

    // The latest plan, stale but stealable, is left for its thief.
    let job2 = unique("latest_stale");
    let latest = claim_with(&mut c, &job2, plan(), "dies", &short);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status_of(&mut c, latest.id()), "RUNNING", "a stealable latest plan waits for its thief");
    assert_eq!(claim(&mut c, &job2, plan(), "thief").outcome, "stole");
}
