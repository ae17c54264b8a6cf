//! Runtimes, the shared touch buffer and the background sweeper, against the real
//! preloaded worker (in the test cluster: sweep_interval = 1s, runtime_offline_after = 20min,
//! touch_flush_interval = 10min unless a test changes it). Tests that look at the buffer
//! share it, so they take SERIAL.
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use lease_sched_integration::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_silent_runtime_is_marked_offline_by_the_worker() {
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
    set_last_seen_ago(&mut c, id, 3600);
    assert!(wait_until(Duration::from_secs(10), || runtime_state(&mut c, id).0 == "offline"));
}

#[test]
fn a_buffered_touch_rescues_a_silent_runtime_and_is_written_by_the_sweep() {
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
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
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
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
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
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
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
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
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
    flush(&mut c);
    assert!(touch(&mut c, id));
    c.execute("UPDATE lease_sched.runtimes SET status = 'offline' WHERE id = $1", &[&id]).unwrap();
    assert_eq!(flush(&mut c), 0, "the flush is guarded by status = 'online'");
    assert_eq!(runtime_state(&mut c, id).0, "offline");
    assert!(touch(&mut c, id), "the next beat takes the synchronous path");
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
        .query_one("SELECT count(*) FROM lease_sched.runtimes WHERE id = ANY($1) AND last_seen_at > now() - interval '5 s'", &[&online])
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

fn sweeper_pid(c: &mut postgres::Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'", &[])
        .unwrap()
        .map(|r| r.get(0))
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
    assert!(wait_until(Duration::from_secs(10), || status_of(&mut c, locked.id()) == "FAILED"), "the next sweep catches up");
}

#[test]
fn an_error_in_a_sweep_does_not_stop_the_worker() {
    if native_only("an_error_in_a_sweep_does_not_stop_the_worker", "the background worker; the portable sweep() isolates a failing pass the same way, and pg_cron calls it again") {
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
    let _g = serial();
    let mut c = connect();
    let id = register_runtime(&mut c);
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
    c.execute("UPDATE lease_sched.sys_cron_executions SET finished_at = now() - interval '40 days' WHERE id = $1", &[&old.id()])
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
    let r = claim_with(&mut c, &job, plan(), "r1", &ClaimArgs { stale_timeout: Duration::from_secs(60), ..Default::default() });
    assert!(stat(&mut c, "claims_won") > won);
    let row = c
        .query_one("SELECT seconds_until_stale, is_stale FROM lease_sched.active_leases WHERE execution_id = $1", &[&r.id()])
        .unwrap();
    let secs: f64 = row.get(0);
    assert!(secs > 50.0 && secs <= 60.0);
    assert!(!row.get::<_, bool>(1));
    assert!(finish_ok(&mut c, r.id(), r.token()));
    let s = c.query_one("SELECT runs, succeeded, failed, p50_duration_ms IS NOT NULL FROM lease_sched.job_summary WHERE job_name = $1", &[&job]).unwrap();
    assert_eq!((s.get::<_, i64>(0), s.get::<_, i64>(1), s.get::<_, i64>(2), s.get::<_, bool>(3)), (1, 1, 0, true));
    assert!(stat(&mut c, "sweeps") > 0 && stat(&mut c, "last_sweep_unix_seconds") > 1_700_000_000);
}
