//! Named locks with TTL: acquire/heartbeat/release/info, races, survival across reconnects
//! through a real pgbouncer in transaction-pooling mode, and what a runner role can do to
//! another role's lock.
use std::sync::{Arc, Barrier};
use std::time::Duration;

use lease_sched_integration::fixtures::{simple, simple_row, Bouncer, Role};
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
        Some(Grant {
            lock_token: lock_token.expect("a grant has a lock_token"),
            fencing_token: fencing_token.expect("and a fencing token"),
        })
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

#[test]
fn a_lock_survives_reconnects_through_transaction_pooling() {
    let bouncer = Bouncer::start(2);
    let name = unique("leader");
    let mut a = bouncer.connect();
    let grant = |c: &mut postgres::Client, holder: &str| {
        simple_row(c, &format!("SELECT acquired, lock_token, fencing_token, holder FROM lease_sched.lock_acquire('{name}', '{holder}', '60 s')"))
    };
    let got = grant(&mut a, "node-a");
    assert_eq!(got[0].as_deref(), Some("t"), "node-a acquires: {got:?}");
    let (token, fencing) = (got[1].clone().unwrap(), got[2].clone().unwrap());
    drop(a); // node-a's client connection is gone; the lock is a row, not a session
    let mut b = bouncer.connect();
    let refused = grant(&mut b, "node-b");
    assert_eq!(refused, vec![Some("f".into()), None, None, Some("node-a".into())], "node-b is told who holds it");
    let mut a = bouncer.connect();
    assert_eq!(
        simple(&mut a, &format!("SELECT lease_sched.lock_heartbeat('{name}', '{token}')")).unwrap().as_deref(),
        Some("t")
    );
    assert_eq!(
        simple(&mut b, &format!("SELECT holder FROM lease_sched.lock_info('{name}')")).unwrap().as_deref(),
        Some("node-a")
    );
    assert_eq!(
        simple(&mut a, &format!("SELECT lease_sched.lock_release('{name}', '{token}')")).unwrap().as_deref(),
        Some("t")
    );
    let got = grant(&mut b, "node-b");
    assert_eq!(got[0].as_deref(), Some("t"), "free after release: {got:?}");
    assert!(got[2].as_ref().unwrap().parse::<i64>().unwrap() > fencing.parse::<i64>().unwrap());
    // Session advisory locks, by contrast, belong to whichever server connection the pooler
    // lent: after a reconnect through the pooler, node-a cannot tell whether it still holds one.
}

/// Per lock, every granted fencing token is higher than every token granted
/// before it in real time, also when an acquirer waited on a holder's open transaction that
/// released and re-acquired the lock meanwhile. Pins the hole where a waiter's token was
/// drawn before its wait and came back lower than a grant that returned before it.
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
                        // The interleaving that broke it: grant, release, grant again, release, in
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
            assert!(
                w[1] > w[0],
                "lock {l}: a grant returned later carries a lower token: {} after {} ({tokens:?})",
                w[1],
                w[0]
            );
        }
    }
}

/// A runner role with the documented grants cannot heartbeat or release another role's lock,
/// knowing everything lock_info (and the refusal of lock_acquire) shows it; the old
/// signatures that took the public fencing token as proof are gone.
#[test]
fn a_runner_cannot_heartbeat_or_release_another_runners_lock() {
    let (ra, rb) = (Role::runner("runner_a"), Role::runner("runner_b"));
    let (mut a, mut b) = (ra.connect(), rb.connect());
    let name = unique("leader");
    let r = a
        .query_one(
            "SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, 'node-a', '60 s')",
            &[&name],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
    let (token, fencing): (uuid::Uuid, i64) = (r.get(1), r.get(2));

    // Everything b can learn about the lock.
    let info = b.query_one("SELECT to_jsonb(i)::text FROM lease_sched.lock_info($1) i", &[&name]).unwrap();
    let info: String = info.get(0);
    assert!(
        info.contains(&fencing.to_string()) && info.contains("node-a"),
        "lock_info shows holder and fencing token: {info}"
    );
    assert!(!info.contains(&token.to_string()), "lock_info never shows the secret: {info}");
    let refusal = b
        .query_one("SELECT to_jsonb(l)::text FROM lease_sched.lock_acquire($1, 'node-b', '60 s') l", &[&name])
        .unwrap();
    let refusal: String = refusal.get(0);
    assert!(refusal.contains("\"acquired\": false") && !refusal.contains(&token.to_string()), "{refusal}");

    // The public fencing token as proof (the old bigint signatures): they no longer exist.
    for sql in [
        format!("SELECT lease_sched.lock_heartbeat('{name}', {fencing})"),
        format!("SELECT lease_sched.lock_release('{name}', {fencing})"),
        format!("SELECT lease_sched.lock_release('{name}', {fencing}::bigint)"),
    ] {
        let e = b.batch_execute(&sql).expect_err(&sql);
        assert_eq!(sqlstate(&e), "42883", "{sql}: {e}");
    }
    let gone: bool = b
        .query_one(
            "SELECT to_regprocedure('lease_sched.lock_heartbeat(text,bigint)') IS NULL
                AND to_regprocedure('lease_sched.lock_release(text,bigint)') IS NULL
                AND to_regprocedure('lease_sched.lock_heartbeat(text,uuid)') IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(gone, "the bigint signatures are dropped");

    // Guessing: uuids made of what b knows, and random ones.
    let guesses = b
        .query(
            "SELECT g FROM (VALUES (gen_random_uuid()), ('00000000-0000-0000-0000-000000000000'::uuid),
                                   (lpad(to_hex($1::bigint), 32, '0')::uuid)) v(g)",
            &[&fencing],
        )
        .unwrap();
    for g in guesses {
        let g: uuid::Uuid = g.get(0);
        let hb: bool = b.query_one("SELECT lease_sched.lock_heartbeat($1, $2)", &[&name, &g]).unwrap().get(0);
        let rel: bool = b.query_one("SELECT lease_sched.lock_release($1, $2)", &[&name, &g]).unwrap().get(0);
        assert!(!hb && !rel, "a guessed token {g} worked");
    }
    // b cannot read the table that holds the secret.
    let e = b.batch_execute("SELECT lock_token FROM lease_sched.locks").expect_err("locks is not readable");
    assert_eq!(sqlstate(&e), "42501");

    // a still holds it, and b cannot take it.
    let holder: String = b.query_one("SELECT holder FROM lease_sched.lock_info($1)", &[&name]).unwrap().get(0);
    assert_eq!(holder, "node-a");
    let hb: bool = a.query_one("SELECT lease_sched.lock_heartbeat($1, $2)", &[&name, &token]).unwrap().get(0);
    assert!(hb);
    let taken: bool =
        b.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-b')", &[&name]).unwrap().get(0);
    assert!(!taken);
    let rel: bool = a.query_one("SELECT lease_sched.lock_release($1, $2)", &[&name, &token]).unwrap().get(0);
    assert!(rel);
}
