//! Named locks with TTL: acquire/heartbeat/release/info, races, and survival across
//! reconnects through a real pgbouncer in transaction-pooling mode.
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use lease_sched_integration::*;

fn acquire(c: &mut postgres::Client, name: &str, holder: &str, ttl_ms: u64) -> Option<i64> {
    c.query_one(
        "SELECT lease_sched.lock_acquire($1, $2, make_interval(secs => $3))",
        &[&name, &holder, &(ttl_ms as f64 / 1000.0)],
    )
    .unwrap()
    .get(0)
}

#[test]
fn one_holder_among_24_and_takeover_after_expiry_gets_a_higher_token() {
    let name = unique("lock");
    let barrier = Arc::new(Barrier::new(24));
    let got: Vec<Option<i64>> = (0..24)
        .map(|i| {
            let (name, barrier) = (name.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = connect();
                barrier.wait();
                acquire(&mut c, &name, &format!("host-{i}"), 400)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let winners: Vec<i64> = got.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1);
    let mut c = connect();
    assert_eq!(acquire(&mut c, &name, "late", 400), None);
    std::thread::sleep(Duration::from_millis(500));
    let next = acquire(&mut c, &name, "late", 60_000).expect("expired lock is taken over");
    assert!(next > winners[0]);
    let old_still_works: bool = c.query_one("SELECT lease_sched.lock_heartbeat($1, $2)", &[&name, &winners[0]]).unwrap().get(0);
    assert!(!old_still_works);
}

#[test]
fn bad_lock_arguments_are_class_22_errors() {
    let mut c = connect();
    for (arg, sql) in [
        ("lock_name", "SELECT lease_sched.lock_acquire(NULL, 'h')"),
        ("lock_name", "SELECT lease_sched.lock_acquire('', 'h')"),
        ("holder", "SELECT lease_sched.lock_acquire('x', NULL)"),
        ("ttl", "SELECT lease_sched.lock_acquire('x', 'h', '0')"),
        ("ttl", "SELECT lease_sched.lock_acquire('x', 'h', '-1 s')"),
        ("fencing_token", "SELECT lease_sched.lock_heartbeat('x', NULL)"),
        ("fencing_token", "SELECT lease_sched.lock_release('x', NULL)"),
        ("lock_name", "SELECT * FROM lease_sched.lock_info(NULL)"),
    ] {
        assert_rejects(&mut c, sql, arg);
    }
}

struct Bouncer(Child);

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_pgbouncer(port: u16) -> Bouncer {
    let db_port = dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap();
    let dir = std::path::PathBuf::from("/tmp/lease_sched_pgbouncer");
    let _ = std::fs::create_dir_all(&dir);
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nlease_sched = host=127.0.0.1 port={db_port} dbname=lease_sched user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\npool_mode = transaction\n\
             default_pool_size = 2\nmax_client_conn = 50\nunix_socket_dir =\nlogfile = {}/pgbouncer.log\n",
            dir.display()
        ),
    )
    .unwrap();
    Command::new("chown").args(["-R", "postgres", dir.to_str().unwrap()]).status().unwrap();
    // pgbouncer refuses to run as root.
    let child = Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/sbin/pgbouncer", ini.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer (installed by scripts/setup.sh)");
    Bouncer(child)
}

fn via_bouncer(port: u16) -> postgres::Client {
    connect_retrying(&format!("host=127.0.0.1 port={port} dbname=lease_sched user=postgres"))
}

/// The simple protocol: transaction pooling does not carry named prepared statements.
fn simple_value(c: &mut postgres::Client, sql: &str) -> Option<String> {
    c.simple_query(sql)
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten()
}

#[test]
fn a_lock_survives_reconnects_through_transaction_pooling() {
    let port = 56441;
    let _bouncer = start_pgbouncer(port);
    let name = unique("leader");
    let mut a = via_bouncer(port);
    let token = simple_value(&mut a, &format!("SELECT lease_sched.lock_acquire('{name}', 'node-a', '60 s')"))
        .expect("node-a acquires");
    drop(a); // node-a's client connection is gone; the lock is a row, not a session
    let mut b = via_bouncer(port);
    assert_eq!(simple_value(&mut b, &format!("SELECT lease_sched.lock_acquire('{name}', 'node-b', '60 s')")), None);
    let mut a = via_bouncer(port);
    assert_eq!(simple_value(&mut a, &format!("SELECT lease_sched.lock_heartbeat('{name}', {token})")).as_deref(), Some("t"));
    assert_eq!(
        simple_value(&mut b, &format!("SELECT holder FROM lease_sched.lock_info('{name}')")).as_deref(),
        Some("node-a")
    );
    assert_eq!(simple_value(&mut a, &format!("SELECT lease_sched.lock_release('{name}', {token})")).as_deref(), Some("t"));
    let b_token = simple_value(&mut b, &format!("SELECT lease_sched.lock_acquire('{name}', 'node-b', '60 s')"))
        .expect("free after release");
    assert!(b_token.parse::<i64>().unwrap() > token.parse::<i64>().unwrap());
    // Session advisory locks, by contrast, belong to whichever server connection the pooler
    // lent: after a reconnect through the pooler, node-a cannot tell whether it still holds one.
}
