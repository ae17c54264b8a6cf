//! Failover: a streaming replica (pg_basebackup from the same binaries, on loopback, with
//! synchronous replication) is promoted while runners work. After promotion, claims go on
//! on the new primary, fencing tokens stay above every token issued before, and every
//! SUCCESS a runner saw committed is there. The test runs its own two clusters.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_sched_integration::fixtures::{client_at, OwnClusters};
use lease_sched_integration::*;

#[test]
fn promotion_keeps_committed_successes_and_raises_fencing_tokens() {
    let [primary_port, replica_port] = free_ports::<2>();
    let clusters = OwnClusters::new("failover", primary_port, &["primary", "replica"]);
    clusters.start_primary("primary", primary_port, &["wal_level = replica"]);
    clusters.base_backup("replica", primary_port, replica_port, Some("replica"));
    clusters.pg_ctl("replica", &["start"]);

    let mut p = client_at(primary_port);
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
                let mut c = client_at(primary_port);
                let mut k = 0;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let t = plan() + chrono::Duration::seconds(i * 1_000_000 + k);
                    let Ok(r) = try_claim_with(&mut c, &job, t, &format!("r{i}"), &ClaimArgs::default()) else {
                        return;
                    };
                    if r.outcome != "won" {
                        continue;
                    }
                    let ok = c.query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", &[&r.id(), &r.token()]);
                    match ok {
                        Ok(row) if row.get::<_, bool>(0) => {
                            committed.lock().unwrap().push((r.id(), r.fencing_token.unwrap()))
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    clusters.pg_ctl("primary", &["-m", "immediate", "stop"]);
    stop.store(true, Ordering::Relaxed);
    runners.into_iter().for_each(|h| {
        let _ = h.join();
    });
    clusters.pg_ctl("replica", &["promote"]);

    let committed = committed.lock().unwrap().clone();
    assert!(committed.len() > 50, "runners got work done before the failover: {}", committed.len());
    let mut r = client_at(replica_port);
    let ids: Vec<uuid::Uuid> = committed.iter().map(|(id, _)| *id).collect();
    let present: i64 = r
        .query_one(
            "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE id = ANY($1) AND status = 'SUCCESS'",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(present as usize, committed.len(), "every acknowledged SUCCESS survived the failover");
    let highest = committed.iter().map(|(_, f)| *f).max().unwrap();
    let after = claim(&mut r, &job, plan() - chrono::Duration::days(1), "after-failover");
    assert_eq!(after.outcome, "won", "claims go on on the new primary");
    assert!(
        after.fencing_token.unwrap() > highest,
        "token {} after failover vs {highest} before",
        after.fencing_token.unwrap()
    );
    eprintln!("failover: {} committed successes kept, tokens continue above {highest}", committed.len());
}
