//! The runner examples in examples/ (psql, Python, Rust) run for real against the test
//! cluster. Each claims the current plan of its own job, heartbeats, and finishes. So do the
//! runner examples 0.2.0 released, unchanged (from git history): code written for 0.2.0
//! keeps working against this version.
use std::path::Path;
use std::process::{Command, Output};

use lease_sched_integration::*;

fn port() -> String {
    dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap()
}

/// What a runner printed, after checking it succeeded and finished its job once.
fn finished_once(out: Output, job: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(succeeded_once(job), "{job} finished SUCCESS once");
    stdout
}

/// examples/runner.sql of the tree at `root`, through psql.
fn psql_runner(root: &Path, job: &str) {
    let out = Command::new(format!("{}/psql", pgbin()))
        .args(["-X", "-h", "127.0.0.1", "-p", &port(), "-U", "postgres", "-d", "lease_sched"])
        .args(["-v", &format!("job={job}"), "-f"])
        .arg(root.join("examples/runner.sql"))
        .output()
        .unwrap();
    let stdout = finished_once(out, job);
    assert!(stdout.contains("claim: won") && stdout.contains("finished: t"), "{stdout}");
}

/// examples/runner.py of the tree at `root`.
fn python_runner(root: &Path, job: &str) {
    let python = std::env::var("LEASE_SCHED_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python).arg(root.join("examples/runner.py")).arg(dsn()).arg(job).output().unwrap();
    assert_eq!(finished_once(out, job).trim(), "won success");
}

/// examples/runner.rs, built from `manifest` (a workspace or the examples' own) into
/// `target` (one per tree: both build a binary named runner).
fn rust_runner(manifest: &Path, target: &Path, job: &str) {
    let out = Command::new(env!("CARGO"))
        .args(["run", "-q", "--manifest-path"])
        .arg(manifest)
        .args(["-p", "lease_sched_examples", "--bin", "runner", "--"])
        .arg(dsn())
        .arg(job)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    assert_eq!(finished_once(out, job).trim(), "won success");
}

#[test]
fn the_psql_runner_claims_heartbeats_and_finishes() {
    psql_runner(&checkout(""), &unique("ex_psql"));
}

#[test]
fn the_python_runner_claims_heartbeats_and_finishes() {
    python_runner(&checkout(""), &unique("ex_py"));
}

#[test]
fn the_rust_runner_claims_heartbeats_and_finishes() {
    rust_runner(&checkout("").join("examples/Cargo.toml"), &checkout("").join("target"), &unique("ex_rs"));
}

#[test]
fn the_released_0_2_0_psql_python_and_rust_runners_run_unchanged() {
    let test = "the_released_0_2_0_psql_python_and_rust_runners_run_unchanged";
    let Some(dir) = released_0_2_0(test, &["examples", "clients/rust"]) else {
        return;
    };
    psql_runner(&dir, &unique("ex02_psql"));
    python_runner(&dir, &unique("ex02_py"));
    rust_runner(&dir.join("Cargo.toml"), Path::new("/tmp/lease_sched_clients_target_0_2_0"), &unique("ex02_rs"));
    let _ = std::fs::remove_dir_all(&dir);
}
