//! Failover: a streaming replica (pg_basebackup from the same binaries, on loopback, with
//! synchronous replication) is promoted while runners work. After promotion, claims go on
//! on the new primary, fencing tokens stay above every token issued before, and every
//! SUCCESS a runner saw committed is there. The test runs its own two clusters.
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_sched_integration::*;

// Ports the kernel picked as free, and a directory named after them: fixed ones collide
// with whatever else runs on a shared machine.
static PORTS: std::sync::LazyLock<[u16; 2]> = std::sync::LazyLock::new(free_ports::<2>);

fn base() -> String {
    format!("/tmp/lease_sched_failover_{}", PORTS[0])
}

fn as_postgres(args: &[&str]) {
    let status = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).status().unwrap();
    assert!(status.success(), "{args:?}");
}

fn client(port: u16) -> postgres::Client {
    connect_retrying(&format!("host=127.0.0.1 port={port} dbname=lease_sched user=postgres"))
}

struct Clusters;

impl Drop for Clusters {
    fn drop(&mut self) {
        for dir in ["primary", "replica"] {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", &format!("{}/{dir}/data", base()), "-m", "immediate", "stop"])
                .output();
        }
        // Named after its port, the directory is this run's alone: leave nothing behind.
        let _ = std::fs::remove_dir_all(base());
    }
}

#[test]
fn promotion_keeps_committed_successes_and_raises_fencing_tokens() {
    let [primary_port, replica_port] = *PORTS;
    let base = base();
    let _clusters = Clusters;
    let cluster_sh = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
    let status = Command::new(cluster_sh)
        .args(["start", &format!("{base}/primary"), &primary_port.to_string(), "wal_level = replica"])
        .status()
        .unwrap();
    assert!(status.success());
    client(primary_port).batch_execute("CREATE EXTENSION lease_sched").unwrap();

    let replica = format!("{base}/replica");
    // A replica left running by an interrupted earlier run would hold its port.
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", &format!("{replica}/data"), "-m", "immediate", "-w", "stop"])
        .output();
    let _ = std::fs::remove_dir_all(&replica);
    std::fs::create_dir_all(&replica).unwrap();
    Command::new("chown").args(["postgres", &replica]).status().unwrap();
    as_postgres(&[
        &format!("{}/pg_basebackup", pgbin()), "-h", "127.0.0.1", "-p", &primary_port.to_string(), "-U", "postgres",
        "-D", &format!("{replica}/data"), "-R", "-X", "stream", "-c", "fast",
    ]);
    let conf = format!("{replica}/data/postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&conf).unwrap();
    auto.push_str(&format!(
        "port = {replica_port}\nunix_socket_directories = '{replica}'\n\
         primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name=replica'\n"
    ));
    std::fs::write(&conf, auto).unwrap();
    as_postgres(&[&format!("{}/pg_ctl", pgbin()), "-D", &format!("{replica}/data"), "-l", &format!("{replica}/server.log"), "-w", "start"]);

    let mut p = client(primary_port);
    p.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'replica'").unwrap();
    p.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(wait_until(Duration::from_secs(30), || {
        p.query_opt("SELECT 1 FROM pg_stat_replication WHERE application_name = 'replica' AND sync_state = 'sync'", &[])
            .unwrap()
            .is_some()
    }));

    // Runners claim and finish on the primary until it dies under them.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::<(uuid::Uuid, i64)>::new()));
    let job = unique("failover");
    let runners: Vec<_> = (0..6)
        .map(|i| {
            let (stop, committed, job) = (stop.clone(), committed.clone(), job.clone());
            std::thread::spawn(move || {
                let mut c = client(primary_port);
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let t = plan() + chrono::Duration::seconds(i * 1_000_000 + k);
                    let Ok(r) = try_claim_with(&mut c, &job, t, &format!("r{i}"), &ClaimArgs::default()) else { return };
                    if r.outcome != "won" {
                        continue;
                    }
                    let ok = c.query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", &[&r.id(), &r.token()]);
                    match ok {
                        Ok(row) if row.get::<_, bool>(0) => committed.lock().unwrap().push((r.id(), r.fencing_token.unwrap())),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    as_postgres(&[&format!("{}/pg_ctl", pgbin()), "-D", &format!("{base}/primary/data"), "-m", "immediate", "stop"]);
    stop.store(true, Ordering::Relaxed);
    runners.into_iter().for_each(|h| {
        let _ = h.join();
    });
    as_postgres(&[&format!("{}/pg_ctl", pgbin()), "-D", &format!("{replica}/data"), "-w", "promote"]);

    let committed = committed.lock().unwrap().clone();
    assert!(committed.len() > 50, "runners got work done before the failover: {}", committed.len());
    let mut r = client(replica_port);
    let ids: Vec<uuid::Uuid> = committed.iter().map(|(id, _)| *id).collect();
    let present: i64 = r
        .query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE id = ANY($1) AND status = 'SUCCESS'", &[&ids])
        .unwrap()
        .get(0);
    assert_eq!(present as usize, committed.len(), "every acknowledged SUCCESS survived the failover");
    let highest = committed.iter().map(|(_, f)| *f).max().unwrap();
    let after = claim(&mut r, &job, plan() - chrono::Duration::days(1), "after-failover");
    assert_eq!(after.outcome, "won", "claims go on on the new primary");
    assert!(after.fencing_token.unwrap() > highest, "token {} after failover vs {highest} before", after.fencing_token.unwrap());
    eprintln!("failover: {} committed successes kept, tokens continue above {highest}", committed.len());
}
