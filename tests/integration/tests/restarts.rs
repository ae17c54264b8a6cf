//! Shutdowns, crashes and a killed worker, on the real test cluster. Each test restarts
//! or crashes the server, so they run one at a time (`serial()`).
use std::time::Duration;

use lease_sched_integration::*;

/// A runtime with one touch in the buffer, its row 120 s behind (not a sweep candidate).
fn runtime_with_buffered_touch(c: &mut postgres::Client) -> uuid::Uuid {
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(c).is_some()), "sweeper running");
    let id = register_runtime(c);
    set_last_seen_ago(c, id, 120);
    flush(c);
    assert!(touch(c, id));
    assert_eq!(pending(c), 1);
    id
}

#[test]
fn a_fast_shutdown_writes_the_buffered_touches() {
    let _g = serial();
    let mut c = connect();
    let id = runtime_with_buffered_touch(&mut c);
    drop(c);
    pg_ctl(&["-m", "fast", "stop"]);
    pg_ctl(&["start"]);
    let mut c = wait_for_server();
    let (_, ago) = runtime_state(&mut c, id);
    assert!(ago < 60.0, "the drain wrote the touch ({ago}s ago)");
}

#[test]
fn an_immediate_shutdown_loses_buffered_touches_but_no_lease_state() {
    let _g = serial();
    let mut c = connect();
    let id = runtime_with_buffered_touch(&mut c);
    let job = unique("immediate");
    let lease = claim(&mut c, &job, plan(), "r1");
    drop(c);
    pg_ctl(&["-m", "immediate", "stop"]);
    pg_ctl(&["start"]);
    let mut c = wait_for_server();
    let (_, ago) = runtime_state(&mut c, id);
    assert!(ago >= 115.0, "an immediate stop loses the buffered touch (documented): {ago}s");
    // Lease state is ordinary table data: committed, so it survives.
    assert!(heartbeat(&mut c, lease.id(), lease.token()));
    assert!(finish_ok(&mut c, lease.id(), lease.token()));
}

#[test]
fn after_a_backend_crash_the_worker_is_back_and_tokens_keep_rising() {
    let _g = serial();
    let mut c = connect();
    let before = claim(&mut c, &unique("crash"), plan(), "r1").fencing_token.unwrap();
    let mut victim = connect();
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    drop(victim);
    drop(c);
    std::thread::sleep(Duration::from_millis(500)); // the postmaster resets every process
    let mut c = wait_for_server();
    assert!(wait_until(Duration::from_secs(20), || sweeper_pid(&mut c).is_some()), "sweeper restarted");
    let after = claim(&mut c, &unique("crash"), plan(), "r1").fencing_token.unwrap();
    assert!(after > before, "fencing tokens rise across the crash: {before} then {after}");
    let lease = abandoned_lease(&mut c);
    assert!(wait_until(Duration::from_secs(15), || status_of(&mut c, lease.id()) == "FAILED"), "and sweeping");
}

#[test]
fn a_terminated_sweeper_is_started_again() {
    let _g = serial();
    let mut c = connect();
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(&mut c).is_some()));
    let old = sweeper_pid(&mut c).unwrap();
    c.query_one("SELECT pg_terminate_backend($1)", &[&old]).unwrap();
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(&mut c).is_some_and(|p| p != old)));
}

#[test]
fn dropping_and_recreating_the_database_brings_the_sweeper_back() {
    let _g = serial();
    let mut c = connect();
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(&mut c).is_some()));
    drop(c);
    let admin_dsn = dsn().replace("dbname=lease_sched", "dbname=postgres");
    let mut admin = postgres::Client::connect(&admin_dsn, postgres::NoTls).unwrap();
    // The sweeper is connected to it, like any session: FORCE, as docs/operations.md says.
    admin.batch_execute("DROP DATABASE lease_sched WITH (FORCE)").unwrap();
    admin.batch_execute("CREATE DATABASE lease_sched").unwrap();
    let mut c = connect(); // creates the extension again
    assert!(wait_until(Duration::from_secs(15), || sweeper_pid(&mut c).is_some()), "sweeper back on the new database");
    let lease = abandoned_lease(&mut c);
    assert!(wait_until(Duration::from_secs(15), || status_of(&mut c, lease.id()) == "FAILED"), "and sweeping it");
}

#[test]
fn a_runner_killed_mid_lease_is_stolen_after_its_stale_timeout_and_fenced() {
    let _g = serial();
    let job = unique("killed");
    let port = dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap();
    // A runner process (psql) claims with a 1 s stale_timeout, prints its lease, then works.
    let mut runner = std::process::Command::new(format!("{}/psql", pgbin()))
        .args(["-X", "-qAt", "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", "lease_sched"])
        .args(["-c", &format!(
            "SELECT execution_id || ' ' || lease_token FROM lease_sched.lease_try_claim('{job}', '2026-01-01', 'doomed', stale_timeout => '1 second')"
        )])
        .args(["-c", "SELECT pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(runner.stdout.take().unwrap()), &mut line).unwrap();
    let (id, token) = line.trim().split_once(' ').unwrap();
    let (id, token): (uuid::Uuid, uuid::Uuid) = (id.parse().unwrap(), token.parse().unwrap());
    std::process::Command::new("kill").args(["-9", &runner.id().to_string()]).status().unwrap();
    let _ = runner.wait();
    let mut c = connect();
    let plan_time = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
    assert_eq!(claim(&mut c, &job, plan_time, "thief").outcome, "conflicted", "the lease outlives its runner");
    std::thread::sleep(Duration::from_millis(1200));
    let thief = claim(&mut c, &job, plan_time, "thief");
    assert_eq!((thief.outcome.as_str(), thief.execution_id), ("stole", Some(id)));
    assert!(!heartbeat(&mut c, id, token), "the killed runner's token is fenced");
    assert!(!finish_ok(&mut c, id, token));
}
