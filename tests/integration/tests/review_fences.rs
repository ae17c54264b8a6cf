//! Hostile review of 0.2.0's fences (docs/api.md, "Fences"). Each test is a hole found by
//! review: it fails on the build under review and should pass once the hole is closed.
//!
//! - a fence is passed with the *fencing* token, which is public (lock_info shows it, and
//!   a lease_fence / lock_fence refusal prints the current one), so a role that does not
//!   hold the lock or lease passes the fence and writes to a "leader-only" table;
//! - the same public token lets any runner role pin a lock row FOR KEY SHARE in a prepared
//!   transaction: no takeover can ever complete;
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

/// A table only the holder of `lock` may write (docs/api.md, "require_lock"), writable by `role`.
fn leader_only_table(c: &mut Client, lock: &str, role: &str) -> String {
    let table = unique("review_reports");
    c.batch_execute(&format!(
        "CREATE TABLE public.{table} (id int PRIMARY KEY, v text);
         GRANT ALL ON public.{table} TO {role};
         CREATE TRIGGER leader_only BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON public.{table}
             FOR EACH STATEMENT EXECUTE FUNCTION lease_sched.require_lock('{lock}');"
    ))
    .unwrap();
    table
}

#[test]
fn review_a_non_holder_passes_lock_fence_with_the_public_fencing_token() {
    let mut owner = connect();
    let lock = unique("review_leader");
    let mallory = Role::runner("review_mallory");
    let table = leader_only_table(&mut owner, &lock, &mallory.0);
    let r = owner.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'the-leader', '1 hour')", &[&lock]).unwrap();
    assert!(r.get::<_, bool>(0));

    // mallory holds nothing; lock_info shows her the fencing token, which is all the fence asks for.
    let mut m = mallory.connect();
    let mut tx = m.transaction().unwrap();
    let fenced = tx.batch_execute(&format!(
        "SELECT lease_sched.lock_fence('{lock}', (SELECT fencing_token FROM lease_sched.lock_info('{lock}')));"
    ));
    let wrote = fenced.is_ok() && tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (1, 'not the leader')")).is_ok();
    if wrote {
        tx.commit().unwrap();
    }
    let _ = owner.batch_execute(&format!("DROP TABLE public.{table}"));
    assert!(
        !wrote,
        "a role that does not hold lock {lock} passed lock_fence with the fencing token lock_info shows, and wrote to a \
         require_lock table: the fence accepts the public token as proof of holding (docs/api.md says it never is)"
    );
}

#[test]
fn review_a_lease_fence_refusal_tells_a_non_holder_the_token_that_passes_it() {
    let mut owner = connect();
    let job = unique("review_job");
    let c = claim(&mut owner, &job, plan(), "the-holder");
    assert_eq!(c.outcome, "won");

    // A runner role with no SELECT on anything: a conflicted claim names the execution, and
    // a refused fence names the current fencing token.
    let mallory = Role::runner("review_mallory");
    let mut m = mallory.connect();
    let conflicted = m
        .query_one("SELECT outcome, execution_id FROM lease_sched.lease_try_claim($1, $2, 'mallory')", &[&job, &plan()])
        .unwrap();
    assert_eq!(conflicted.get::<_, String>(0), "conflicted");
    let id: uuid::Uuid = conflicted.get(1);
    let refusal = m.batch_execute(&format!("SELECT lease_sched.lease_fence('{id}', 0)")).unwrap_err();
    let message = refusal.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    let leaked = message.contains(&c.fencing_token.unwrap().to_string());

    let mut tx = m.transaction().unwrap();
    let passed = tx.batch_execute(&format!("SELECT lease_sched.lease_fence('{id}', {})", c.fencing_token.unwrap())).is_ok();
    drop(tx);
    assert!(
        !leaked && !passed,
        "a runner that holds nothing learned the live fencing token from the refusal ({message:?}) and passed \
         lease_fence with it (passed = {passed}): require_lease('{job}') tables are writable by anyone with EXECUTE"
    );
}

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
        "BEGIN;
         SELECT lease_sched.lock_fence('{lock}', (SELECT fencing_token FROM lease_sched.lock_info('{lock}')));
         PREPARE TRANSACTION '{gid}';"
    ))
    .unwrap();
    drop(m); // mallory is gone; her prepared transaction is not

    std::thread::sleep(Duration::from_millis(1500)); // the victim's ttl has run out
    let mut next = connect();
    next.batch_execute("SET lock_timeout = '3s'").unwrap();
    let taken = next.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'next-leader', '1 minute')", &[&lock]);
    let outcome = match &taken {
        Ok(r) => format!("acquired = {}", r.get::<_, bool>(0)),
        Err(e) => format!("error {} {}", sqlstate(e), e),
    };
    assert!(
        matches!(&taken, Ok(r) if r.get::<_, bool>(0)),
        "an expired lock could not be taken over because a role that never held it fenced it in a prepared \
         transaction ({outcome}); without lock_timeout the takeover waits forever"
    );
}

#[test]
fn review_a_steal_that_waited_for_a_fence_is_born_stale_and_is_stolen_again_at_once() {
    let mut holder = connect();
    let job = unique("review_stale_born");
    let a = ClaimArgs { stale_timeout: Duration::from_secs(2), ..Default::default() };
    let c = claim_with(&mut holder, &job, plan(), "holder", &a);
    assert_eq!(c.outcome, "won");

    // The holder's fenced transaction outlives the lease by a few seconds.
    let (id, fencing) = (c.id(), c.fencing_token.unwrap());
    let fenced = std::thread::spawn(move || {
        let mut f = connect();
        let mut tx = f.transaction().unwrap();
        tx.batch_execute(&format!("SELECT lease_sched.lease_fence('{id}', {fencing})")).unwrap();
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
        .query_one("SELECT acquired, fencing_token FROM lease_sched.lock_acquire($1, 'holder', '2 seconds')", &[&lock])
        .unwrap();
    assert!(r.get::<_, bool>(0));
    let fencing: i64 = r.get(1);
    let l2 = lock.clone();
    let fenced = std::thread::spawn(move || {
        let mut f = connect();
        let mut tx = f.transaction().unwrap();
        tx.batch_execute(&format!("SELECT lease_sched.lock_fence('{l2}', {fencing})")).unwrap();
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
