//! The bounded torture run of `make test`: 10^4 claims by 32 clients in 4 processes, and
//! alongside them for 20 s 8 lock clients on 3 locks and 6 run() schedulers on 4 jobs
//! with a backend killer; lease and lock holders also make fenced writes under
//! lease_fence/lock_fence (see src/bin/torture.rs for what is checked). `make torture` runs
//! it for minutes; LEASE_TORTURE_SECONDS / _CLAIMS / _CLIENTS override the bounds, and the
//! lock and run() parts last LEASE_TORTURE_LOCK_SECONDS / _RUN_SECONDS (default: 20, or
//! LEASE_TORTURE_SECONDS when that is set) with a quarter / an eighth of the clients.
use std::process::Command;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The number just before the first `phrase` (" claims", " lock grants") in `text`, or 0.
fn number_before(text: &str, phrase: &str) -> u64 {
    text.match_indices(phrase)
        .find_map(|(i, _)| text[..i].rsplit(|c: char| c.is_whitespace() || c == '(').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn torture_finds_no_violation() {
    let seconds = env("LEASE_TORTURE_SECONDS");
    let side_seconds = |name: &str| env(name).or_else(|| seconds.clone()).unwrap_or_else(|| "20".into());
    let (lock_seconds, run_seconds) =
        (side_seconds("LEASE_TORTURE_LOCK_SECONDS"), side_seconds("LEASE_TORTURE_RUN_SECONDS"));
    let seconds = seconds.unwrap_or_else(|| "300".into());
    let target = env("LEASE_TORTURE_CLAIMS").unwrap_or_else(|| "10000".into());
    let clients = env("LEASE_TORTURE_CLIENTS").unwrap_or_else(|| "32".into());
    let n: usize = clients.parse().unwrap();
    let (lock_clients, schedulers) = ((n / 4).max(4).to_string(), (n / 8).clamp(4, 12).to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_torture"))
        .args(["--seconds", &seconds, "--claims", &target, "--clients", &clients, "--processes", "4"])
        .args(["--lock-seconds", &lock_seconds, "--lock-clients", &lock_clients, "--locks", "3"])
        .args(["--run-seconds", &run_seconds, "--run-schedulers", &schedulers, "--run-jobs", "4"])
        .output()
        .expect("torture binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "violations found");
    let claims = number_before(&stdout, " claims");
    assert!(claims >= target.parse::<u64>().unwrap().min(10_000), "stopped by the time limit after {claims} claims");
    assert!(number_before(&stdout, " fenced writes committed") > 0, "no fenced write committed");
    if claims >= 1000 {
        assert!(number_before(&stdout, " refused with LS001") > 0, "no deposed holder's fenced write was refused");
    }
    if lock_seconds != "0" {
        assert!(number_before(&stdout, " lock grants") > 0, "the lock clients got no grant");
        assert!(number_before(&stdout, " takeovers") > 0, "no expired lock was taken over");
    }
    if run_seconds != "0" {
        assert!(number_before(&stdout, " SUCCESS each") > 0, "no run() plan succeeded");
    }
}
