//! Hostile review of 0.2.0's fences (docs/api.md, "Fences"). Each test is a hole found by
//! review, kept as a regression test of how it was closed:
//!
//! - a fence is passed with the *fencing* token, which is public (lock_info shows it, and
//!   a refusal names the current one): `require_lock(name, 'secret')` /
//!   `require_lease(job, 'secret')` accept only fences passed with the holder's secret;
//! - a fenced transaction pinned a lock row in a prepared transaction: PREPARE is refused;
//! - a steal or takeover that waited for a fenced transaction is granted with the clock it
//!   read before waiting: it is born stale / expired, and the next caller takes it at once.
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::{Client, NoTls};

static DDL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A login role with the documented runner grants, dropped with what it owns.
struct Role(String);

impl Role {
    fn runner(prefix: &str) -> Role {
        let name = unique(prefix);
        let _serial = DDL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = connect();
        c.batch_execute(&format!(
            "CREATE ROLE {name} LOGIN;
             GRANT USAGE ON SCHEMA lease_sched TO {name};
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched TO {name};"
        ))
        .unwrap();
        Role(name)
    }
    fn connect(&self) -> Client {
        connect_as(&self.0)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _serial = DDL.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut c) = Client::connect(&dsn(), NoTls) {
            let _ = c.batch_execute(&format!("DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}", self.0));
        }
    }
}

/// Rolls a prepared transaction back whatever happens to the test.
struct Prepared(String);

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&dsn(), NoTls) {
            let _ = c.batch_execute(&format!("ROLLBACK PREPARED '{}'", self.0));
        }
    }
}

/// A table only the holder of `lock` may write, checked with the holder's secret
/// (`require_lock(lock, 'secret')`, docs/api.md), writable by `role`.
fn secret_leader_only_table(c: &mut Client, lock: &str, role: &str) -> String {
    let table = unique("review_reports");
    c.batch_execute(&format!(
        "CREATE TABLE public.{table} (id int PRIMARY KEY, v text);
         GRANT ALL ON public.{table} TO {role};
         CREATE TRIGGER leader_only BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.{table}
             FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.require_lock('{lock}', 'secret');"
    ))
    .unwrap();
    table
}

/// The fencing token is public (lock_info shows it): a fence passed with it alone proves
/// the token is current, not that the caller holds the lock (docs/api.md, "Fences"). A
/// table that must refuse every non-holder uses `require_lock(name, 'secret')`, which only
/// a fence passed with the holder's lock_token opens.
#[test]
fn review_a_non_holder_passes_lock_fence_with_the_public_fencing_token() {
    let mut owner = connect();
    let lock = unique("review_leader");
    let mallory = Role::runner("review_mallory");
    let table = secret_leader_only_table(&mut owner, &lock, &mallory.0);
    let r = owner
        .query_one("SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, 'the-leader', '1 hour')", &[&lock])
        .unwrap();
    assert!(r.get::<_, bool>(0));
    let (secret, token): (uuid::Uuid, i64) = (r.get(1), r.get(2));

    // mallory holds nothing; lock_info shows her the fencing token, which passes the fence
    // but not the secret-checking trigger.
    let mut m = mallory.connect();
    let mut tx = m.transaction().unwrap();
    let fenced = tx.batch_execute(&format!(
        "SELECT lease_sched.lock_fence('{lock}', (SELECT fencing_token FROM lease_sched.lock_info('{lock}')));"
    ));
    let wrote = fenced.is_ok() && tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (1, 'not the leader')")).is_ok();
    if wrote {
        tx.commit().unwrap();
    } else {
        drop(tx);
    }
    // A guessed secret is refused by the fence itself.
    let mut tx = m.transaction().unwrap();
    let guessed = tx.batch_execute(&format!("SELECT lease_sched.lock_fence('{lock}', {token}, gen_random_uuid())"));
    drop(tx);

    // The holder, with its secret, writes.
    let mut tx = owner.transaction().unwrap();
    tx.execute("SELECT lease_sched.lock_fence($1, $2, $3)", &[&lock, &token, &secret]).unwrap();
    let holder_wrote = tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (2, 'the leader')")).is_ok();
    if holder_wrote {
        tx.commit().unwrap();
    } else {
        drop(tx);
    }
    let _ = connect().batch_execute(&format!("DROP TABLE public.{table}"));
    assert!(!wrote, "a role that does not hold lock {lock} wrote to a require_lock(.., 'secret') table with the public token");
    assert_eq!(guessed.as_ref().err().map(sqlstate).as_deref(), Some("LS001"), "a wrong lock_token fails the fence");
    assert!(holder_wrote, "the holder, fenced with its lock_token, writes");
}

/// The refusal names the newer token (the issue asks for it), and the token passes a plain
/// fence; a `require_lease(job, 'secret')` table still refuses anyone without the
/// lease_token, which only the holder has.
#[test]
fn review_a_lease_fence_refusal_tells_a_non_holder_the_token_that_passes_it() {
    let mut owner = connect();
    let job = unique("review_job");
    let c = claim(&mut owner, &job, plan(), "the-holder");
    assert_eq!(c.outcome, "won");
    let mallory = Role::runner("review_mallory");
    let table = unique("review_lease_only");
    owner
        .batch_execute(&format!(
            "CREATE TABLE public.{table} (id int);
             GRANT ALL ON public.{table} TO {0};
             CREATE TRIGGER lease_only BEFORE INSERT OR UPDATE OR DELETE ON public.{table}
                 FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.require_lease('{job}', 'secret');",
            mallory.0
        ))
        .unwrap();

    let mut m = mallory.connect();
    let conflicted = m
        .query_one("SELECT outcome, execution_id FROM lease_sched.lease_try_claim($1, $2, 'mallory')", &[&job, &plan()])
        .unwrap();
    assert_eq!(conflicted.get::<_, String>(0), "conflicted");
    let id: uuid::Uuid = conflicted.get(1);
    let mut tx = m.transaction().unwrap();
    tx.batch_execute(&format!("SELECT lease_sched.lease_fence('{id}', {})", c.fencing_token.unwrap())).unwrap();
    let mallory_wrote = tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (1)")).is_ok();
    drop(tx);

    let mut tx = owner.transaction().unwrap();
    tx.execute("SELECT lease_sched.lease_fence($1, $2, $3)", &[&c.id(), &c.fencing_token.unwrap(), &c.token()]).unwrap();
    let holder_wrote = tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (2)")).is_ok();
    drop(tx);
    let _ = connect().batch_execute(&format!("DROP TABLE public.{table}"));
    assert!(!mallory_wrote, "a runner without the lease_token wrote to a require_lease(.., 'secret') table");
    assert!(holder_wrote, "the holder, fenced with its lease_token, writes");
}

/// A prepared transaction keeps its row locks until someone resolves it: a fence in one
/// would hold off every takeover indefinitely, so a fenced transaction cannot be prepared.
#[test]
fn review_a_non_holder_pins_a_lock_in_a_prepared_transaction_and_no_takeover_ever_completes() {
    let mut owner = connect();
    let max_prepared: String = owner.query_one("SHOW max_prepared_transactions", &[]).unwrap().get(0);
    if max_prepared == "0" {
        skip("review_prepared_pin", "max_prepared_transactions = 0");
        return;
    }
    let lock = unique("review_pinned");
    let r = owner.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'victim', '1 second')", &[&lock]).unwrap();
    assert!(r.get::<_, bool>(0));

    let mallory = Role::runner("review_mallory");
    let mut m = mallory.connect();
    let gid = unique("review_pin");
    let _guard = Prepared(gid.clone());
    m.batch_execute(&format!(
        "BEGIN; SELECT lease_sched.lock_fence('{lock}', (SELECT fencing_token FROM lease_sched.lock_info('{lock}')));"
    ))
    .unwrap();
    let prepared = m.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"));
    assert_eq!(prepared.as_ref().err().map(sqlstate).as_deref(), Some("0A000"), "a fenced transaction cannot be prepared");
    drop(m);

    std::thread::sleep(Duration::from_millis(1500)); // the victim's ttl has run out
    let mut next = connect();
    next.batch_execute("SET lock_timeout = '3s'").unwrap();
    let taken = next.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'next-leader', '1 minute')", &[&lock]);
    let outcome = match &taken {
        Ok(r) => format!("acquired = {}", r.get::<_, bool>(0)),
        Err(e) => format!("error {} {}", sqlstate(e), e),
    };
    assert!(matches!(&taken, Ok(r) if r.get::<_, bool>(0)), "the expired lock is taken over ({outcome})");
}

#[test]
fn review_a_steal_that_waited_for_a_fence_is_born_stale_and_is_stolen_again_at_once() {
    let mut holder = connect();
    let job = unique("review_stale_born");
    let a = ClaimArgs { stale_timeout: Duration::from_secs(2), ..Default::default() };
    let c = claim_with(&mut holder, &job, plan(), "holder", &a);
    assert_eq!(c.outcome, "won");

    // The holder's fenced transaction outlives the lease by a few seconds.
    // (with its secret: only such a fence holds the row until the transaction ends)
    let (id, fencing, secret) = (c.id(), c.fencing_token.unwrap(), c.token());
    let fenced = std::thread::spawn(move || {
        let mut f = connect();
        let mut tx = f.transaction().unwrap();
        tx.batch_execute(&format!("SELECT lease_sched.lease_fence('{id}', {fencing}, '{secret}')")).unwrap();
        std::thread::sleep(Duration::from_secs(7));
        tx.commit().unwrap();
    });
    std::thread::sleep(Duration::from_secs(3)); // stale now; the thief waits for the fence
    let mut thief = connect();
    let t0 = Instant::now();
    let stolen = claim_with(&mut thief, &job, plan(), "thief-1", &a);
    let waited = t0.elapsed();
    fenced.join().unwrap();
    assert_eq!(stolen.outcome, "stole");
    let now: chrono::DateTime<chrono::Utc> = thief.query_one("SELECT clock_timestamp()", &[]).unwrap().get(0);
    let second = claim_with(&mut connect(), &job, plan(), "thief-2", &a);
    assert!(
        stolen.stale_after.unwrap() > now && second.outcome == "conflicted",
        "thief-1 waited {waited:?} for the fence, then got a lease with stale_after {:?}, already before the clock {now} \
         (the steal used the clock read before its wait); thief-2 then got {:?}",
        stolen.stale_after,
        second.outcome
    );
}

#[test]
fn review_a_takeover_that_waited_for_a_fence_is_born_expired_and_is_taken_over_again_at_once() {
    let mut holder = connect();
    let lock = unique("review_expired_born");
    let r = holder
        .query_one("SELECT acquired, fencing_token, lock_token FROM lease_sched.lock_acquire($1, 'holder', '2 seconds')", &[&lock])
        .unwrap();
    assert!(r.get::<_, bool>(0));
    let fencing: i64 = r.get(1);
    let secret: uuid::Uuid = r.get(2);
    let l2 = lock.clone();
    let fenced = std::thread::spawn(move || {
        let mut f = connect();
        let mut tx = f.transaction().unwrap();
        tx.batch_execute(&format!("SELECT lease_sched.lock_fence('{l2}', {fencing}, '{secret}')")).unwrap();
        std::thread::sleep(Duration::from_secs(7));
        tx.commit().unwrap();
    });
    std::thread::sleep(Duration::from_secs(3));
    let mut taker = connect();
    let r = taker
        .query_one("SELECT acquired, expires_at, clock_timestamp() FROM lease_sched.lock_acquire($1, 'taker-1', '2 seconds')", &[&lock])
        .unwrap();
    fenced.join().unwrap();
    let (acquired, expires_at, now): (bool, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = (r.get(0), r.get(1), r.get(2));
    assert!(acquired);
    let again: bool = connect()
        .query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'taker-2', '2 seconds')", &[&lock])
        .unwrap()
        .get(0);
    assert!(
        expires_at > now && !again,
        "taker-1 was granted the lock with expires_at {expires_at}, before the clock {now} at its return (the clock read \
         before waiting for the fence); taker-2 then acquired = {again}"
    );
}
