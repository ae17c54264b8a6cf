//! Fences that protect data (docs/api.md, "Fences"; docs/reliability.md, G14):
//! - leader-only tables (`require_lock`, `require_lease` triggers): a deposed holder's
//!   write fails with LS001 naming the newer token, the current holder's succeeds; a fence
//!   counts only in its own transaction, not after the savepoint that passed it rolls back;
//! - the same through pgbouncer in transaction mode (one transaction = fence + writes), with
//!   no fence leaking to another client's transaction on the same server connection;
//! - `require_lock(name, 'secret')` / `require_lease(job, 'secret')` tables open only to a
//!   fence passed with the holder's secret, never with the public fencing token alone;
//! - a fenced transaction cannot be prepared, and a steal or takeover that waited for a
//!   fenced transaction gets a full lease or ttl from the end of its wait.
//!
//! The isolation specs tests/isolation/specs/fence_vs_*.spec prove the interleavings
//! (no steal, takeover or sweep completes between a fence and its commit). NOTIFY
//! lease_sched_lost is in notices.rs, tokens that never repeat in tokens.rs.
use std::time::{Duration, Instant};

use lease_sched_integration::fixtures::{simple, Bouncer, Role};
use lease_sched_integration::*;
use postgres::{Client, NoTls};
use uuid::Uuid;

/// A table `name` (id int, writer text) with a statement-level (or row-level) trigger
/// calling `function`('arg') before every write.
fn leader_only_table(c: &mut Client, name: &str, function: &str, arg: &str, level: &str) {
    let ops =
        if level == "STATEMENT" { "INSERT OR UPDATE OR DELETE OR TRUNCATE" } else { "INSERT OR UPDATE OR DELETE" };
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id int, writer text);
         CREATE TRIGGER {name}_guard BEFORE {ops} ON {name}
             FOR EACH {level} EXECUTE FUNCTION lease_sched.{function}('{arg}');"
    ))
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// leader-only tables

#[test]
fn a_deposed_leaders_write_fails_and_the_new_leaders_succeeds() {
    let mut a = connect();
    let mut b = connect();
    let lock = unique("reports-leader");
    let (stmt_t, row_t) = (unique("reports"), unique("reports_row"));
    leader_only_table(&mut a, &stmt_t, "require_lock", &lock, "STATEMENT");
    leader_only_table(&mut a, &row_t, "require_lock", &lock, "ROW");

    let (_, tok_a) = lock_acquire(&mut a, &lock, "node-a").expect("node-a leads");
    // The leader writes, fenced, in one transaction: every kind of write passes.
    for t in [&stmt_t, &row_t] {
        let mut tx = a.transaction().unwrap();
        tx.execute("SELECT lease_sched.lock_fence($1, $2)", &[&lock, &tok_a]).unwrap();
        tx.batch_execute(&format!(
            "INSERT INTO {t} VALUES (1, 'a'), (2, 'a'); UPDATE {t} SET writer = 'a2' WHERE id = 1; DELETE FROM {t} WHERE id = 2;"
        ))
        .unwrap();
        tx.commit().unwrap();
        let rows = a.query(&format!("SELECT id, writer FROM {t}"), &[]).unwrap();
        assert_eq!(rows.len(), 1, "{t}: the row trigger returns the row (DELETE deleted, UPDATE applied)");
        assert_eq!(rows[0].get::<_, String>(1), "a2");
    }
    // Without the fence in the same transaction, nothing gets through.
    for t in [&stmt_t, &row_t] {
        assert_ls001(a.execute(&format!("INSERT INTO {t} VALUES (3, 'a')"), &[]), &[&lock], "unfenced INSERT");
        assert_ls001(a.execute(&format!("UPDATE {t} SET writer = 'x'"), &[]), &[&lock], "unfenced UPDATE");
        assert_ls001(a.execute(&format!("DELETE FROM {t}"), &[]), &[&lock], "unfenced DELETE");
    }
    assert_ls001(a.batch_execute(&format!("TRUNCATE {stmt_t}")), &[&lock], "unfenced TRUNCATE");
    // A fence passed in an earlier transaction does not count.
    lock_fence(&mut a, &lock, tok_a).unwrap();
    assert_ls001(
        a.execute(&format!("INSERT INTO {stmt_t} VALUES (3, 'a')"), &[]),
        &[&lock],
        "fence of an earlier transaction",
    );
    // Nor does the fence of another lock.
    let other = unique("other-leader");
    let (_, tok_other) = lock_acquire(&mut a, &other, "node-a").unwrap();
    let mut tx = a.transaction().unwrap();
    tx.execute("SELECT lease_sched.lock_fence($1, $2)", &[&other, &tok_other]).unwrap();
    assert_ls001(tx.execute(&format!("INSERT INTO {stmt_t} VALUES (3, 'a')"), &[]), &[&lock], "fence of another lock");
    drop(tx);

    // node-a goes silent, its lock expires, node-b takes over.
    expire_lock(&mut b, &lock);
    let (_, tok_b) = lock_acquire(&mut b, &lock, "node-b").expect("takeover");
    assert!(tok_b > tok_a);

    // The deposed leader's fence fails with LS001, naming the lock and the newer token, and
    // so does its write; catching the fence's error in a savepoint does not help.
    let mut tx = a.transaction().unwrap();
    assert_ls001(
        tx.execute("SELECT lease_sched.lock_fence($1, $2)", &[&lock, &tok_a]),
        &[&lock, &tok_b.to_string(), &tok_a.to_string()],
        "deposed leader's fence",
    );
    drop(tx);
    let mut tx = a.transaction().unwrap();
    let mut sp = tx.savepoint("try_fence").unwrap();
    assert!(sp.execute("SELECT lease_sched.lock_fence($1, $2)", &[&lock, &tok_a]).is_err());
    sp.rollback().unwrap();
    assert_ls001(tx.execute(&format!("INSERT INTO {stmt_t} VALUES (4, 'a')"), &[]), &[&lock], "deposed leader's write");
    drop(tx);

    // The new leader's fenced writes succeed, TRUNCATE included.
    for t in [&stmt_t, &row_t] {
        let mut tx = b.transaction().unwrap();
        tx.execute("SELECT lease_sched.lock_fence($1, $2)", &[&lock, &tok_b]).unwrap();
        tx.execute(&format!("INSERT INTO {t} VALUES (5, 'b')"), &[]).unwrap();
        tx.commit().unwrap();
    }
    let mut tx = b.transaction().unwrap();
    tx.execute("SELECT lease_sched.lock_fence($1, $2)", &[&lock, &tok_b]).unwrap();
    tx.batch_execute(&format!("TRUNCATE {stmt_t}")).unwrap();
    tx.commit().unwrap();
    assert_eq!(count(&mut b, &format!("SELECT count(*) FROM {stmt_t}")), 0);
    assert_eq!(count(&mut b, &format!("SELECT count(*) FROM {row_t} WHERE writer = 'b'")), 1);

    // After a release, the lock has no holder: every fence fails, the holder's included.
    let lt_b: Uuid = b.query_one("SELECT lock_token FROM lease_sched.locks WHERE name = $1", &[&lock]).unwrap().get(0);
    let released: bool = b.query_one("SELECT lease_sched.lock_release($1, $2)", &[&lock, &lt_b]).unwrap().get(0);
    assert!(released);
    assert_ls001(lock_fence(&mut b, &lock, tok_b), &[&lock, "not held"], "fence of a released lock");

    // Bad arguments are class-22 errors, not LS001.
    assert_rejects(&mut b, "SELECT lease_sched.lock_fence(NULL, 1)", "lock_name");
    assert_rejects(&mut b, "SELECT lease_sched.lock_fence('x', NULL)", "fencing_token");
    assert_rejects(&mut b, "SELECT lease_sched.lease_fence(NULL, 1)", "execution_id");
    a.batch_execute(&format!("DROP TABLE {stmt_t}, {row_t}")).unwrap();
}

#[test]
fn require_lease_takes_writes_only_under_a_passed_fence_of_that_jobs_lease() {
    let mut a = connect();
    let mut b = connect();
    let job = unique("fenced_job");
    let table = unique("job_output");
    leader_only_table(&mut a, &table, "require_lease", &job, "STATEMENT");

    let held = claim(&mut a, &job, plan(), "runner-a");
    assert_eq!(held.outcome, "won");
    let tok_a = held.fencing_token.unwrap();
    let mut tx = a.transaction().unwrap();
    tx.execute("SELECT lease_sched.lease_fence($1, $2)", &[&held.id(), &tok_a]).unwrap();
    tx.execute(&format!("INSERT INTO {table} VALUES (1, 'a')"), &[]).unwrap();
    tx.commit().unwrap();
    assert_ls001(a.execute(&format!("INSERT INTO {table} VALUES (2, 'a')"), &[]), &[&job], "unfenced write");

    // The fence of a lease of another job does not open this table.
    let other = claim(&mut a, &unique("other_job"), plan(), "runner-a");
    let mut tx = a.transaction().unwrap();
    tx.execute("SELECT lease_sched.lease_fence($1, $2)", &[&other.id(), &other.fencing_token.unwrap()]).unwrap();
    assert_ls001(tx.execute(&format!("INSERT INTO {table} VALUES (2, 'a')"), &[]), &[&job], "another job's fence");
    drop(tx);

    // runner-a goes silent; runner-b steals the stale lease.
    make_stale(&mut b, held.id());
    let stolen = claim(&mut b, &job, plan(), "runner-b");
    assert_eq!(stolen.outcome, "stole");
    let tok_b = stolen.fencing_token.unwrap();
    assert!(tok_b > tok_a);
    assert_ls001(
        lease_fence(&mut a, held.id(), tok_a),
        &[&held.id().to_string(), &job, &tok_b.to_string(), &tok_a.to_string()],
        "deposed runner's fence",
    );
    let mut tx = b.transaction().unwrap();
    tx.execute("SELECT lease_sched.lease_fence($1, $2)", &[&stolen.id(), &tok_b]).unwrap();
    tx.execute(&format!("INSERT INTO {table} VALUES (3, 'b')"), &[]).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        a.query(&format!("SELECT writer FROM {table} ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>(),
        ["a", "b"]
    );

    // A finished run holds nothing: its own token's fence fails too.
    assert!(finish_ok(&mut b, stolen.id(), stolen.token()));
    assert_ls001(
        lease_fence(&mut b, stolen.id(), tok_b),
        &[&stolen.id().to_string(), "SUCCESS"],
        "fence of a finished run",
    );
    let nobody = Uuid::new_v4();
    assert_ls001(lease_fence(&mut b, nobody, tok_b), &[&nobody.to_string()], "fence of no lease");
    a.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

#[test]
fn a_fence_passed_in_a_rolled_back_savepoint_does_not_count() {
    let mut a = connect();
    let mut other = connect();
    let lock = unique("sp-leader");
    let table = unique("sp_reports");
    leader_only_table(&mut a, &table, "require_lock", &lock, "STATEMENT");
    let (_, tok) = lock_acquire(&mut a, &lock, "node-a").unwrap();
    let insert = format!("INSERT INTO {table} VALUES (1, 'a')");

    // Fence in a savepoint, savepoint rolled back: the write is refused.
    a.batch_execute("BEGIN; SAVEPOINT s1").unwrap();
    lock_fence(&mut a, &lock, tok).unwrap();
    a.batch_execute("ROLLBACK TO SAVEPOINT s1").unwrap();
    assert_ls001(a.execute(&insert, &[]), &[&lock], "fence rolled back with its savepoint");
    a.batch_execute("ROLLBACK").unwrap();

    // ...and its row lock is gone with it: a takeover does not wait for this transaction.
    a.batch_execute("BEGIN; SAVEPOINT s1").unwrap();
    lock_fence(&mut a, &lock, tok).unwrap();
    a.batch_execute("ROLLBACK TO SAVEPOINT s1").unwrap();
    expire_lock(&mut other, &lock);
    other.batch_execute("SET lock_timeout = '3s'").unwrap();
    let (_, tok2) =
        lock_acquire(&mut other, &lock, "node-b").expect("the takeover does not wait for a rolled-back fence");
    assert!(tok2 > tok);
    a.batch_execute("ROLLBACK").unwrap();

    // Released savepoint: the fence counts. A fence at top level survives an inner rollback.
    // Nested: released inner savepoint, rolled-back outer one: gone.
    a.batch_execute("BEGIN; SAVEPOINT s1").unwrap();
    lock_fence(&mut a, &lock, tok2).unwrap();
    a.batch_execute("RELEASE SAVEPOINT s1").unwrap();
    a.execute(&insert, &[]).unwrap();
    a.batch_execute("COMMIT").unwrap();

    a.batch_execute("BEGIN").unwrap();
    lock_fence(&mut a, &lock, tok2).unwrap();
    a.batch_execute("SAVEPOINT s1").unwrap();
    a.execute(&insert, &[]).unwrap();
    a.batch_execute("ROLLBACK TO SAVEPOINT s1").unwrap();
    a.execute(&insert, &[]).unwrap();
    a.batch_execute("COMMIT").unwrap();

    a.batch_execute("BEGIN; SAVEPOINT outer_sp; SAVEPOINT inner_sp").unwrap();
    lock_fence(&mut a, &lock, tok2).unwrap();
    a.batch_execute("RELEASE SAVEPOINT inner_sp; ROLLBACK TO SAVEPOINT outer_sp").unwrap();
    assert_ls001(a.execute(&insert, &[]), &[&lock], "fence in a released savepoint inside a rolled-back one");
    a.batch_execute("ROLLBACK").unwrap();

    // A PL/pgSQL exception block is a savepoint too.
    a.batch_execute("BEGIN").unwrap();
    a.batch_execute(&format!(
        "DO $$ BEGIN
             PERFORM lease_sched.lock_fence('{lock}', {tok2});
             RAISE EXCEPTION 'undo';
         EXCEPTION WHEN raise_exception THEN NULL;
         END $$"
    ))
    .unwrap();
    assert_ls001(a.execute(&insert, &[]), &[&lock], "fence undone by an exception block");
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(count(&mut a, &format!("SELECT count(*) FROM {table}")), 2);
    a.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

/// Under REPEATABLE READ, a fence whose snapshot predates a committed steal never passes: it
/// fails with LS001 (it sees the steal) or 40001 (it cannot lock a row changed since).
#[test]
fn a_repeatable_read_fence_never_passes_after_a_steal() {
    let mut a = connect();
    let mut b = connect();
    let job = unique("rr_job");
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut b, held.id());
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").unwrap(); // snapshot taken
    let stolen = claim(&mut b, &job, plan(), "runner-b");
    assert_eq!(stolen.outcome, "stole");
    let e = lease_fence(&mut a, held.id(), held.fencing_token.unwrap()).expect_err("stale snapshot fence");
    let (code, message) = db_error(&e);
    assert!(code == "40001" || code == "LS001", "SQLSTATE {code}: {message}");
    a.batch_execute("ROLLBACK").unwrap();
}

// ---------------------------------------------------------------------------------------
// pgbouncer, transaction pooling

#[test]
fn fence_and_writes_in_one_transaction_work_through_transaction_pooling() {
    // ONE server connection: every client's transactions run on the same backend.
    let bouncer = Bouncer::start(1);
    let bounced = || bouncer.connect();
    let mut setup = connect();
    let lock = unique("pooled-leader");
    let table = unique("pooled_reports");
    leader_only_table(&mut setup, &table, "require_lock", &lock, "STATEMENT");

    let mut x = bounced();
    let mut y = bounced();
    let tok_x: i64 =
        simple(&mut x, &format!("SELECT fencing_token FROM lease_sched.lock_acquire('{lock}', 'node-x', '1 hour')"))
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
    // One transaction = fence + writes: passes.
    simple(
        &mut x,
        &format!(
            "BEGIN; SELECT lease_sched.lock_fence('{lock}', {tok_x}); INSERT INTO {table} VALUES (1, 'x'); COMMIT"
        ),
    )
    .unwrap();
    // The fence stays with its transaction: not with the server connection the pool lends
    // next to another client (the pool has one), nor with the next transaction of the same client.
    assert_ls001(
        simple(&mut y, &format!("INSERT INTO {table} VALUES (2, 'y')")),
        &[&lock],
        "another client after a fenced transaction",
    );
    simple(&mut x, &format!("SELECT lease_sched.lock_fence('{lock}', {tok_x})")).unwrap();
    assert_ls001(
        simple(&mut x, &format!("INSERT INTO {table} VALUES (2, 'x')")),
        &[&lock],
        "fence and write in separate transactions",
    );

    // node-y takes over the expired lock; node-x's fenced transaction is refused with LS001
    // (through the pooler) naming the new token, node-y's goes through.
    expire_lock(&mut setup, &lock);
    let tok_y: i64 =
        simple(&mut y, &format!("SELECT fencing_token FROM lease_sched.lock_acquire('{lock}', 'node-y', '1 hour')"))
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
    assert!(tok_y > tok_x);
    assert_ls001(
        simple(
            &mut x,
            &format!(
                "BEGIN; SELECT lease_sched.lock_fence('{lock}', {tok_x}); INSERT INTO {table} VALUES (3, 'x'); COMMIT"
            ),
        ),
        &[&lock, &tok_y.to_string()],
        "deposed leader through the pooler",
    );
    // The failed transaction block is left aborted: end it, so the pool's one server
    // connection is lent again.
    simple(&mut x, "ROLLBACK").unwrap();
    simple(
        &mut y,
        &format!(
            "BEGIN; SELECT lease_sched.lock_fence('{lock}', {tok_y}); INSERT INTO {table} VALUES (4, 'y'); COMMIT"
        ),
    )
    .unwrap();
    // An explicit multi-round-trip transaction through the pooler works the same.
    simple(&mut y, "BEGIN").unwrap();
    simple(&mut y, &format!("SELECT lease_sched.lock_fence('{lock}', {tok_y})")).unwrap();
    simple(&mut y, &format!("INSERT INTO {table} VALUES (5, 'y')")).unwrap();
    simple(&mut y, "COMMIT").unwrap();
    let writers: Vec<String> = setup
        .query(&format!("SELECT writer FROM {table} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(writers, ["x", "y", "y"]);
    setup.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

// ---------------------------------------------------------------------------------------
// tables only the holder's secret opens; fences held in a transaction

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
    let table = unique("reports");
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
/// a fence passed with the holder's lock_token opens. Pins the hole where a role holding
/// nothing read the token from lock_info, passed the fence and wrote to the leader's table.
#[test]
fn a_non_holder_with_the_public_fencing_token_cannot_write_a_secret_fenced_table() {
    let mut owner = connect();
    let lock = unique("leader");
    let mallory = Role::runner("mallory");
    let table = secret_leader_only_table(&mut owner, &lock, &mallory.0);
    let r = owner
        .query_one(
            "SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, 'the-leader', '1 hour')",
            &[&lock],
        )
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
    let wrote =
        fenced.is_ok() && tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (1, 'not the leader')")).is_ok();
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
    assert!(
        !wrote,
        "a role that does not hold lock {lock} wrote to a require_lock(.., 'secret') table with the public token"
    );
    assert_eq!(guessed.as_ref().err().map(sqlstate).as_deref(), Some("LS001"), "a wrong lock_token fails the fence");
    assert!(holder_wrote, "the holder, fenced with its lock_token, writes");
}

/// A refused fence names the newer token (so a deposed holder learns who replaced it), and
/// that token passes a plain fence; a `require_lease(job, 'secret')` table still refuses
/// anyone without the lease_token, which only the holder has. Pins the hole where a runner
/// that only saw a conflicted claim and a refusal could write to the holder's table.
#[test]
fn a_lease_fence_refusal_names_a_token_that_opens_no_secret_fenced_table() {
    let mut owner = connect();
    let job = unique("job");
    let c = claim(&mut owner, &job, plan(), "the-holder");
    assert_eq!(c.outcome, "won");
    let mallory = Role::runner("mallory");
    let table = unique("lease_only");
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
    tx.execute("SELECT lease_sched.lease_fence($1, $2, $3)", &[&c.id(), &c.fencing_token.unwrap(), &c.token()])
        .unwrap();
    let holder_wrote = tx.batch_execute(&format!("INSERT INTO public.{table} VALUES (2)")).is_ok();
    drop(tx);
    let _ = connect().batch_execute(&format!("DROP TABLE public.{table}"));
    assert!(!mallory_wrote, "a runner without the lease_token wrote to a require_lease(.., 'secret') table");
    assert!(holder_wrote, "the holder, fenced with its lease_token, writes");
}

/// A prepared transaction keeps its row locks until someone resolves it: a fence in one
/// would hold off every takeover indefinitely, so a fenced transaction cannot be prepared.
/// Pins the hole where a non-holder fenced a lock, prepared the transaction and left it:
/// no takeover of the lock ever completed.
#[test]
fn a_fenced_transaction_cannot_be_prepared_to_pin_a_lock() {
    let mut owner = connect();
    let max_prepared: String = owner.query_one("SHOW max_prepared_transactions", &[]).unwrap().get(0);
    if max_prepared == "0" {
        skip("a_fenced_transaction_cannot_be_prepared_to_pin_a_lock", "max_prepared_transactions = 0");
        return;
    }
    let lock = unique("pinned");
    let r =
        owner.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'victim', '1 second')", &[&lock]).unwrap();
    assert!(r.get::<_, bool>(0));

    let mallory = Role::runner("mallory");
    let mut m = mallory.connect();
    let gid = unique("pin");
    let _guard = Prepared(gid.clone());
    m.batch_execute(&format!(
        "BEGIN; SELECT lease_sched.lock_fence('{lock}', (SELECT fencing_token FROM lease_sched.lock_info('{lock}')));"
    ))
    .unwrap();
    let prepared = m.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"));
    assert_eq!(
        prepared.as_ref().err().map(sqlstate).as_deref(),
        Some("0A000"),
        "a fenced transaction cannot be prepared"
    );
    drop(m);

    std::thread::sleep(Duration::from_millis(1500)); // the victim's ttl has run out
    let mut next = connect();
    next.batch_execute("SET lock_timeout = '3s'").unwrap();
    let taken =
        next.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'next-leader', '1 minute')", &[&lock]);
    let outcome = match &taken {
        Ok(r) => format!("acquired = {}", r.get::<_, bool>(0)),
        Err(e) => format!("error {} {}", sqlstate(e), e),
    };
    assert!(matches!(&taken, Ok(r) if r.get::<_, bool>(0)), "the expired lock is taken over ({outcome})");
}

/// A steal that waited for the holder's fenced transaction gets a lease that runs from the
/// end of its wait. Pins the hole where the steal used the clock read before waiting: its
/// lease was born stale, and the next caller stole it again at once.
#[test]
fn a_steal_that_waited_for_a_fence_gets_a_full_lease() {
    let mut holder = connect();
    let job = unique("stale_born");
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

/// A takeover that waited for the holder's fenced transaction gets its ttl from the end of
/// its wait. Pins the hole where the takeover used the clock read before waiting: the lock
/// was born expired, and the next caller took it over again at once.
#[test]
fn a_takeover_that_waited_for_a_fence_gets_its_full_ttl() {
    let mut holder = connect();
    let lock = unique("expired_born");
    let r = holder
        .query_one(
            "SELECT acquired, fencing_token, lock_token FROM lease_sched.lock_acquire($1, 'holder', '2 seconds')",
            &[&lock],
        )
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
        .query_one(
            "SELECT acquired, expires_at, clock_timestamp() FROM lease_sched.lock_acquire($1, 'taker-1', '2 seconds')",
            &[&lock],
        )
        .unwrap();
    fenced.join().unwrap();
    let (acquired, expires_at, now): (bool, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        (r.get(0), r.get(1), r.get(2));
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
