//! The bounded torture run of `make test`: 10^4 claims by 32 clients in 4 processes (see
//! src/bin/torture.rs for what is checked). `make torture` runs it for minutes;
//! LEASE_TORTURE_SECONDS / _CLAIMS / _CLIENTS override the bounds.
use std::process::Command;

#[test]
fn torture_finds_no_violation() {
    let seconds = std::env::var("LEASE_TORTURE_SECONDS").unwrap_or_else(|_| "300".into());
    let target = std::env::var("LEASE_TORTURE_CLAIMS").unwrap_or_else(|_| "10000".into());
    let clients = std::env::var("LEASE_TORTURE_CLIENTS").unwrap_or_else(|_| "32".into());
    let out = Command::new(env!("CARGO_BIN_EXE_torture"))
        .args(["--seconds", &seconds, "--claims", &target, "--clients", &clients, "--processes", "4"])
        .output()
        .expect("torture binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "violations found");
    let claims: u64 = stdout
        .split_whitespace()
        .zip(stdout.split_whitespace().skip(1))
        .find_map(|(n, w)| (w == "claims").then(|| n.parse().ok()).flatten())
        .unwrap_or(0);
    assert!(claims >= target.parse::<u64>().unwrap().min(10_000), "stopped by the time limit after {claims} claims");
}
