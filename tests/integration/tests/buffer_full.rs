//! A full touch buffer falls back to direct writes: no touch is ever dropped. Runs its own
//! cluster with the smallest buffer (lease_sched.touch_buffer_size = 16).
use std::process::Command;
use std::time::Duration;

use lease_sched_integration::*;

struct Cluster {
    dir: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
        let _ = Command::new(script).args(["stop", &self.dir, "immediate"]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn touches_beyond_the_buffer_capacity_are_written_directly() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
    let [port] = free_ports::<1>();
    let cluster = Cluster { dir: format!("/tmp/lease_sched_small_buffer_{port}") };
    let ok = Command::new(script)
        .args(["start", &cluster.dir, &port.to_string(), "lease_sched.touch_buffer_size = 16"])
        .status()
        .unwrap();
    assert!(ok.success());
    let dsn = format!("host=127.0.0.1 port={port} dbname=lease_sched user=postgres");
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    c.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    assert!(wait_until(Duration::from_secs(15), || {
        c.query_opt("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'", &[]).unwrap().is_some()
    }));
    let ids: Vec<uuid::Uuid> = (0..40).map(|_| register_runtime(&mut c)).collect();
    c.execute("UPDATE lease_sched.runtimes SET last_seen_at = now() - interval '100 seconds'", &[]).unwrap();
    let direct_before = stat(&mut c, "touches_direct");
    for id in &ids {
        assert!(touch(&mut c, *id));
    }
    assert_eq!(pending(&mut c), 16, "the buffer holds its capacity");
    assert_eq!(stat(&mut c, "touches_direct") - direct_before, 24, "the rest were written directly");
    let fresh: i64 = c
        .query_one("SELECT count(*) FROM lease_sched.runtimes WHERE last_seen_at > now() - interval '10 seconds'", &[])
        .unwrap()
        .get(0);
    assert_eq!(fresh, 24);
    assert_eq!(flush(&mut c), 16);
    let fresh: i64 = c
        .query_one("SELECT count(*) FROM lease_sched.runtimes WHERE last_seen_at > now() - interval '10 seconds'", &[])
        .unwrap()
        .get(0);
    assert_eq!(fresh, 40, "no touch was dropped");
}
