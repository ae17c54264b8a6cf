//! The runner examples in examples/ (psql, Python, Rust) run for real against the test
//! cluster. Each claims the current plan of its own job, heartbeats, and finishes. So do the
//! runner examples 0.2.0 released, unchanged (from git history): code written for 0.2.0
//! keeps working against this version.
use std::process::Command;

use lease_sched_integration::*;

fn port() -> String {
    dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap()
}

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn succeeded(job: &str) -> bool {
    let mut c = connect();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SUCCESS'",
            &[&job],
        )
        .unwrap()
        .get(0);
    n == 1
}

#[test]
fn the_psql_runner_claims_heartbeats_and_finishes() {
    let job = unique("ex_psql");
    let out = Command::new(format!("{}/psql", pgbin()))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port(),
            "-U",
            "postgres",
            "-d",
            "lease_sched",
            "-v",
            &format!("job={job}"),
            "-f",
        ])
        .arg(repo("examples/runner.sql"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("claim: won") && stdout.contains("finished: t"), "{stdout}");
    assert!(succeeded(&job));
}

#[test]
fn the_python_runner_claims_heartbeats_and_finishes() {
    let python = std::env::var("LEASE_SCHED_PYTHON").unwrap_or_else(|_| "python3".into());
    let job = unique("ex_py");
    let out = Command::new(python).arg(repo("examples/runner.py")).arg(dsn()).arg(&job).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "won success");
    assert!(succeeded(&job));
}

#[test]
fn the_rust_runner_claims_heartbeats_and_finishes() {
    let job = unique("ex_rs");
    let out = Command::new(env!("CARGO"))
        .args(["run", "-q", "--manifest-path", &repo("examples/Cargo.toml"), "--bin", "runner", "--"])
        .arg(dsn())
        .arg(&job)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "won success");
    assert!(succeeded(&job));
}

#[test]
fn the_released_0_2_0_psql_python_and_rust_runners_run_unchanged() {
    let test = "the_released_0_2_0_psql_python_and_rust_runners_run_unchanged";
    let Some(dir) = released_0_2_0(test, &["examples", "clients/rust"]) else {
        return;
    };
    let job = unique("ex02_psql");
    let out = Command::new(format!("{}/psql", pgbin()))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port(),
            "-U",
            "postgres",
            "-d",
            "lease_sched",
            "-v",
            &format!("job={job}"),
            "-f",
        ])
        .arg(dir.join("examples/runner.sql"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("claim: won") && stdout.contains("finished: t"), "{stdout}");
    assert!(succeeded(&job));

    let python = std::env::var("LEASE_SCHED_PYTHON").unwrap_or_else(|_| "python3".into());
    let job = unique("ex02_py");
    let out = Command::new(python).arg(dir.join("examples/runner.py")).arg(dsn()).arg(&job).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "won success");
    assert!(succeeded(&job));

    let job = unique("ex02_rs");
    let out = Command::new(env!("CARGO"))
        .args(["run", "-q", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .args(["-p", "lease_sched_examples", "--bin", "runner", "--"])
        .arg(dsn())
        .arg(&job)
        .env("CARGO_TARGET_DIR", "/tmp/lease_sched_clients_target")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "won success");
    assert!(succeeded(&job));
    let _ = std::fs::remove_dir_all(&dir);
}
