//! Torture: many client connections in several processes claim, heartbeat, finish, fail
//! and abandon leases on a small set of plans for a fixed time, each writing an append-only
//! log; then a checker verifies the invariants from the logs and the table.
//!
//!     torture [--seconds 10] [--claims N] [--clients 32] [--processes 4] [--dsn DSN] [--logs DIR]
//!             [--lock-seconds 0] [--lock-clients 8] [--locks 3]
//!             [--run-seconds 0] [--run-schedulers 6] [--run-jobs 4] [--run-every-ms 1000]
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
//!
//! Alongside (same processes, same time), for --lock-seconds and --run-seconds:
//!
//! Locks: --lock-clients clients acquire, heartbeat and release --locks shared locks with
//! TTLs of 100-400 ms; some stall past their TTL and then try their secret again (a late
//! heartbeat revives a lock nobody took over), some walk away, and some have their backend
//! terminated by another connection while they hold (then reconnect and try the old
//! secret). Each logs its grants (fencing token, the grant's start and expiry on the
//! database clock) and every heartbeat (with the expiry it set) and release. Checked per lock:
//! 6. fencing tokens strictly increase in real-time grant order (no grant returned a lower
//!    token than one already handed out) and are never handed out twice (leases included);
//! 7. each grant's last accepted heartbeat/release was sent before the next grant returned
//!    (a replaced secret never works: one live holder at any instant);
//! 8. validity intervals [granted, last accepted heartbeat's expires_at) of successive
//!    grants never overlap on the database clock, unless the earlier one was released;
//! 9. the lock row ends with the last logged grant (or none after its release).
//!
//! run(): --run-schedulers connections repeatedly CALL lease_sched.run() on --run-jobs jobs
//! (every --run-every-ms, 1 s by default; stale_timeout 600 ms) with a command that records (job, plan, fencing token,
//! backend pid) in public.lease_sched_torture_effects and sleeps: mostly briefly, sometimes
//! past its lease deadline (cancelled), sometimes swallowing that cancel so that it outlives
//! its lease (stolen meanwhile: LS001). Another connection terminates random schedulers'
//! backends mid-CALL. Checked:
//! 10. each (job, plan) has at most one committed effect row (no double execution), and it
//!     has one exactly when the plan ended SUCCESS, written under the final fencing token;
//! 11. while schedulers run, no plan stays RUNNING 5 s past its stale_after (a thief or the
//!     sweeper takes it), and attempts never exceed max_attempts.
//!
//! Fenced writes: lease clients (a quarter of their claims, and a third of the holders that
//! walk away, after their lease went stale) and lock clients (half the well-behaved holders,
//! half of those that stall past their TTL, a third of those whose backend was terminated,
//! from the new connection) write a row of public.lease_sched_torture_fenced in one
//! transaction under lease_fence/lock_fence with their token and their secret (a fence
//! given the public token alone holds nothing past its own check), holding it open a little. Checked (see `analyze_fenced`):
//! 12. a row exists exactly for each fenced transaction that committed (a write refused with
//!     LS001 never lands); every row's token was granted for its resource; per resource,
//!     tokens never decrease in id (real-time) order; no row's transaction was still running
//!     when the next grant of its resource was made (database clock), nor was sent after
//!     that grant returned (client clock).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
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
    lock_seconds: u64,
    lock_clients: usize,
    locks: usize,
    run_seconds: u64,
    run_schedulers: usize,
    run_jobs: usize,
    run_every_ms: u64,
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
        lock_seconds: 0,
        lock_clients: 8,
        locks: 3,
        run_seconds: 0,
        run_schedulers: 6,
        run_jobs: 4,
        run_every_ms: 1000,
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
            "--lock-seconds" => a.lock_seconds = v().parse().unwrap(),
            "--lock-clients" => a.lock_clients = v().parse().unwrap(),
            "--locks" => a.locks = v().parse().unwrap(),
            "--run-seconds" => a.run_seconds = v().parse().unwrap(),
            "--run-schedulers" => a.run_schedulers = v().parse().unwrap(),
            "--run-jobs" => a.run_jobs = v().parse().unwrap(),
            "--run-every-ms" => a.run_every_ms = v().parse().unwrap(),
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
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0x1000_0001));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let base = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc);
    let mut calls = 0u64;
    let mut wseq = 0u64;
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
                "SELECT outcome, execution_id, lease_token, fencing_token, attempt, stale_after
                   FROM lease_sched.lease_try_claim($1, $2, $3, stale_timeout => make_interval(secs => $4),
                        max_attempts => $5, allow_stale_reentry => $6)",
                &[
                    &job,
                    &plan,
                    &format!("c{id}"),
                    &(stale_ms as f64 / 1000.0),
                    &(if strict { 3 } else { 1_000_000 }),
                    &!strict,
                ],
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
        // the claim's instant on the database clock (stale_after = claim time + stale_timeout)
        let start = micros(row.get(5)) - stale_ms * 1000;
        writeln!(out, "claim {eid} {fencing} {attempt} {sent} {recv} {start}").unwrap();
        let action = rng.below(10);
        let beats = rng.below(4);
        let fence = |rng: &mut Rng| {
            // With the secret: only such a fence holds the row until the transaction ends
            // (a public-token fence is a check at one instant, docs/api.md "Fences").
            let _ = rng;
            format!("SELECT lease_sched.lease_fence('{eid}', {fencing}, '{token}')")
        };
        if rng.below(4) == 0 {
            let f = fence(&mut rng);
            let hold_us = rng.below(stale_ms as u64 * 500);
            fenced_write(&mut c, run, &eid.to_string(), fencing, &f, hold_us, &mut wseq, id, out);
        }
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
                let ok: bool =
                    c.query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", &[&eid, &token]).unwrap().get(0);
                writeln!(out, "fin {eid} {fencing} SUCCESS {} {sent}", ok as u8).unwrap();
            }
            // abandon: go silent, let it go stale; sometimes come back after the lease went
            // stale (stolen meanwhile or not) and try a fenced write with the old token
            _ => {
                if rng.below(3) == 0 {
                    std::thread::sleep(Duration::from_micros(
                        stale_ms as u64 * 1000 + rng.below(stale_ms as u64 * 2000),
                    ));
                    let f = fence(&mut rng);
                    fenced_write(&mut c, run, &eid.to_string(), fencing, &f, rng.below(5_000), &mut wseq, id, out);
                }
            }
        }
    }
}

/// The table the fenced writes go to: one row per committed fenced transaction. `id` is
/// taken from the sequence by the INSERT, which runs after the fence passed (see
/// `analyze_fenced` for why id order is real-time order within a resource); `written_at`
/// is the INSERT's instant and `done_at` the transaction's last statement's, both on the
/// database clock.
const FENCED_SETUP: &str = "
    CREATE TABLE IF NOT EXISTS public.lease_sched_torture_fenced (
        id bigserial PRIMARY KEY, run text NOT NULL, resource text NOT NULL, token bigint NOT NULL,
        wid text NOT NULL UNIQUE, pid int NOT NULL DEFAULT pg_backend_pid(),
        written_at timestamptz NOT NULL DEFAULT clock_timestamp(), done_at timestamptz)";

/// One fenced transaction: `fence` (lease_fence or lock_fence with our token), then the
/// write, a pause of `hold_us` (a takeover must wait for it), and a last statement stamping
/// `done_at`, then COMMIT. Logs `fw <resource> <token> <wid> <outcome> <sent> <recv>` with
/// outcome `ok` (committed), the SQLSTATE it failed with (LS001: deposed) or `killed`.
#[allow(clippy::too_many_arguments)]
fn fenced_write(
    c: &mut Client,
    run: &str,
    resource: &str,
    token: i64,
    fence: &str,
    hold_us: u64,
    seq: &mut u64,
    id: usize,
    out: &mut impl Write,
) {
    *seq += 1;
    let wid = format!("{run}-{id}-{seq}");
    let sent = now_ns();
    let r = (|| -> Result<(), postgres::Error> {
        let mut t = c.transaction()?;
        t.batch_execute(fence)?;
        t.execute(
            "INSERT INTO public.lease_sched_torture_fenced (run, resource, token, wid) VALUES ($1, $2, $3, $4)",
            &[&run, &resource, &token, &wid],
        )?;
        if hold_us > 0 {
            t.execute("SELECT pg_sleep($1)", &[&(hold_us as f64 / 1e6)])?;
        }
        t.execute("UPDATE public.lease_sched_torture_fenced SET done_at = clock_timestamp() WHERE wid = $1", &[&wid])?;
        t.commit()
    })();
    let outcome = match &r {
        Ok(()) => "ok".to_string(),
        Err(_) if c.is_closed() => "killed".to_string(),
        Err(e) => e.code().map_or_else(|| "error".to_string(), |s| s.code().to_string()),
    };
    writeln!(out, "fw {resource} {token} {wid} {outcome} {sent} {}", now_ns()).unwrap();
}

/// A connection whose backend we can find again by application_name (and terminate).
fn connect_named(dsn: &str, name: &str) -> Client {
    let mut cfg: postgres::Config = dsn.parse().expect("dsn");
    cfg.application_name(name);
    cfg.connect(NoTls).expect("connect")
}

fn micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

const LOCK_ACQUIRE: &str = "SELECT acquired, lock_token, fencing_token, expires_at
                              FROM lease_sched.lock_acquire($1, $2, $3 * interval '1 microsecond')";
/// The heartbeat and, when it was accepted, the expiry it set: lock_info runs after it in
/// the same statement (OFFSET 0 keeps the order) and, being a volatile function, reads the
/// row this statement just updated, which nobody else can change before we commit.
const LOCK_HEARTBEAT: &str = "SELECT ok, CASE WHEN ok THEN (SELECT expires_at FROM lease_sched.lock_info($1)) END
                                FROM (SELECT lease_sched.lock_heartbeat($1, $2) AS ok OFFSET 0) s";

struct LockClient<'a> {
    c: Client,
    pid: i32,
    dsn: &'a str,
    name: String,
    reconnects: u32,
    wseq: u64,
}

impl LockClient<'_> {
    fn reconnect(&mut self) {
        self.reconnects += 1;
        self.c = connect_named(self.dsn, &format!("{}_{}", self.name, self.reconnects));
        self.pid = self.c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    }
    fn heartbeat(&mut self, lock: &str, token: Uuid, fencing: i64, out: &mut impl Write) -> bool {
        let sent = now_ns();
        let row = self.c.query_one(LOCK_HEARTBEAT, &[&lock, &token]).expect("lock_heartbeat");
        let (ok, expires): (bool, Option<chrono::DateTime<chrono::Utc>>) = (row.get(0), row.get(1));
        writeln!(out, "lhb {lock} {fencing} {} {} {sent}", ok as u8, expires.map_or(0, micros)).unwrap();
        ok
    }
    fn release(&mut self, lock: &str, token: Uuid, fencing: i64, out: &mut impl Write) -> bool {
        let sent = now_ns();
        let ok: bool =
            self.c.query_one("SELECT lease_sched.lock_release($1, $2)", &[&lock, &token]).expect("lock_release").get(0);
        writeln!(out, "lrel {lock} {fencing} {} {sent}", ok as u8).unwrap();
        ok
    }
    /// A fenced write under lock_fence(lock, fencing [, token]), held open for `hold_us`.
    #[allow(clippy::too_many_arguments)]
    fn fenced(
        &mut self,
        rng: &mut Rng,
        run: &str,
        id: usize,
        lock: &str,
        token: Uuid,
        fencing: i64,
        hold_us: u64,
        out: &mut impl Write,
    ) {
        let _ = rng;
        let fence = format!("SELECT lease_sched.lock_fence('{lock}', {fencing}, '{token}')");
        fenced_write(&mut self.c, run, lock, fencing, &fence, hold_us, &mut self.wseq, id, out);
    }
}

/// Lock clients: acquire one of a few shared locks with a short TTL, then heartbeat and
/// release it, or walk away, or stall past the TTL and try the secret again, or have the
/// backend terminated by another connection while holding (then try the secret from a
/// new connection).
fn lock_client_loop(
    dsn: &str,
    run: &str,
    seconds: u64,
    locks: usize,
    id: usize,
    killer: &Mutex<Client>,
    out: &mut impl Write,
) {
    let name = format!("tl_{run}_{id}");
    let mut lc = LockClient { c: connect_named(dsn, &name), pid: 0, dsn, name, reconnects: 0, wseq: 0 };
    lc.pid = lc.c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (id as u64 + 7).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let sleep_us = |us: u64| std::thread::sleep(Duration::from_micros(us));
    while Instant::now() < deadline {
        let lock = format!("torture_{run}_lock_{}", rng.below(locks as u64));
        let ttl_us = 100_000 + rng.below(300_000) as i64;
        let sent = now_ns();
        let row = lc.c.query_one(LOCK_ACQUIRE, &[&lock, &format!("c{id}"), &(ttl_us as f64)]).expect("lock_acquire");
        let recv = now_ns();
        if !row.get::<_, bool>(0) {
            writeln!(out, "lbusy {lock}").unwrap();
            sleep_us(rng.below(ttl_us as u64 / 4));
            continue;
        }
        let (token, fencing, expires): (Uuid, i64, chrono::DateTime<chrono::Utc>) =
            (row.get(1), row.get(2), row.get(3));
        let expires = micros(expires);
        writeln!(out, "lgrant {lock} {fencing} {} {expires} {sent} {recv}", expires - ttl_us).unwrap();
        let ttl = ttl_us as u64;
        match rng.below(20) {
            // a well-behaved holder: a few heartbeats well inside the TTL, then release
            // (or walk away and let the lock expire)
            0..=12 => {
                let mut held = true;
                for _ in 0..rng.below(4) {
                    sleep_us(rng.below(ttl * 2 / 5));
                    held = lc.heartbeat(&lock, token, fencing, out);
                    if !held {
                        break;
                    }
                }
                if held && rng.below(2) == 0 {
                    let hold = rng.below(ttl / 4);
                    lc.fenced(&mut rng, run, id, &lock, token, fencing, hold, out);
                }
                if held && rng.below(7) != 0 {
                    lc.release(&lock, token, fencing, out);
                }
            }
            // stalls past its TTL (a GC pause, a swapped-out host), then carries on: the
            // heartbeat revives the lock unless somebody took it over meanwhile
            13..=16 => {
                sleep_us(ttl + rng.below(ttl * 2));
                // a fenced write with the old token first, half the time: it must fail with
                // LS001 when somebody took the lock over meanwhile, and then not land
                if rng.below(2) == 0 {
                    let hold = rng.below(ttl / 4);
                    lc.fenced(&mut rng, run, id, &lock, token, fencing, hold, out);
                }
                if lc.heartbeat(&lock, token, fencing, out) {
                    sleep_us(rng.below(ttl / 3));
                    lc.release(&lock, token, fencing, out);
                } else {
                    lc.release(&lock, token, fencing, out); // a deposed holder: refused
                }
            }
            // terminated mid-hold by another connection; reconnects, sometimes tries the old
            // secret (accepted only while nobody has taken the lock over)
            _ => {
                if rng.below(2) == 0 {
                    sleep_us(rng.below(ttl / 3));
                    lc.heartbeat(&lock, token, fencing, out);
                }
                sleep_us(rng.below(ttl / 3));
                // Our last call's commit is certainly done once a later one on the same
                // connection has returned.
                lc.c.query_one("SELECT 1", &[]).unwrap();
                let killed: bool = killer
                    .lock()
                    .unwrap()
                    .query_one("SELECT pg_terminate_backend($1, 5000)", &[&lc.pid])
                    .unwrap()
                    .get(0);
                writeln!(out, "lkill {lock} {fencing} {}", killed as u8).unwrap();
                lc.reconnect();
                if rng.below(3) == 0 {
                    // from the new connection, with the old token
                    sleep_us(rng.below(ttl * 2));
                    let hold = rng.below(ttl / 8);
                    lc.fenced(&mut rng, run, id, &lock, token, fencing, hold, out);
                }
                if rng.below(2) == 0 {
                    sleep_us(rng.below(ttl * 2));
                    if lc.heartbeat(&lock, token, fencing, out) {
                        lc.release(&lock, token, fencing, out);
                    }
                }
            }
        }
        sleep_us(rng.below(20_000));
    }
}

/// run() schedulers: CALL lease_sched.run() again and again on a few jobs. The command
/// records its execution, then sleeps: briefly (70%), past its lease deadline (15%: the
/// deadline cancels it), or past its lease swallowing that cancel (15%: it outlives its
/// lease; when somebody stole the plan meanwhile, run() must raise LS001 and roll back).
fn run_scheduler_loop(dsn: &str, run: &str, seconds: u64, jobs: usize, every_ms: u64, id: usize, out: &mut impl Write) {
    let name = |n: u32| format!("tr_{run}_{id}_{n}");
    let mut conns = 0;
    let mut c = connect_named(dsn, &name(conns));
    let mut rng = Rng(0xA076_1D64_78BD_642F ^ (id as u64 + 3).wrapping_mul(0xE703_7ED1_A0B4_28DB));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let job = format!("torture_{run}_run_{}", rng.below(jobs as u64));
        let (kind, sleep_ms, stubborn) = match rng.below(20) {
            0..=13 => ("quick", rng.below(80), false),
            14..=16 => ("slow", 650 + rng.below(300), false),
            _ => ("stubborn", 600 + rng.below(300), true),
        };
        let command =
            format!("SELECT public.lease_sched_torture_cmd('{run}', '{job}', {sleep_ms}, '{kind}', {stubborn})");
        let sent = now_ns();
        let r = c.batch_execute(&format!(
            "CALL lease_sched.run('{job}', $cmd${command}$cmd$, every => '{every_ms} milliseconds', stale_timeout => '600 milliseconds', max_attempts => 4)"
        ));
        let outcome = match &r {
            Ok(()) => "ok".to_string(),
            Err(e) if c.is_closed() || e.code() == Some(&postgres::error::SqlState::ADMIN_SHUTDOWN) => {
                "killed".to_string()
            }
            Err(e) => e.code().map_or_else(|| "error".to_string(), |s| s.code().to_string()),
        };
        writeln!(out, "run {job} {kind} {outcome} {sent} {}", now_ns()).unwrap();
        if outcome == "killed" || c.is_closed() {
            conns += 1;
            c = connect_named(dsn, &name(conns));
        }
        std::thread::sleep(Duration::from_micros(rng.below(50_000)));
    }
}

fn worker(a: &Args, w: usize) {
    let share = |n: usize| n / a.processes + usize::from(w < n % a.processes);
    let killer = Arc::new(Mutex::new(Client::connect(&a.dsn, NoTls).expect("connect")));
    let mut extra: Vec<std::thread::JoinHandle<()>> = vec![];
    if a.lock_seconds > 0 {
        for t in 0..share(a.lock_clients) {
            let (dsn, run, logs, seconds, locks, killer) =
                (a.dsn.clone(), a.run.clone(), a.logs.clone(), a.lock_seconds, a.locks, killer.clone());
            let id = w * 1000 + 500 + t;
            extra.push(std::thread::spawn(move || {
                let mut out = BufWriter::new(File::create(format!("{logs}/lock-{id}.log")).unwrap());
                lock_client_loop(&dsn, &run, seconds, locks, id, &killer, &mut out);
                out.flush().unwrap();
            }));
        }
    }
    if a.run_seconds > 0 {
        for t in 0..share(a.run_schedulers) {
            let (dsn, run, logs, seconds, jobs, every) =
                (a.dsn.clone(), a.run.clone(), a.logs.clone(), a.run_seconds, a.run_jobs, a.run_every_ms);
            let id = w * 1000 + 800 + t;
            extra.push(std::thread::spawn(move || {
                let mut out = BufWriter::new(File::create(format!("{logs}/run-{id}.log")).unwrap());
                run_scheduler_loop(&dsn, &run, seconds, jobs, every, id, &mut out);
                out.flush().unwrap();
            }));
        }
    }
    let per = share(a.clients);
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
    extra.into_iter().for_each(|h| h.join().expect("lock client or run() scheduler thread"));
}

#[derive(Default)]
struct Holder {
    fencing: i64,
    attempt: i32,
    claim_recv: u128,
    last_ok_send: u128,
    finished: Option<String>,
    /// the claim's instant on the database clock (µs since 1970; 0 when not logged)
    start: i64,
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
                            start: p.get(6).map_or(0, |v| v.parse().unwrap()),
                        },
                    );
                }
                "lgrant" => {
                    let fencing = p[2].parse::<i64>().unwrap();
                    if !all_tokens.insert(fencing) {
                        violations.push(format!("fencing token {fencing} handed out twice (lock {})", p[1]));
                    }
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
                violations.push(format!(
                    "{eid}: holder {} (attempt {}) followed by {} (attempt {})",
                    prev.fencing, prev.attempt, next.fencing, next.attempt
                ));
            }
            if prev.last_ok_send >= next.claim_recv {
                violations
                    .push(format!("{eid}: holder {} was still acting when {} had claimed", prev.fencing, next.fencing));
            }
            if prev.finished.as_deref() == Some("SUCCESS") {
                violations.push(format!("{eid}: claimed again after an accepted SUCCESS"));
            }
        }
    }
    Analysis { claims, granted, holders, violations }
}

#[derive(Default, Debug)]
struct Grant {
    fencing: i64,
    /// Database clock (µs since 2000): the grant's start, and the latest expiry it was given.
    start: i64,
    end: i64,
    /// Client clock (ns): acquire sent and returned; the last accepted heartbeat/release sent.
    sent: u128,
    recv: u128,
    last_ok_send: u128,
    released: bool,
    revived: bool,
}

#[derive(Default)]
struct LockAnalysis {
    attempts: u64,
    grants: u64,
    takeovers: u64,
    releases: u64,
    revivals: u64,
    kills: u64,
    refused: u64,
    /// Per lock, its grants by fencing token.
    locks: BTreeMap<String, BTreeMap<i64, Grant>>,
    violations: Vec<String>,
}

/// Invariants 6-8 from the lock clients' logs.
fn analyze_lock_logs(dir: &str) -> LockAnalysis {
    let mut a = LockAnalysis::default();
    let mut ops: Vec<(String, i64, &'static str, bool, i64, u128)> = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let f = BufReader::new(File::open(entry.unwrap().path()).unwrap());
        for line in f.lines() {
            let line = line.unwrap();
            let p: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| p[i].parse::<i64>().unwrap();
            let ns = |i: usize| p[i].parse::<u128>().unwrap();
            match p[0] {
                "lbusy" => a.attempts += 1,
                "lgrant" => {
                    a.attempts += 1;
                    a.grants += 1;
                    let g = Grant {
                        fencing: num(2),
                        start: num(3),
                        end: num(4),
                        sent: ns(5),
                        recv: ns(6),
                        last_ok_send: ns(5),
                        ..Grant::default()
                    };
                    a.locks.entry(p[1].to_string()).or_default().insert(g.fencing, g);
                }
                "lhb" => ops.push((p[1].to_string(), num(2), "hb", p[3] == "1", num(4), ns(5))),
                "lrel" => ops.push((p[1].to_string(), num(2), "rel", p[3] == "1", 0, ns(4))),
                "lkill" => a.kills += u64::from(p[3] == "1"),
                _ => {}
            }
        }
    }
    for (lock, fencing, op, ok, expires, sent) in ops {
        let Some(g) = a.locks.get_mut(&lock).and_then(|m| m.get_mut(&fencing)) else {
            a.violations.push(format!("lock {lock}: {op} for token {fencing}, which no client was granted"));
            continue;
        };
        if !ok {
            a.refused += 1;
            continue;
        }
        if g.released {
            a.violations.push(format!("lock {lock}: token {fencing} accepted a {op} after its release"));
        }
        g.last_ok_send = g.last_ok_send.max(sent);
        if op == "hb" {
            if expires <= g.start {
                a.violations.push(format!(
                    "lock {lock}: token {fencing} heartbeat set expires_at {expires} before its grant {}",
                    g.start
                ));
            }
            // a heartbeat whose call started after the expiry it replaces revived the lock
            g.revived |= expires - (g.end - g.start) >= g.end;
            g.end = g.end.max(expires);
        } else {
            g.released = true;
            a.releases += 1;
        }
    }
    for (lock, grants) in &a.locks {
        let gs: Vec<&Grant> = grants.values().collect();
        a.revivals += gs.iter().filter(|g| g.revived).count() as u64;
        // 6. real-time order: no grant returned before a grant with a lower token was asked for
        let mut earliest_recv_above = u128::MAX;
        for g in gs.iter().rev() {
            if earliest_recv_above < g.sent {
                a.violations.push(format!(
                    "lock {lock}: a grant with a token above {} returned before {} was requested",
                    g.fencing, g.fencing
                ));
            }
            earliest_recv_above = earliest_recv_above.min(g.recv);
        }
        for pair in gs.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            // 7. one live holder at any instant; a replaced secret never works
            if prev.last_ok_send >= next.recv {
                a.violations.push(format!(
                    "lock {lock}: holder of token {} was still accepted when {} had been granted",
                    prev.fencing, next.fencing
                ));
            }
            // 8. validity intervals on the database clock
            if !prev.released {
                a.takeovers += 1;
                if next.start < prev.end {
                    a.violations.push(format!(
                        "lock {lock}: token {} granted at {} while token {} was valid until {} (overlap {} µs)",
                        next.fencing,
                        next.start,
                        prev.fencing,
                        prev.end,
                        prev.end - next.start
                    ));
                }
            }
        }
    }
    a
}

/// 9. every lock row ends with its last logged grant, or is gone after its release.
fn check_lock_rows(c: &mut Client, a: &LockAnalysis) -> Vec<String> {
    let mut violations = vec![];
    for (lock, grants) in &a.locks {
        let last = grants.values().next_back().unwrap();
        let row: Option<i64> =
            c.query_opt("SELECT fencing_token FROM lease_sched.lock_info($1)", &[lock]).unwrap().map(|r| r.get(0));
        match (row, last.released) {
            (None, true) => {}
            (Some(t), false) if t == last.fencing => {}
            (row, released) => violations.push(format!(
                "lock {lock}: row ends with token {row:?}, the last logged grant is {} (released: {released})",
                last.fencing
            )),
        }
    }
    violations
}

/// The table the run() command writes to, and the command.
const RUN_SETUP: &str = "
    CREATE TABLE IF NOT EXISTS public.lease_sched_torture_effects (
        run text NOT NULL, job text NOT NULL, plan timestamptz, fencing bigint, pid int, kind text,
        at timestamptz NOT NULL DEFAULT clock_timestamp());
    CREATE OR REPLACE FUNCTION public.lease_sched_torture_cmd(run text, job text, sleep_ms int, kind text, stubborn boolean)
    RETURNS void LANGUAGE plpgsql AS $f$
    DECLARE
        f bigint;
        p timestamptz;
    BEGIN
        -- run() claimed this plan as '<application_name> pid <pid>' and committed the claim
        SELECT e.fencing_token, e.plan_time INTO f, p FROM lease_sched.sys_cron_executions e
         WHERE e.job_name = job AND e.status = 'RUNNING'
           AND e.runner_id = format('%s pid %s', current_setting('application_name'), pg_backend_pid())
         ORDER BY e.fencing_token DESC LIMIT 1;
        INSERT INTO public.lease_sched_torture_effects (run, job, plan, fencing, pid, kind)
        VALUES (run, job, p, f, pg_backend_pid(), kind);
        IF stubborn THEN
            BEGIN
                PERFORM pg_sleep(sleep_ms / 1000.0);
            EXCEPTION WHEN query_canceled THEN
                PERFORM pg_sleep(sleep_ms / 1000.0);  -- swallow the lease deadline and go on
            END;
        ELSE
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END $f$;";

/// Terminates a random scheduler's backend now and then while the schedulers run; counts.
fn run_killer(dsn: &str, run: &str, seconds: u64) -> u64 {
    let mut c = Client::connect(dsn, NoTls).unwrap();
    let mut rng = Rng(0x5851_F42D_4C95_7F2D);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut kills = 0;
    loop {
        std::thread::sleep(Duration::from_millis(300 + rng.below(900)));
        if Instant::now() >= deadline {
            return kills;
        }
        let killed: Option<bool> = c
            .query_opt(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name LIKE $1 AND state = 'active' ORDER BY random() LIMIT 1",
                &[&format!("tr_{run}_%")],
            )
            .unwrap()
            .map(|r| r.get(0));
        kills += u64::from(killed == Some(true));
    }
}

/// 11 (while schedulers run): every second, no run() plan RUNNING 5 s past stale_after.
fn run_monitor(dsn: &str, run: &str, seconds: u64) -> Vec<String> {
    let mut c = Client::connect(dsn, NoTls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut violations = vec![];
    let mut seen = HashSet::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        for r in c
            .query(
                "SELECT job_name, plan_time::text, attempt, max_attempts, (now() - stale_after)::text
                   FROM lease_sched.sys_cron_executions
                  WHERE job_name LIKE $1 AND status = 'RUNNING' AND stale_after < now() - interval '5 seconds'",
                &[&format!("torture_{run}_run_%")],
            )
            .unwrap()
        {
            let (job, plan): (String, String) = (r.get(0), r.get(1));
            if seen.insert((job.clone(), plan.clone())) {
                violations.push(format!(
                    "run(): {job} plan {plan} RUNNING {} past stale_after (attempt {} of {}) while schedulers run",
                    r.get::<_, String>(4),
                    r.get::<_, i32>(2),
                    r.get::<_, i32>(3)
                ));
            }
        }
    }
    violations
}

#[derive(Default)]
struct RunStats {
    calls: u64,
    outcomes: BTreeMap<String, u64>,
    plans: i64,
    successes: i64,
}

/// Invariant 10 (and the attempts of 11) against the tables, with the schedulers' logs.
fn check_runs(c: &mut Client, a: &Args) -> (RunStats, Vec<String>) {
    let mut st = RunStats::default();
    for entry in std::fs::read_dir(&a.logs).unwrap() {
        let f = BufReader::new(File::open(entry.unwrap().path()).unwrap());
        for line in f.lines() {
            let line = line.unwrap();
            let p: Vec<&str> = line.split(' ').collect();
            if p[0] == "run" {
                st.calls += 1;
                *st.outcomes.entry(format!("{} {}", p[2], p[3])).or_default() += 1;
            }
        }
    }
    let mut violations = vec![];
    let jobs = format!("torture_{}_run_%", a.run);
    for r in c
        .query(
            "SELECT job, plan::text, count(*), array_agg(fencing::text ORDER BY fencing)::text, array_agg(kind)::text
               FROM public.lease_sched_torture_effects WHERE run = $1
              GROUP BY job, plan HAVING count(*) > 1 OR plan IS NULL",
            &[&a.run],
        )
        .unwrap()
    {
        let plan: Option<String> = r.get(1);
        violations.push(match plan {
            None => format!(
                "run(): {} committed work of a run that held no lease ({} rows)",
                r.get::<_, String>(0),
                r.get::<_, i64>(2)
            ),
            Some(plan) => format!(
                "run(): {} plan {plan} executed {} times (fencing tokens {}, kinds {})",
                r.get::<_, String>(0),
                r.get::<_, i64>(2),
                r.get::<_, String>(3),
                r.get::<_, String>(4)
            ),
        });
    }
    for r in c
        .query(
            "SELECT e.job_name, e.plan_time::text, e.status, e.fencing_token, x.fencing, x.kind
               FROM (SELECT * FROM lease_sched.sys_cron_executions WHERE job_name LIKE $2) e
               FULL JOIN (SELECT * FROM public.lease_sched_torture_effects WHERE run = $1 AND plan IS NOT NULL) x
                 ON x.job = e.job_name AND x.plan = e.plan_time
              WHERE NOT coalesce((e.status = 'SUCCESS' AND x.fencing = e.fencing_token)
                                 OR (e.status IS DISTINCT FROM 'SUCCESS' AND x.job IS NULL), false)",
            &[&a.run, &jobs],
        )
        .unwrap()
    {
        let (job, plan, status): (Option<String>, Option<String>, Option<String>) = (r.get(0), r.get(1), r.get(2));
        let (row_token, work_token, kind): (Option<i64>, Option<i64>, Option<String>) = (r.get(3), r.get(4), r.get(5));
        violations.push(format!(
            "run(): {job:?} plan {plan:?} ended {status:?} (token {row_token:?}) but its committed work is {} (token {work_token:?})",
            kind.map_or("missing".to_string(), |k| format!("a {k} run"))
        ));
    }
    let r = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE status = 'SUCCESS'), count(*) FILTER (WHERE attempt > max_attempts)
               FROM lease_sched.sys_cron_executions WHERE job_name LIKE $1",
            &[&jobs],
        )
        .unwrap();
    (st.plans, st.successes) = (r.get(0), r.get(1));
    if r.get::<_, i64>(2) > 0 {
        violations.push(format!("run(): {} plans with attempt > max_attempts", r.get::<_, i64>(2)));
    }
    (st, violations)
}

/// Invariants 3-5 against the table, after the logs.
fn check(a: &Args) -> (u64, u64, Vec<String>, Grants) {
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
        // The table has no CHECK (sql/schema.sql): the API keeps these, and this checks it.
        if attempt > max || attempt < 1 {
            violations.push(format!("{eid}: attempt {attempt} outside 1..=max_attempts {max}"));
        }
        if !["RUNNING", "SUCCESS", "FAILED", "SKIPPED"].contains(&status.as_str()) {
            violations.push(format!("{eid}: status {status:?} is not one the API writes"));
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
    let grants = holders
        .iter()
        .map(|(eid, hs)| (eid.to_string(), hs.values().map(|h| (h.fencing, (h.start, h.claim_recv))).collect()))
        .collect();
    (claims, granted, violations, grants)
}

/// Per resource (a lock's name, a lease's execution id), its grants by fencing token: the
/// grant's instant on the database clock (µs) and when its call returned (client clock, ns).
type Grants = HashMap<String, BTreeMap<i64, (i64, u128)>>;

/// A committed row of public.lease_sched_torture_fenced (times in µs on the database clock).
struct FencedRow {
    id: i64,
    resource: String,
    token: i64,
    wid: String,
    done_at: i64,
}

#[derive(Default)]
struct FencedAnalysis {
    writes: u64,
    committed: u64,
    refused: u64,
    rows: u64,
    violations: Vec<String>,
}

/// Invariant 12, fenced writes: lease and lock holders write in one transaction under
/// lease_fence/lock_fence (including holders that stalled past their TTL, whose lease was
/// stolen, or whose backend was terminated). Checked against the committed rows:
/// a. a row exists exactly for each fenced transaction that logged a successful COMMIT
///    (a write refused with LS001 never lands), and no transaction failed otherwise;
/// b. every row's token was granted for its resource;
/// c. per resource, tokens never decrease in id order;
/// d. no row from a grant after the next grant of its resource: its transaction's last
///    statement (`done_at`) ran no later than the next grant on the database clock, and the
///    transaction was sent before the next grant's call returned (client clock).
///
/// Why id order is real-time order for (c): `id` comes from a sequence (CACHE 1, so nextval
/// hands out values in the real-time order of the calls, across backends), called by the
/// INSERT, which runs after the fence passed. A fence passed with the secret locks the
/// lock/lease row FOR KEY SHARE until the transaction ends, and a takeover, steal or release locks it FOR UPDATE
/// first. So for two committed writes with tokens t1 < t2 of one resource: INSERT(t1) <
/// end of t1's transaction <= the takeover that granted t2 (or t1's own release) < t2's grant
/// returned < t2's fence < INSERT(t2), i.e. id(t1) < id(t2). A fence that let an old token
/// through after a newer grant, or did not hold until the end of its transaction, breaks the
/// chain; (d) catches the latter also when no newer row follows.
fn analyze_fenced(dir: &str, rows: &[FencedRow], grants: &Grants) -> FencedAnalysis {
    let mut a = FencedAnalysis::default();
    // wid -> (resource, token, outcome, sent)
    let mut logged: HashMap<String, (String, i64, String, u128)> = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let f = BufReader::new(File::open(entry.unwrap().path()).unwrap());
        for line in f.lines() {
            let line = line.unwrap();
            let p: Vec<&str> = line.split(' ').collect();
            if p[0] != "fw" {
                continue;
            }
            a.writes += 1;
            match p[4] {
                "ok" => a.committed += 1,
                "LS001" => a.refused += 1,
                other => {
                    a.violations.push(format!("fenced write {} ({} token {}) failed with {other}", p[3], p[1], p[2]))
                }
            }
            logged.insert(
                p[3].to_string(),
                (p[1].to_string(), p[2].parse().unwrap(), p[4].to_string(), p[5].parse().unwrap()),
            );
        }
    }
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, (i64, i64)> = HashMap::new(); // resource -> (token, id) of the previous row
    let mut sorted: Vec<&FencedRow> = rows.iter().collect();
    sorted.sort_by_key(|r| r.id);
    for r in sorted {
        a.rows += 1;
        let (res, tok) = (r.resource.as_str(), r.token);
        // a.
        match logged.get(&r.wid) {
            None => a
                .violations
                .push(format!("fenced: row {} ({res} token {tok}) was written by no logged transaction", r.id)),
            Some((_, _, outcome, _)) if outcome != "ok" => a.violations.push(format!(
                "fenced: {res}: a write of token {tok} landed (row {}) although its transaction failed with {outcome}",
                r.id
            )),
            Some((lres, ltok, _, _)) if lres != res || *ltok != tok => a
                .violations
                .push(format!("fenced: row {} is ({res}, {tok}), its transaction wrote ({lres}, {ltok})", r.id)),
            Some(_) => {}
        }
        seen.insert(r.wid.as_str());
        // b.
        let Some(gs) = grants.get(res).filter(|gs| gs.contains_key(&tok)) else {
            a.violations.push(format!("fenced: {res}: row {} carries token {tok}, never granted for it", r.id));
            continue;
        };
        // c.
        if let Some(&(ptok, pid)) = last.get(res) {
            if tok < ptok {
                a.violations.push(format!(
                    "fenced: {res}: row {} of token {tok} written after row {pid} of the newer token {ptok}",
                    r.id
                ));
            }
        }
        last.insert(res, (tok, r.id));
        // d.
        if let Some((&next, &(next_start, next_recv))) = gs.range(tok + 1..).next() {
            if next_start != 0 && r.done_at > next_start {
                a.violations.push(format!(
                    "fenced: {res}: row {} of token {tok} was still being written {} µs after token {next} was granted (database clock)",
                    r.id, r.done_at - next_start
                ));
            }
            if let Some((_, _, _, sent)) = logged.get(&r.wid) {
                if *sent >= next_recv {
                    a.violations.push(format!("fenced: {res}: token {tok} committed a write (row {}) sent after token {next} had been granted", r.id));
                }
            }
        }
    }
    for (wid, (res, tok, outcome, _)) in &logged {
        if outcome == "ok" && !seen.contains(wid.as_str()) {
            a.violations.push(format!("fenced: {res}: the committed write {wid} of token {tok} has no row"));
        }
    }
    a
}

/// The committed fenced rows of this run.
fn fenced_rows(c: &mut Client, run: &str) -> Vec<FencedRow> {
    c.query(
        "SELECT id, resource, token, wid, coalesce(done_at, written_at) FROM public.lease_sched_torture_fenced WHERE run = $1",
        &[&run],
    )
    .unwrap()
    .into_iter()
    .map(|r| FencedRow { id: r.get(0), resource: r.get(1), token: r.get(2), wid: r.get(3), done_at: micros(r.get(4)) })
    .collect()
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
    Client::connect(&a.dsn, NoTls).unwrap().batch_execute(FENCED_SETUP).expect("fenced writes table");
    if a.run_seconds > 0 {
        Client::connect(&a.dsn, NoTls).unwrap().batch_execute(RUN_SETUP).expect("run() torture table and command");
    }
    let started = Instant::now();
    let children: Vec<_> = (0..a.processes)
        .map(|w| {
            Command::new(&me)
                .args([
                    "--worker",
                    &w.to_string(),
                    "--seconds",
                    &a.seconds.to_string(),
                    "--clients",
                    &a.clients.to_string(),
                ])
                .args(["--claims", &a.claims.to_string()])
                .args(["--processes", &a.processes.to_string(), "--dsn", &a.dsn, "--logs", &a.logs, "--run", &a.run])
                .args(["--lock-seconds", &a.lock_seconds.to_string(), "--lock-clients", &a.lock_clients.to_string()])
                .args(["--locks", &a.locks.to_string(), "--run-seconds", &a.run_seconds.to_string()])
                .args(["--run-schedulers", &a.run_schedulers.to_string(), "--run-jobs", &a.run_jobs.to_string()])
                .args(["--run-every-ms", &a.run_every_ms.to_string()])
                .spawn()
                .expect("spawn worker process")
        })
        .collect();
    let run_threads = (a.run_seconds > 0).then(|| {
        let (dsn, run, seconds) = (a.dsn.clone(), a.run.clone(), a.run_seconds);
        let killer = std::thread::spawn(move || run_killer(&dsn, &run, seconds));
        let (dsn, run) = (a.dsn.clone(), a.run.clone());
        let monitor = std::thread::spawn(move || run_monitor(&dsn, &run, seconds));
        (killer, monitor)
    });
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a worker process failed");
    }
    let (run_kills, mut run_violations) =
        run_threads.map_or((0, vec![]), |(k, m)| (k.join().unwrap(), m.join().unwrap()));
    let (claims, granted, mut violations, mut grants) = check(&a);
    let mut c = Client::connect(&a.dsn, NoTls).unwrap();
    let mut lock_line = None;
    if a.lock_seconds > 0 {
        let mut la = analyze_lock_logs(&a.logs);
        for (lock, gs) in &la.locks {
            grants.insert(lock.clone(), gs.values().map(|g| (g.fencing, (g.start, g.recv))).collect());
        }
        la.violations.extend(check_lock_rows(&mut c, &la));
        lock_line = Some(format!(
            "torture locks: {} lock clients on {} locks for {} s: {} acquire calls, {} lock grants ({} takeovers of expired locks, \
             {} releases, {} revived by a late heartbeat), {} backends terminated mid-hold, {} calls with a replaced or released secret refused, {} violations",
            a.lock_clients, a.locks, a.lock_seconds, la.attempts, la.grants, la.takeovers, la.releases, la.revivals, la.kills, la.refused,
            la.violations.len()
        ));
        violations.append(&mut la.violations);
    }
    let mut fa = analyze_fenced(&a.logs, &fenced_rows(&mut c, &a.run), &grants);
    let fenced_line = format!(
        "torture fences: {} fenced transactions by lease and lock holders: {} fenced writes committed, {} refused with LS001 (rolled back); \
         {} rows checked, {} violations",
        fa.writes, fa.committed, fa.refused, fa.rows, fa.violations.len()
    );
    violations.append(&mut fa.violations);
    let mut run_line = None;
    if a.run_seconds > 0 {
        let (st, mut v) = check_runs(&mut c, &a);
        run_violations.append(&mut v);
        let outcomes: Vec<String> = st.outcomes.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        run_line = Some(format!(
            "torture run(): {} schedulers on {} jobs for {} s: {} run() calls ({}), {} backends terminated mid-CALL; \
             {} plans, {} SUCCESS each with exactly one committed execution, {} violations",
            a.run_schedulers,
            a.run_jobs,
            a.run_seconds,
            st.calls,
            outcomes.join(", "),
            run_kills,
            st.plans,
            st.successes,
            run_violations.len()
        ));
        violations.append(&mut run_violations);
    }
    for v in violations.iter().take(30) {
        eprintln!("VIOLATION: {v}");
    }
    println!(
        "torture: {} clients in {} processes for {:.1} s: {claims} claims checked ({granted} leases granted), {} violations",
        a.clients, a.processes, started.elapsed().as_secs_f64(), violations.len()
    );
    lock_line.into_iter().chain(Some(fenced_line)).chain(run_line).for_each(|l| println!("{l}"));
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
            "claim 5c0c1f0e-0000-4000-8000-000000000002 12 1 300 310",
        ]));
        assert_eq!(a.violations.len(), 3, "{:?}", a.violations);
    }

    // lgrant <lock> <fencing> <start> <end> <sent> <recv>; lhb <lock> <fencing> <ok> <expires> <sent>;
    // lrel <lock> <fencing> <ok> <sent>

    #[test]
    fn clean_lock_handovers_pass() {
        let a = analyze_lock_logs(&logs(&[
            "lgrant L 10 0 100 1 2",
            "lhb L 10 1 150 3",
            "lrel L 10 1 4",
            "lgrant L 11 120 220 5 6", // after a release: may start before the old expiry
            "lhb L 11 1 330 7",        // a late heartbeat (at 230) revives it: nobody took it over
            "lkill L 11 1",
            "lgrant L 12 330 430 8 9", // a takeover exactly at the expiry
            "lhb L 11 0 0 10",         // the replaced secret is refused
            "lbusy L",
        ]));
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!(
            (a.attempts, a.grants, a.takeovers, a.releases, a.revivals, a.kills, a.refused),
            (4, 3, 1, 1, 1, 1, 1)
        );
    }

    #[test]
    fn overlapping_lock_grants_are_caught() {
        let a = analyze_lock_logs(&logs(&["lgrant L 10 0 100 1 2", "lhb L 10 1 150 3", "lgrant L 11 140 240 4 5"]));
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
        assert!(a.violations[0].contains("overlap 10 µs"), "{:?}", a.violations);
    }

    #[test]
    fn a_replaced_lock_secret_that_works_is_caught() {
        let a = analyze_lock_logs(&logs(&["lgrant L 10 0 100 1 2", "lgrant L 11 100 200 3 4", "lrel L 10 1 5"]));
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
        assert!(a.violations[0].contains("still accepted"), "{:?}", a.violations);
        let a = analyze_lock_logs(&logs(&["lgrant L 10 0 100 1 2", "lrel L 10 1 3", "lhb L 10 1 150 4"]));
        assert!(a.violations.iter().any(|v| v.contains("after its release")), "{:?}", a.violations);
    }

    // fw <resource> <token> <wid> <outcome> <sent> <recv>; grants: token -> (db start µs, recv ns)

    fn grants() -> Grants {
        HashMap::from([("L".to_string(), BTreeMap::from([(10, (0, 2)), (11, (100, 20)), (12, (300, 40))]))])
    }

    fn row(id: i64, token: i64, wid: &str, done_at: i64) -> FencedRow {
        FencedRow { id, resource: "L".into(), token, wid: wid.into(), done_at }
    }

    #[test]
    fn clean_fenced_writes_pass() {
        let dir = logs(&["fw L 10 w1 ok 3 4", "fw L 10 w2 LS001 25 26", "fw L 11 w3 ok 21 22", "fw L 12 w4 ok 41 42"]);
        let rows = [row(1, 10, "w1", 50), row(5, 11, "w3", 120), row(7, 12, "w4", 310)];
        let a = analyze_fenced(&dir, &rows, &grants());
        assert!(a.violations.is_empty(), "{:?}", a.violations);
        assert_eq!((a.writes, a.committed, a.refused, a.rows), (4, 3, 1, 3));
    }

    #[test]
    fn an_older_token_written_after_a_newer_one_is_caught() {
        let dir = logs(&["fw L 11 w1 ok 21 22", "fw L 10 w2 ok 3 4"]);
        let a = analyze_fenced(&dir, &[row(1, 11, "w1", 120), row(2, 10, "w2", 50)], &grants());
        assert_eq!(a.violations.len(), 1, "{:?}", a.violations);
        assert!(a.violations[0].contains("after row 1 of the newer token 11"), "{:?}", a.violations);
    }

    #[test]
    fn a_refused_write_that_landed_and_a_lost_commit_are_caught() {
        let dir = logs(&["fw L 10 w1 LS001 15 16", "fw L 11 w2 ok 21 22", "fw L 11 w3 40P01 23 24"]);
        let a = analyze_fenced(&dir, &[row(1, 10, "w1", 50)], &grants());
        assert_eq!(a.violations.len(), 3, "{:?}", a.violations);
        assert!(
            a.violations.iter().any(|v| v.contains("landed (row 1) although its transaction failed with LS001")),
            "{:?}",
            a.violations
        );
        assert!(a.violations.iter().any(|v| v.contains("w2 of token 11 has no row")), "{:?}", a.violations);
        assert!(a.violations.iter().any(|v| v.contains("failed with 40P01")), "{:?}", a.violations);
    }

    #[test]
    fn fenced_writes_of_a_deposed_holder_or_an_ungranted_token_are_caught() {
        // token 10 sent its write after 11 was granted (client clock), and its transaction
        // was still running after 11's grant (database clock): no newer row follows, so only
        // these two checks see it
        let dir = logs(&["fw L 10 w1 ok 21 60", "fw L 13 w2 ok 50 51", "fw M 10 w3 ok 3 4"]);
        let rows =
            [row(1, 10, "w1", 150), row(2, 13, "w2", 400), FencedRow { resource: "M".into(), ..row(3, 10, "w3", 5) }];
        let a = analyze_fenced(&dir, &rows, &grants());
        assert_eq!(a.violations.len(), 4, "{:?}", a.violations);
        assert!(
            a.violations.iter().any(|v| v.contains("row 1 of token 10 was still being written 50 µs after token 11")),
            "{:?}",
            a.violations
        );
        assert!(
            a.violations.iter().any(|v| v.contains("token 10 committed a write (row 1) sent after token 11")),
            "{:?}",
            a.violations
        );
        assert!(
            a.violations.iter().any(|v| v.contains("L: row 2 carries token 13, never granted")),
            "{:?}",
            a.violations
        );
        assert!(
            a.violations.iter().any(|v| v.contains("M: row 3 carries token 10, never granted")),
            "{:?}",
            a.violations
        );
    }

    #[test]
    fn lock_tokens_going_backwards_are_caught() {
        // token 12 returned before 11 was even requested
        let a = analyze_lock_logs(&logs(&["lgrant L 12 0 100 1 2", "lrel L 12 1 3", "lgrant L 11 200 300 4 5"]));
        assert!(a.violations.iter().any(|v| v.contains("returned before")), "{:?}", a.violations);
        // and a token shared by a lease and a lock
        let l = analyze_logs(&logs(&[&format!("claim {E} 10 1 100 110"), "lgrant L 10 0 100 1 2"]));
        assert_eq!(l.violations.len(), 1, "{:?}", l.violations);
    }
}
