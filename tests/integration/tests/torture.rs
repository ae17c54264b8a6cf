//! The bounded torture run of `make test` (see src/bin/torture.rs for what is checked;
//! `make torture` runs it longer). LEASE_TORTURE_SECONDS / _CLIENTS override the bounds.
use std::process::Command;

#[test]
fn torture_finds_no_violation() {
    let seconds = std::env::var("LEASE_TORTURE_SECONDS").unwrap_or_else(|_| "8".into());
    let clients = std::env::var("LEASE_TORTURE_CLIENTS").unwrap_or_else(|_| "32".into());
    let out = Command::new(env!("CARGO_BIN_EXE_torture"))
        .args(["--seconds", &seconds, "--clients", &clients, "--processes", "4"])
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
    assert!(claims >= 5_000, "too few claims to mean anything: {claims}");
}
