//! Torture: many client connections in several processes claim, heartbeat, finish, fail
//! and abandon leases on a small set of plans for a fixed time, each writing an append-only
//! log; then a checker verifies the invariants from the logs and the table.
//!
//!     torture [--seconds 10] [--claims N] [--clients 32] [--processes 4] [--dsn DSN] [--logs DIR]
//!
//! It stops after --seconds, or once the clients have made --claims claim calls in all.
//!
//! Invariants checked (any violation makes the exit code 1):
//! 1. for each plan, holders ordered by fencing token have consecutive attempts, and each
//!    holder's last successful heartbeat/finish was sent before the next holder's claim
//!    returned: at most one live holder per plan at any instant;
//! 2. fencing tokens of successive holders of a plan strictly increase, and no token is
//!    handed out twice;
//! 3. every accepted finish came from the holder whose token the row ended with, or was
//!    followed by a legitimate steal/retry (FAILED); a SUCCESS row's last holder logged it;
//! 4. attempts never exceed max_attempts;
//! 5. no lease that may not be stolen stays RUNNING past stale_after + the sweep interval.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use uuid::Uuid;

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

struct Args {
    seconds: u64,
    claims: u64,
    clients: usize,
    processes: usize,
    dsn: String,
    logs: String,
    worker: Option<usize>,
    run: String,
}

fn parse() -> Args {
    let mut a = Args {
        seconds: 10,
        claims: u64::MAX,
        clients: 32,
        processes: 4,
        dsn: lease_sched_integration::dsn(),
        logs: "/tmp/lease_sched_torture".into(),
        worker: None,
        run: Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("value");
        match k.as_str() {
            "--seconds" => a.seconds = v().parse().unwrap(),
            "--claims" => a.claims = v().parse().unwrap(),
            "--clients" => a.clients = v().parse().unwrap(),
            "--processes" => a.processes = v().parse().unwrap(),
            "--dsn" => a.dsn = v(),
            "--logs" => a.logs = v(),
            "--worker" => a.worker = Some(v().parse().unwrap()),
            "--run" => a.run = v(),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// Tiny deterministic PRNG per client (xorshift), so runs need no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Two jobs: `steal` leases may be stolen when stale (many attempts), `strict` ones may
/// not (the sweeper must fail them) and have 3 attempts.
fn client_loop(dsn: &str, run: &str, seconds: u64, max_calls: u64, id: usize, out: &mut impl Write) {
    let mut c = Client::connect(dsn, NoTls).expect("connect");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1) * 0x1000_0001);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let mut calls = 0u64;
    while Instant::now() < deadline && calls < max_calls {
        calls += 1;
        let strict = rng.below(5) == 0;
        let job = format!("torture_{run}_{}", if strict { "strict" } else { "steal" });
        // A rolling window of 16 plans: new plans keep arriving as old ones finish.
        let window = (now_ns() / 1_000_000_000) as i64;
        let plan = base + chrono::Duration::minutes(window * 16 + rng.below(16) as i64);
        let stale_ms = 10 + rng.below(40) as i64;
        let sent = now_ns();
        let row = c
            .query_one(
                "SELECT outcome, execution_id, lease_token, fencing_token, attempt
                   FROM lease_sched.lease_try_claim($1, $2, $3, stale_timeout => make_interval(secs => $4),
                        max_attempts => $5, allow_stale_reentry => $6)",
                &[&job, &plan, &format!("c{id}"), &(stale_ms as f64 / 1000.0), &(if strict { 3 } else { 1_000_000 }), &!strict],
            )
            .expect("claim");
        let recv = now_ns();
        let outcome: String = row.get(0);
        if outcome == "conflicted" {
            writeln!(out, "conflict").unwrap();
            // Back off a little so the holders get the CPU (two cores, many clients).
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
            continue;
        }
        let (eid, token, fencing, attempt): (Uuid, Uuid, i64, i32) = (row.get(1), row.get(2), row.get(3), row.get(4));
        writeln!(out, "claim {eid} {fencing} {attempt} {sent} {recv}").unwrap();
        let action = rng.below(10);
        let beats = rng.below(4);
        for _ in 0..beats {
            std::thread::sleep(Duration::from_micros(rng.below(stale_ms as u64 * 250 + 1)));
            let sent = now_ns();
            let ok: bool = c.query_one("SELECT lease_sched.lease_heartbeat($1, $2)", &[&eid, &token]).unwrap().get(0);
            writeln!(out, "hb {eid} {fencing} {} {sent}", ok as u8).unwrap();
            if !ok {
                break;
            }
        }
        match action {
            0..=4 => {
                let sent = now_ns();
                let ok: bool = c
                    .query_one("SELECT lease_sched.lease_finish($1, $2, 'FAILED', retry_in => '0')", &[&eid, &token])
                    .unwrap()
                    .get(0);
                writeln!(out, "fin {eid} {fencing} FAILED {} {sent}", ok as u8).unwrap();
            }
            5 => {
                let sent = now_ns();
                let ok: bool = c.query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", &[&eid, &token]).unwrap().get(0);
                writeln!(out, "fin {eid} {fencing} SUCCESS {} {sent}", ok as u8).unwrap();
            }
            _ => {} // abandon: go silent, let it go stale
        }
    }
}

fn worker(a: &Args, w: usize) {
    let per = a.clients / a.processes + usize::from(w < a.clients % a.processes);
    let threads: Vec<_> = (0..per)
        .map(|t| {
            let (dsn, run, logs, seconds) = (a.dsn.clone(), a.run.clone(), a.logs.clone(), a.seconds);
            let max_calls = a.claims.div_ceil(a.clients as u64);
            let id = w * 1000 + t;
            std::thread::spawn(move || {
                let mut out = BufWriter::new(File::create(format!("{logs}/client-{id}.log")).unwrap());
                client_loop(&dsn, &run, seconds, max_calls, id, &mut out);
                out.flush().unwrap();
            })
        })
        .collect();
    threads.into_iter().for_each(|h| h.join().expect("client thread"));
}

#[derive(Default)]
struct Holder {
    fencing: i64,
    attempt: i32,
    claim_recv: u128,
    last_ok_send: u128,
    finished: Option<String>,
}

struct Analysis {
    claims: u64,
    granted: u64,
    holders: HashMap<Uuid, BTreeMap<i64, Holder>>,
    violations: Vec<String>,
}

/// Invariants 1-3 from the client logs alone.
fn analyze_logs(dir: &str) -> Analysis {
    let mut holders: HashMap<Uuid, BTreeMap<i64, Holder>> = HashMap::new();
    let mut claims = 0u64;
    let mut granted = 0u64;
    let mut all_tokens = HashSet::new();
    let mut violations = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let f = BufReader::new(File::open(entry.unwrap().path()).unwrap());
        for line in f.lines() {
            let line = line.unwrap();
            let p: Vec<&str> = line.split(' ').collect();
            match p[0] {
                "conflict" => claims += 1,
                "claim" => {
                    claims += 1;
                    granted += 1;
                    let (eid, fencing) = (p[1].parse().unwrap(), p[2].parse::<i64>().unwrap());
                    if !all_tokens.insert(fencing) {
                        violations.push(format!("fencing token {fencing} handed out twice"));
                    }
                    holders.entry(eid).or_default().insert(
                        fencing,
                        Holder {
                            fencing,
                            attempt: p[3].parse().unwrap(),
                            claim_recv: p[5].parse().unwrap(),
                            last_ok_send: p[4].parse().unwrap(),
                            finished: None,
                        },
                    );
                }
                "hb" | "fin" => {
                    let (eid, fencing): (Uuid, i64) = (p[1].parse().unwrap(), p[2].parse().unwrap());
                    let (ok, sent) = if p[0] == "hb" { (p[3], p[4]) } else { (p[4], p[5]) };
                    if ok == "1" {
                        let h = holders.get_mut(&eid).and_then(|m| m.get_mut(&fencing)).expect("op after claim");
                        h.last_ok_send = h.last_ok_send.max(sent.parse().unwrap());
                        if p[0] == "fin" {
                            if h.finished.is_some() {
                                violations.push(format!("{eid}: two finishes accepted for token {fencing}"));
                            }
                            h.finished = Some(p[3].to_string());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for (eid, hs) in &holders {
        let hs: Vec<&Holder> = hs.values().collect();
        for pair in hs.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            if next.attempt != prev.attempt + 1 {
                violations.push(format!("{eid}: holder {} (attempt {}) followed by {} (attempt {})", prev.fencing, prev.attempt, next.fencing, next.attempt));
            }
            if prev.last_ok_send >= next.claim_recv {
                violations.push(format!("{eid}: holder {} was still acting when {} had claimed", prev.fencing, next.fencing));
            }
            if prev.finished.as_deref() == Some("SUCCESS") {
                violations.push(format!("{eid}: claimed again after an accepted SUCCESS"));
            }
        }
    }
    Analysis { claims, granted, holders, violations }
}

/// Invariants 3-5 against the table, after the logs.
fn check(a: &Args) -> (u64, u64, Vec<String>) {
    let Analysis { claims, granted, holders, mut violations } = analyze_logs(&a.logs);
    let mut c = Client::connect(&a.dsn, NoTls).unwrap();
    for (eid, hs) in &holders {
        let hs: Vec<&Holder> = hs.values().collect();
        let row = c
            .query_one("SELECT status, fencing_token, attempt, max_attempts FROM lease_sched.sys_cron_executions WHERE id = $1", &[eid])
            .unwrap();
        let (status, fencing, attempt, max): (String, i64, i32, i32) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let last = hs.last().unwrap();
        if fencing != last.fencing {
            violations.push(format!("{eid}: row ends with token {fencing}, last logged holder {}", last.fencing));
        }
        if status == "SUCCESS" && last.finished.as_deref() != Some("SUCCESS") {
            violations.push(format!("{eid}: SUCCESS row but its holder logged no accepted SUCCESS"));
        }
        if attempt > max {
            violations.push(format!("{eid}: attempt {attempt} > max_attempts {max}"));
        }
    }
    // 5. give the sweeper one interval (1 s in the test cluster) plus margin, then look.
    std::thread::sleep(Duration::from_millis(2500));
    let stuck: i64 = c
        .query_one(
            "SELECT count(*) FROM lease_sched.sys_cron_executions
              WHERE job_name LIKE $1 AND status = 'RUNNING'
                AND stale_after < now() - interval '2 seconds'
                AND (NOT allow_stale_reentry OR attempt >= max_attempts)",
            &[&format!("torture_{}_%", a.run)],
        )
        .unwrap()
        .get(0);
    if stuck > 0 {
        violations.push(format!("{stuck} unstealable leases left RUNNING past stale_after + sweep interval"));
    }
    (claims, granted, violations)
}

fn main() {
    let a = parse();
    if let Some(w) = a.worker {
        worker(&a, w);
        return;
    }
    let _ = std::fs::remove_dir_all(&a.logs);
    std::fs::create_dir_all(&a.logs).unwrap();
    let me = std::env::current_exe().unwrap();
    let started = Instant::now();
    let children: Vec<_> = (0..a.processes)
        .map(|w| {
            Command::new(&me)
                .args(["--worker", &w.to_string(), "--seconds", &a.seconds.to_string(), "--clients", &a.clients.to_string()])
                .args(["--claims", &a.claims.to_string()])
                .args(["--processes", &a.processes.to_string(), "--dsn", &a.dsn, "--logs", &a.logs, "--run", &a.run])
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a worker process failed");
    }
    let (claims, granted, violations) = check(&a);
    for v in violations.iter().take(20) {
        eprintln!("VIOLATION: {v}");
    }
    println!(
        "torture: {} clients in {} processes for {:.1} s: {claims} claims checked ({granted} leases granted), {} violations",
        a.clients, a.processes, started.elapsed().as_secs_f64(), violations.len()
    );
    std::process::exit(i32::from(!violations.is_empty()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(lines: &[&str]) -> String {
        let dir = format!("/tmp/lease_sched_torture_selftest_{}", Uuid::new_v4().simple());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/client-0.log"), lines.join("\n") + "\n").unwrap();
        dir
    }

    const E: &str = "5c0c1f0e-0000-4000-8000-000000000001";

    #[test]
    fn a_clean_handover_passes() {
        let a = analyze_logs(&logs(&[
            &format!("claim {E} 10 1 100 110"),
            &format!("hb {E} 10 1 120"),
            &format!("claim {E} 11 2 200 210"),
            &format!("fin {E} 11 SUCCESS 1 220"),
        ]));
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!((a.claims, a.granted), (2, 2));
    }

    #[test]
    fn overlapping_holders_are_caught() {
        let a = analyze_logs(&logs(&[
            &format!("claim {E} 10 1 100 110"),
            &format!("claim {E} 11 2 200 210"),
            &format!("hb {E} 10 1 230"),
        ]));
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
    }

    #[test]
    fn skipped_attempts_reused_tokens_and_claims_after_success_are_caught() {
        let a = analyze_logs(&logs(&[
            &format!("claim {E} 10 1 100 110"),
            &format!("fin {E} 10 SUCCESS 1 120"),
            &format!("claim {E} 12 3 200 210"),
            &format!("claim 5c0c1f0e-0000-4000-8000-000000000002 12 1 300 310"),
        ]));
        assert_eq!(a.violations.len(), 3, "{:?}", a.violations);
    }
}
