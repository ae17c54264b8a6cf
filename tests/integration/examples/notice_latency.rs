//! How long a deposed holder waits for its `lease_sched_lost` notice: from the moment a
//! steal's commit returned to its client until a listener receives the notice, under a
//! load of `LOAD` clients stealing stale leases as fast as they can (each of those steals
//! notifies too). Run by bench/notice_latency.sh:
//!
//!   LEASE_SCHED_DSN=... cargo run --release --example notice_latency -- [PROBES] [LOAD]
//!
//! Prints the p50 / p99 / max latency of PROBES probes (one every 10 ms), how many
//! notices came from the stealer's own backend (inline) or from another (the sweeper), and
//! the load's steals per second.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

fn connect(dsn: &str) -> Client {
    Client::connect(dsn, NoTls).expect("connect")
}

const CLAIM: &str = "SELECT execution_id::text, outcome, pg_backend_pid() FROM lease_sched.lease_try_claim($1, to_timestamp($2), $3, 'global', '', interval '1 millisecond', 2147483647, true)";

fn main() {
    let dsn = std::env::var("LEASE_SCHED_DSN").expect("LEASE_SCHED_DSN");
    let args: Vec<String> = std::env::args().collect();
    let probes: usize = args.get(1).map_or(1000, |a| a.parse().unwrap());
    let load: usize = args.get(2).map_or(8, |a| a.parse().unwrap());
    let tag = format!("lat{}", std::process::id());

    // The listener: every notice with its arrival time and the pid that sent it.
    let (tx, rx) = mpsc::channel::<(String, Instant, i32)>();
    let mut l = connect(&dsn);
    l.batch_execute("LISTEN lease_sched_lost").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut n = l.notifications();
                let mut it = n.timeout_iter(Duration::from_millis(200));
                while let Ok(Some(note)) = it.next() {
                    let _ = tx.send((note.payload().to_owned(), Instant::now(), note.process_id()));
                }
            }
        });
    }

    // The load: each client steals its own 100 leases round and round.
    let steals = Arc::new(AtomicU64::new(0));
    let mut loaders = Vec::new();
    for c in 0..load {
        let (dsn, stop, steals, tag) = (dsn.clone(), stop.clone(), steals.clone(), tag.clone());
        loaders.push(std::thread::spawn(move || {
            let mut db = connect(&dsn);
            let claim = db.prepare(CLAIM).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = (c as f64) * 1000.0 + (i % 100) as f64;
                let row = db.query_one(&claim, &[&format!("{tag}-load-{c}"), &k, &format!("load-{c}")]).unwrap();
                if row.get::<_, String>(1) == "stole" {
                    steals.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }

    // The probes: a holder claims, its lease goes stale (1 ms), the thief steals it.
    let mut holder = connect(&dsn);
    let mut thief = connect(&dsn);
    let hold = holder.prepare(CLAIM).unwrap();
    let steal = thief.prepare(CLAIM).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // let the load start
    let started = Instant::now();
    let steals_before = steals.load(Ordering::Relaxed);
    let mut sent: HashMap<String, (Instant, i32)> = HashMap::new();
    for p in 0..probes {
        let job = format!("{tag}-probe");
        let k = p as f64;
        holder.query_one(&hold, &[&job, &k, &"holder"]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let row = thief.query_one(&steal, &[&job, &k, &"thief"]).unwrap();
        let at = Instant::now();
        assert_eq!(row.get::<_, String>(1), "stole");
        sent.insert(row.get(0), (at, row.get(2)));
        std::thread::sleep(Duration::from_millis(8));
    }
    let elapsed = started.elapsed();
    let load_rate = (steals.load(Ordering::Relaxed) - steals_before) as f64 / elapsed.as_secs_f64();
    // Wait for the last notices.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut latencies = Vec::new();
    let (mut inline, mut from_worker) = (0, 0);
    while !sent.is_empty() && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok((payload, at, pid)) => {
                if let Some((t0, stealer)) = sent.remove(&payload) {
                    latencies.push(at.saturating_duration_since(t0));
                    if pid == stealer {
                        inline += 1
                    } else {
                        from_worker += 1
                    }
                }
            }
            Err(_) => continue,
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in loaders {
        t.join().unwrap();
    }
    latencies.sort();
    let q = |f: f64| latencies.get(((latencies.len() as f64 - 1.0) * f).round() as usize).copied().unwrap_or_default();
    println!(
        "probes {probes}, received {}, missing {}, inline {inline}, from another backend {from_worker}",
        latencies.len(),
        sent.len()
    );
    println!(
        "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; load: {load} clients, {:.0} steals/s",
        q(0.5).as_secs_f64() * 1e3,
        q(0.9).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        load_rate
    );
}
