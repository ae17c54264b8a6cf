//! Fencing tokens never repeat in a copy started from a base backup (or a volume snapshot)
//! without recovery.signal: such a copy replays to the end of the backup and stays on the
//! original's timeline, with the token sequence as it was then, behind every token the
//! original granted after the backup. The first grant after any server start floors the
//! sequence at the database clock, so the copy's tokens are above all of them
//! (docs/reliability.md, G13).
//!
//! A cluster of its own (ports the kernel picks), and the copy beside it.
use std::process::Command;

use lease_sched_integration::*;
use postgres::Client;

fn base(port: u16) -> String {
    format!("/tmp/lease_sched_token_restore_{port}")
}

fn as_postgres(args: &[&str]) {
    let out = Command::new("runuser").args(["-u", "postgres", "--"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn pg_ctl_at(dir: &str, args: &[&str]) {
    let mut all = vec![format!("{}/pg_ctl", pgbin()), "-D".into(), format!("{dir}/data"), "-w".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    as_postgres(&refs);
}

fn client_at(port: u16) -> Client {
    connect_retrying(&format!("host=127.0.0.1 port={port} dbname=lease_sched user=postgres"))
}

/// `n` lease grants and `n` lock grants; the highest token.
fn grant_tokens(c: &mut Client, n: i64, tag: &str) -> i64 {
    let mut highest = 0;
    for i in 0..n {
        let r = claim(c, &format!("{tag}_job"), plan() + chrono::Duration::seconds(i), "r");
        assert_eq!(r.outcome, "won");
        highest = highest.max(r.fencing_token.unwrap());
        let t: i64 = c
            .query_one("SELECT fencing_token FROM lease_sched.lock_acquire($1, 'h', '1 hour')", &[&format!("{tag}_lock_{i}")])
            .unwrap()
            .get(0);
        highest = highest.max(t);
    }
    highest
}

struct Clusters(String);

impl Drop for Clusters {
    fn drop(&mut self) {
        for dir in ["original", "copy"] {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", &format!("{}/{dir}/data", self.0), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_copy_started_from_a_base_backup_grants_above_every_token_the_original_granted() {
    let [original_port, copy_port] = free_ports::<2>();
    let base = base(original_port);
    let _clusters = Clusters(base.clone());
    let cluster_sh = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
    let status = Command::new(cluster_sh)
        .env("PGBIN", pgbin())
        .args(["start", &format!("{base}/original"), &original_port.to_string(), "wal_level = replica", "log_min_messages = warning"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut o = client_at(original_port);
    o.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let before_backup = grant_tokens(&mut o, 5, "before");

    // The copy: a plain base backup, no standby.signal, no recovery.signal.
    let copy = format!("{base}/copy");
    std::fs::create_dir_all(&copy).unwrap();
    Command::new("chown").args(["postgres", &copy]).status().unwrap();
    as_postgres(&[
        &format!("{}/pg_basebackup", pgbin()), "-h", "127.0.0.1", "-p", &original_port.to_string(), "-U", "postgres",
        "-D", &format!("{copy}/data"), "-X", "stream", "-c", "fast",
    ]);
    let conf = format!("{copy}/data/postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&conf).unwrap_or_default();
    auto.push_str(&format!("port = {copy_port}\nunix_socket_directories = '{copy}'\n"));
    std::fs::write(&conf, auto).unwrap();

    // The original grants on after the backup: far more than the 32 sequence values
    // WAL-logged ahead of use, so the copy's sequence is behind them.
    let after_backup = grant_tokens(&mut o, 100, "after");
    assert!(after_backup > before_backup);
    drop(o);
    pg_ctl_at(&format!("{base}/original"), &["-m", "fast", "stop"]);

    // The copy starts on the original's timeline.
    pg_ctl_at(&copy, &["-l", &format!("{copy}/server.log"), "start"]);
    let mut c = client_at(copy_port);
    let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(!in_recovery, "the copy runs as a primary");
    let (timeline_before, seq): (i64, i64) = {
        let r = c
            .query_one("SELECT (SELECT timeline FROM lease_sched.token_floor), last_value FROM lease_sched.fencing_token_seq", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(seq < after_backup, "the copy's sequence ({seq}) is behind the original's later grants ({after_backup})");
    let timeline: i64 =
        c.query_one("SELECT timeline_id::bigint FROM pg_control_checkpoint()", &[]).unwrap().get(0);
    assert_eq!(timeline_before, timeline, "the copy stays on the timeline the original floored on");

    // Its first grants, leases and locks, are above every token the original granted.
    let r = claim(&mut c, &unique("copy"), plan(), "r");
    assert_eq!(r.outcome, "won");
    assert!(r.fencing_token.unwrap() > after_backup, "lease token {:?} repeats the original's (up to {after_backup})", r.fencing_token);
    let lock: i64 = c
        .query_one("SELECT fencing_token FROM lease_sched.lock_acquire($1, 'h', '1 hour')", &[&unique("copy-lock")])
        .unwrap()
        .get(0);
    assert!(lock > r.fencing_token.unwrap());
    let floored_after_start: bool = c
        .query_one("SELECT server_start = pg_postmaster_start_time() FROM lease_sched.token_floor", &[])
        .unwrap()
        .get(0);
    // (to_timestamp rounds through float8: compare to the millisecond)
    let close: bool = c
        .query_one(
            "SELECT abs(extract(epoch FROM server_start - pg_postmaster_start_time())) < 0.001 FROM lease_sched.token_floor",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(floored_after_start || close, "token_floor records this server start");
    eprintln!("base backup copy: original granted up to {after_backup} after the backup; the copy's sequence was at {seq}; its first tokens {} and {lock}", r.fencing_token.unwrap());
}
