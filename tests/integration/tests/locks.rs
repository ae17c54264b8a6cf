//! Named locks with TTL: acquire/heartbeat/release/info, races, and survival across
//! reconnects through a real pgbouncer in transaction-pooling mode.
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use lease_sched_integration::*;

/// A granted lock: the holder's secret and its public fencing token.
#[derive(Debug, Clone, Copy)]
struct Grant {
    lock_token: uuid::Uuid,
    fencing_token: i64,
}

/// lock_acquire: Some(grant) when acquired, None (with the current holder checked) when not.
fn acquire(c: &mut postgres::Client, name: &str, holder: &str, ttl_ms: u64) -> Option<Grant> {
    let rows = c
        .query(
            "SELECT acquired, lock_token, fencing_token, holder, expires_at
               FROM lease_sched.lock_acquire($1, $2, make_interval(secs => $3))",
            &[&name, &holder, &(ttl_ms as f64 / 1000.0)],
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "lock_acquire always returns one row");
    let r = &rows[0];
    let acquired: bool = r.get("acquired");
    let lock_token: Option<uuid::Uuid> = r.get("lock_token");
    let fencing_token: Option<i64> = r.get("fencing_token");
    let current: Option<String> = r.get("holder");
    let expires_at: Option<chrono::DateTime<chrono::Utc>> = r.get("expires_at");
    assert!(expires_at.is_some(), "expires_at describes the holder either way");
    if acquired {
        assert_eq!(current.as_deref(), Some(holder), "a grant names the caller as holder");
        Some(Grant { lock_token: lock_token.expect("a grant has a lock_token"), fencing_token: fencing_token.expect("and a fencing token") })
    } else {
        assert!(lock_token.is_none() && fencing_token.is_none(), "no token without a grant");
        assert!(current.is_some(), "a refusal names the current holder");
        None
    }
}

fn heartbeat_lock(c: &mut postgres::Client, name: &str, token: uuid::Uuid) -> bool {
    c.query_one("SELECT lease_sched.lock_heartbeat($1, $2)", &[&name, &token]).unwrap().get(0)
}

fn release_lock(c: &mut postgres::Client, name: &str, token: uuid::Uuid) -> bool {
    c.query_one("SELECT lease_sched.lock_release($1, $2)", &[&name, &token]).unwrap().get(0)
}

/// Long enough that the lock is still held when the late caller asks, on a loaded 2-core
/// machine (joining 24 threads and connecting once more took over 400 ms there).
const LOCK_TTL_MS: u64 = 3_000;

#[test]
fn one_holder_among_24_and_takeover_after_expiry_gets_a_higher_token() {
    let name = unique("lock");
    let barrier = Arc::new(Barrier::new(24));
    let got: Vec<Option<Grant>> = (0..24)
        .map(|i| {
            let (name, barrier) = (name.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = connect();
                barrier.wait();
                acquire(&mut c, &name, &format!("host-{i}"), LOCK_TTL_MS)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let winners: Vec<Grant> = got.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1);
    let mut c = connect();
    assert!(acquire(&mut c, &name, "late", LOCK_TTL_MS).is_none());
    std::thread::sleep(Duration::from_millis(LOCK_TTL_MS + 200));
    let next = acquire(&mut c, &name, "late", 60_000).expect("expired lock is taken over");
    assert!(next.fencing_token > winners[0].fencing_token);
    assert_ne!(next.lock_token, winners[0].lock_token);
    assert!(!heartbeat_lock(&mut c, &name, winners[0].lock_token), "the deposed holder's secret no longer works");
    assert!(!release_lock(&mut c, &name, winners[0].lock_token));
    assert!(heartbeat_lock(&mut c, &name, next.lock_token));
    assert!(release_lock(&mut c, &name, next.lock_token));
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
        ("lock_token", "SELECT lease_sched.lock_heartbeat('x', NULL)"),
        ("lock_token", "SELECT lease_sched.lock_release('x', NULL)"),
        ("lock_name", "SELECT * FROM lease_sched.lock_info(NULL)"),
    ] {
        assert_rejects(&mut c, sql, arg);
    }
}

/// A pgbouncer of this test alone: its own directory and a free port. pgbouncer runs under
/// runuser (it refuses root), so Drop stops it by the pid in its pidfile, not through the
/// runuser child (killing runuser would leave pgbouncer behind, still holding the port).
struct Bouncer {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_pgbouncer(port: u16) -> Bouncer {
    let db_port = dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap();
    let dir = std::path::PathBuf::from(format!("/tmp/lease_sched_pgbouncer_{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nlease_sched = host=127.0.0.1 port={db_port} dbname=lease_sched user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\npool_mode = transaction\n\
             default_pool_size = 2\nmax_client_conn = 50\nunix_socket_dir =\nlogfile = {0}/pgbouncer.log\n\
             pidfile = {0}/pgbouncer.pid\n",
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
    let bouncer = Bouncer { child, dir: dir.clone() };
    // Ours, listening (not some other run's pgbouncer on the same port).
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(dir.join("pgbouncer.log"))
            .is_ok_and(|l| l.contains(&format!("listening on 127.0.0.1:{port}")))),
        "pgbouncer listens on {port}"
    );
    bouncer
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

/// Every column of the first row, through the simple protocol.
fn simple_row(c: &mut postgres::Client, sql: &str) -> Vec<Option<String>> {
    c.simple_query(sql)
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .expect("one row")
}

#[test]
fn a_lock_survives_reconnects_through_transaction_pooling() {
    let [port] = free_ports::<1>();
    let _bouncer = start_pgbouncer(port);
    let name = unique("leader");
    let mut a = via_bouncer(port);
    let grant = |c: &mut postgres::Client, holder: &str| {
        simple_row(c, &format!("SELECT acquired, lock_token, fencing_token, holder FROM lease_sched.lock_acquire('{name}', '{holder}', '60 s')"))
    };
    let got = grant(&mut a, "node-a");
    assert_eq!(got[0].as_deref(), Some("t"), "node-a acquires: {got:?}");
    let (token, fencing) = (got[1].clone().unwrap(), got[2].clone().unwrap());
    drop(a); // node-a's client connection is gone; the lock is a row, not a session
    let mut b = via_bouncer(port);
    let refused = grant(&mut b, "node-b");
    assert_eq!(refused, vec![Some("f".into()), None, None, Some("node-a".into())], "node-b is told who holds it");
    let mut a = via_bouncer(port);
    assert_eq!(simple_value(&mut a, &format!("SELECT lease_sched.lock_heartbeat('{name}', '{token}')")).as_deref(), Some("t"));
    assert_eq!(
        simple_value(&mut b, &format!("SELECT holder FROM lease_sched.lock_info('{name}')")).as_deref(),
        Some("node-a")
    );
    assert_eq!(simple_value(&mut a, &format!("SELECT lease_sched.lock_release('{name}', '{token}')")).as_deref(), Some("t"));
    let got = grant(&mut b, "node-b");
    assert_eq!(got[0].as_deref(), Some("t"), "free after release: {got:?}");
    assert!(got[2].as_ref().unwrap().parse::<i64>().unwrap() > fencing.parse::<i64>().unwrap());
    // Session advisory locks, by contrast, belong to whichever server connection the pooler
    // lent: after a reconnect through the pooler, node-a cannot tell whether it still holds one.
}

/// Per lock, every granted fencing token is higher than every token granted
/// before it in real time, also when an acquirer waited on a holder's open transaction that
/// released and re-acquired the lock meanwhile (0.1.0 drew the waiter's token before the wait).
#[test]
fn fencing_tokens_of_a_lock_rise_in_the_order_the_grants_return() {
    const THREADS: usize = 12;
    let names: Vec<String> = (0..3).map(|_| unique("order")).collect();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (names, barrier) = (names.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = connect();
                let mut grants: Vec<(usize, std::time::Instant, i64)> = Vec::new();
                barrier.wait();
                let end = std::time::Instant::now() + Duration::from_secs(4);
                let mut round = 0usize;
                while std::time::Instant::now() < end {
                    round += 1;
                    let l = (t + round) % names.len();
                    let name = &names[l];
                    if t % 2 == 0 {
                        // The reproduction: grant, release, grant again, release, in
                        // one transaction, while others wait on its row.
                        c.batch_execute("BEGIN").unwrap();
                        for holder in ["c", "c2"] {
                            if let Some(g) = acquire(&mut c, name, &format!("{holder}-{t}"), 60_000) {
                                grants.push((l, std::time::Instant::now(), g.fencing_token));
                                assert!(release_lock(&mut c, name, g.lock_token));
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        c.batch_execute("COMMIT").unwrap();
                    } else if let Some(g) = acquire(&mut c, name, &format!("a-{t}"), 60_000) {
                        grants.push((l, std::time::Instant::now(), g.fencing_token));
                        assert!(release_lock(&mut c, name, g.lock_token));
                    }
                }
                grants
            })
        })
        .collect();
    let mut all: Vec<(usize, std::time::Instant, i64)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_by_key(|(_, at, _)| *at);
    for l in 0..names.len() {
        let tokens: Vec<i64> = all.iter().filter(|(x, _, _)| *x == l).map(|(_, _, t)| *t).collect();
        assert!(tokens.len() >= 20, "lock {l} was granted only {} times", tokens.len());
        for w in tokens.windows(2) {
            assert!(w[1] > w[0], "lock {l}: a grant returned later carries a lower token: {} after {} ({tokens:?})", w[1], w[0]);
        }
    }
}
