//! Issue 11, fencing that protects data (docs/api.md, "Fences"; docs/reliability.md):
//! - leader-only tables (`require_lock`, `require_lease` triggers): a deposed holder's
//!   write fails with LS001 naming the newer token, the current holder's succeeds; a fence
//!   counts only in its own transaction, not after the savepoint that passed it rolls back;
//! - the same through pgbouncer in transaction mode (one transaction = fence + writes), with
//!   no fence leaking to another client's transaction on the same server connection;
//! - NOTIFY lease_sched_lost at the commit of a steal, a takeover and a sweep that fails an
//!   abandoned lease, and nothing for a rolled-back steal or takeover;
//! - fencing tokens keep increasing across DROP/CREATE EXTENSION, a restore of the executions
//!   table into a fresh database (sequence not carried), and the promotion of an asynchronous
//!   replica that never received the last grants.
//! The isolation specs tests/isolation/specs/fence_vs_*.spec prove the interleavings
//! (no steal, takeover or sweep completes between a fence and its commit).
//!
//! Destructive steps run in scratch databases of their own (dropped afterwards) or in the
//! test's own pair of clusters (ports 55476/55477); pgbouncer on a free port of its own.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lease_sched_integration::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// helpers

/// (SQLSTATE, message) of a failed call.
fn db_error(e: &postgres::Error) -> (String, String) {
    (sqlstate(e), e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))
}

/// Assert `r` failed with LS001 and a message containing every one of `needles`.
fn assert_ls001<T: std::fmt::Debug>(r: Result<T, postgres::Error>, needles: &[&str], what: &str) {
    let e = r.expect_err(what);
    let (code, message) = db_error(&e);
    assert_eq!(code, "LS001", "{what}: SQLSTATE {code} ({message})");
    for n in needles {
        assert!(message.contains(n), "{what}: message {message:?} should contain {n:?}");
    }
}

fn lock_acquire(c: &mut Client, name: &str, holder: &str) -> Option<(Uuid, i64)> {
    let r = c
        .query_one("SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, $2, '1 hour')", &[&name, &holder])
        .unwrap();
    if r.get::<_, bool>(0) {
        Some((r.get(1), r.get(2)))
    } else {
        None
    }
}

fn expire_lock(c: &mut Client, name: &str) {
    c.execute("UPDATE lease_sched.locks SET expires_at = now() - interval '1 second' WHERE name = $1", &[&name]).unwrap();
}

fn make_stale(c: &mut Client, id: Uuid) {
    c.execute("UPDATE lease_sched.sys_cron_executions SET stale_after = now() - interval '1 second' WHERE id = $1", &[&id])
        .unwrap();
}

fn lock_fence(c: &mut Client, name: &str, token: i64) -> Result<(), postgres::Error> {
    c.execute("SELECT lease_sched.lock_fence($1, $2)", &[&name, &token]).map(|_| ())
}

fn lease_fence(c: &mut Client, id: Uuid, token: i64) -> Result<(), postgres::Error> {
    c.execute("SELECT lease_sched.lease_fence($1, $2)", &[&id, &token]).map(|_| ())
}

/// A table `name` (id int, writer text) with a statement-level (or row-level) trigger
/// calling `function`('arg') before every write.
fn leader_only_table(c: &mut Client, name: &str, function: &str, arg: &str, level: &str) {
    let ops = if level == "STATEMENT" { "INSERT OR UPDATE OR DELETE OR TRUNCATE" } else { "INSERT OR UPDATE OR DELETE" };
    c.batch_execute(&format!(
        "CREATE TABLE {name} (id int, writer text);
         CREATE TRIGGER {name}_guard BEFORE {ops} ON {name}
             FOR EACH {level} EXECUTE FUNCTION lease_sched.{function}('{arg}');"
    ))
    .unwrap();
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
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
    assert_ls001(a.execute(&format!("INSERT INTO {stmt_t} VALUES (3, 'a')"), &[]), &[&lock], "fence of an earlier transaction");
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
        a.query(&format!("SELECT writer FROM {table} ORDER BY id"), &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>(),
        ["a", "b"]
    );

    // A finished run holds nothing: its own token's fence fails too.
    assert!(finish_ok(&mut b, stolen.id(), stolen.token()));
    assert_ls001(lease_fence(&mut b, stolen.id(), tok_b), &[&stolen.id().to_string(), "SUCCESS"], "fence of a finished run");
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
    let (_, tok2) = lock_acquire(&mut other, &lock, "node-b").expect("the takeover does not wait for a rolled-back fence");
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

/// A pgbouncer of this test alone: its own directory and a free port. pgbouncer runs under
/// runuser (it refuses root), so Drop stops it by the pid in its pidfile (killing runuser
/// would leave pgbouncer behind, holding the port).
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

/// pgbouncer in transaction mode with ONE server connection: every client's transactions
/// run on the same backend, one after another.
fn start_pgbouncer() -> (Bouncer, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db_port = dsn().split_whitespace().find_map(|kv| kv.strip_prefix("port=").map(str::to_string)).unwrap();
    let dir = std::path::PathBuf::from(format!("/tmp/lease_sched_pgbouncer_fencing_{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nlease_sched = host=127.0.0.1 port={db_port} dbname=lease_sched user=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nauth_type = any\npool_mode = transaction\n\
             default_pool_size = 1\nmax_client_conn = 20\nunix_socket_dir =\nlogfile = {0}/pgbouncer.log\n\
             pidfile = {0}/pgbouncer.pid\n",
            dir.display()
        ),
    )
    .unwrap();
    Command::new("chown").args(["-R", "postgres", dir.to_str().unwrap()]).status().unwrap();
    let child = Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/sbin/pgbouncer", ini.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer (installed by scripts/setup.sh)");
    let bouncer = Bouncer { child, dir: dir.clone() };
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(dir.join("pgbouncer.log"))
            .is_ok_and(|l| l.contains(&format!("listening on 127.0.0.1:{port}")))),
        "pgbouncer listens on {port}"
    );
    (bouncer, port)
}

/// The first column of the first row, through the simple protocol (transaction pooling
/// does not carry named prepared statements).
fn simple(c: &mut Client, sql: &str) -> Result<Option<String>, postgres::Error> {
    Ok(c.simple_query(sql)?.into_iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    })
    .flatten())
}

#[test]
fn fence_and_writes_in_one_transaction_work_through_transaction_pooling() {
    let (_bouncer, port) = start_pgbouncer();
    let bounced = || connect_retrying(&format!("host=127.0.0.1 port={port} dbname=lease_sched user=postgres"));
    let mut setup = connect();
    let lock = unique("pooled-leader");
    let table = unique("pooled_reports");
    leader_only_table(&mut setup, &table, "require_lock", &lock, "STATEMENT");

    let mut x = bounced();
    let mut y = bounced();
    let tok_x: i64 = simple(&mut x, &format!("SELECT fencing_token FROM lease_sched.lock_acquire('{lock}', 'node-x', '1 hour')"))
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    // One transaction = fence + writes: passes.
    simple(&mut x, &format!("BEGIN; SELECT lease_sched.lock_fence('{lock}', {tok_x}); INSERT INTO {table} VALUES (1, 'x'); COMMIT"))
        .unwrap();
    // The fence stays with its transaction: not with the server connection the pool lends
    // next to another client (the pool has one), nor with the next transaction of the same client.
    assert_ls001(simple(&mut y, &format!("INSERT INTO {table} VALUES (2, 'y')")), &[&lock], "another client after a fenced transaction");
    simple(&mut x, &format!("SELECT lease_sched.lock_fence('{lock}', {tok_x})")).unwrap();
    assert_ls001(simple(&mut x, &format!("INSERT INTO {table} VALUES (2, 'x')")), &[&lock], "fence and write in separate transactions");

    // node-y takes over the expired lock; node-x's fenced transaction is refused with LS001
    // (through the pooler) naming the new token, node-y's goes through.
    expire_lock(&mut setup, &lock);
    let tok_y: i64 = simple(&mut y, &format!("SELECT fencing_token FROM lease_sched.lock_acquire('{lock}', 'node-y', '1 hour')"))
        .unwrap()
        .unwrap()
        .parse()
        .unwrap();
    assert!(tok_y > tok_x);
    assert_ls001(
        simple(&mut x, &format!("BEGIN; SELECT lease_sched.lock_fence('{lock}', {tok_x}); INSERT INTO {table} VALUES (3, 'x'); COMMIT")),
        &[&lock, &tok_y.to_string()],
        "deposed leader through the pooler",
    );
    // The failed transaction block is left aborted: end it, so the pool's one server
    // connection is lent again.
    simple(&mut x, "ROLLBACK").unwrap();
    simple(&mut y, &format!("BEGIN; SELECT lease_sched.lock_fence('{lock}', {tok_y}); INSERT INTO {table} VALUES (4, 'y'); COMMIT"))
        .unwrap();
    // An explicit multi-round-trip transaction through the pooler works the same.
    simple(&mut y, "BEGIN").unwrap();
    simple(&mut y, &format!("SELECT lease_sched.lock_fence('{lock}', {tok_y})")).unwrap();
    simple(&mut y, &format!("INSERT INTO {table} VALUES (5, 'y')")).unwrap();
    simple(&mut y, "COMMIT").unwrap();
    let writers: Vec<String> =
        setup.query(&format!("SELECT writer FROM {table} ORDER BY id"), &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(writers, ["x", "y", "y"]);
    setup.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

// ---------------------------------------------------------------------------------------
// NOTIFY lease_sched_lost

/// Wait up to `within` for a lease_sched_lost notification with this payload. Other tests
/// share the channel; their notifications are skipped.
fn notified(listener: &mut Client, payload: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(left);
        match it.next() {
            Ok(Some(note)) => {
                assert_eq!(note.channel(), "lease_sched_lost");
                if note.payload() == payload {
                    return true;
                }
            }
            Err(e) => panic!("notifications: {e}"),
            Ok(None) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

fn listener() -> Client {
    let mut l = connect();
    l.batch_execute("LISTEN lease_sched_lost").unwrap();
    l
}

#[test]
fn a_steal_notifies_the_loser_at_commit_and_a_rolled_back_steal_sends_nothing() {
    let mut l = listener();
    let mut a = connect();
    let mut thief = connect();
    let job = unique("notify_steal");

    // Committed steal, autocommit: notified within a second.
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut a, held.id());
    let stolen = claim(&mut thief, &job, plan(), "thief");
    assert_eq!(stolen.outcome, "stole");
    let at = Instant::now();
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)), "steal notified within 1 s");
    eprintln!("steal notification after {:?}", at.elapsed());

    // A steal in an open transaction: nothing before the commit, then at once.
    let p2 = plan() + chrono::Duration::hours(1);
    let held = claim(&mut a, &job, p2, "runner-a");
    make_stale(&mut a, held.id());
    thief.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut thief, &job, p2, "thief").outcome, "stole");
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(700)), "nothing before the steal commits");
    thief.batch_execute("COMMIT").unwrap();
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)), "notified at the commit");

    // A rolled-back steal sends nothing; the lease stays with its holder, and a later
    // committed steal of it is notified (the listener was live all along).
    let p3 = plan() + chrono::Duration::hours(2);
    let held = claim(&mut a, &job, p3, "runner-a");
    make_stale(&mut a, held.id());
    thief.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut thief, &job, p3, "thief").outcome, "stole");
    thief.batch_execute("ROLLBACK").unwrap();
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(1500)), "a rolled-back steal sends nothing");
    lease_fence(&mut a, held.id(), held.fencing_token.unwrap()).expect("the holder still holds it");
    assert_eq!(claim(&mut thief, &job, p3, "thief").outcome, "stole");
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)));

    // A retry of a FAILED run deposes nobody: no notification.
    let p4 = plan() + chrono::Duration::hours(3);
    let held = claim(&mut a, &job, p4, "runner-a");
    assert!(finish_failed(&mut a, held.id(), held.token(), Duration::ZERO));
    assert_eq!(claim(&mut thief, &job, p4, "thief").outcome, "stole");
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(700)), "a retry of a FAILED run sends nothing");
}

#[test]
fn with_notify_lost_off_a_steal_sends_nothing_and_only_a_superuser_may_turn_it_off() {
    if native_only("with_notify_lost_off_a_steal_sends_nothing_and_only_a_superuser_may_turn_it_off", "lease_sched.notify_lost is a superuser-only setting of the library; in the portable edition it is a placeholder any role may set for its own session (docs/portable.md)") {
        return;
    }
    let mut l = listener();
    let mut a = connect();
    let mut thief = connect();
    let job = unique("notify_off");
    thief.batch_execute("SET lease_sched.notify_lost = off").unwrap();
    let held = claim(&mut a, &job, plan(), "runner-a");
    make_stale(&mut a, held.id());
    assert_eq!(claim(&mut thief, &job, plan(), "thief").outcome, "stole");
    assert!(!notified(&mut l, &held.id().to_string(), Duration::from_millis(1000)), "notify_lost = off: no notification");
    // Back on: the next steal is notified again.
    thief.batch_execute("RESET lease_sched.notify_lost").unwrap();
    let p2 = plan() + chrono::Duration::hours(1);
    let held = claim(&mut a, &job, p2, "runner-a");
    make_stale(&mut a, held.id());
    assert_eq!(claim(&mut thief, &job, p2, "thief").outcome, "stole");
    assert!(notified(&mut l, &held.id().to_string(), Duration::from_secs(1)));
    // A role that is not superuser cannot silence its steals.
    let role = unique("notify_runner");
    a.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    let mut r = connect_as(&role);
    let e = r.batch_execute("SET lease_sched.notify_lost = off").expect_err("a runner role may not turn notifications off");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    drop(r);
    a.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

#[test]
fn a_takeover_notifies_lock_name_and_a_rolled_back_takeover_sends_nothing() {
    let mut l = listener();
    let mut a = connect();
    let mut b = connect();
    let lock = unique("notify-lock");
    let payload = format!("lock:{lock}");

    lock_acquire(&mut a, &lock, "node-a").unwrap();
    expire_lock(&mut a, &lock);
    b.batch_execute("BEGIN").unwrap();
    lock_acquire(&mut b, &lock, "node-b").expect("takeover");
    b.batch_execute("ROLLBACK").unwrap();
    assert!(!notified(&mut l, &payload, Duration::from_millis(1500)), "a rolled-back takeover sends nothing");
    lock_acquire(&mut b, &lock, "node-b").expect("takeover");
    assert!(notified(&mut l, &payload, Duration::from_secs(1)), "takeover notified within 1 s");

    // Release and a fresh acquire depose nobody.
    let name2 = unique("notify-free");
    let (t, _) = lock_acquire(&mut a, &name2, "node-a").unwrap();
    let released: bool = a.query_one("SELECT lease_sched.lock_release($1, $2)", &[&name2, &t]).unwrap().get(0);
    assert!(released);
    lock_acquire(&mut b, &name2, "node-b").unwrap();
    assert!(!notified(&mut l, &format!("lock:{name2}"), Duration::from_millis(700)), "release + acquire sends nothing");
}

#[test]
fn the_sweep_failing_an_abandoned_lease_notifies_its_holder() {
    let mut l = listener();
    let mut c = connect();
    let lease = abandoned_lease(&mut c); // stale in 200 ms, may not be stolen
    std::thread::sleep(Duration::from_millis(300));
    // The background sweeper (every second) or this sweep fails it; either way the holder
    // hears of it within a second of this sweep's return.
    c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    assert!(notified(&mut l, &lease.id().to_string(), Duration::from_secs(1)), "sweep notified");
    assert_eq!(status_of(&mut c, lease.id()), "FAILED");
}

// ---------------------------------------------------------------------------------------
// tokens that never repeat

/// A database of the test cluster for destructive steps, dropped at the end.
struct ScratchDb {
    name: String,
}

impl ScratchDb {
    fn new(prefix: &str) -> ScratchDb {
        let name = unique(prefix);
        connect().batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).unwrap();
        ScratchDb { name }
    }
    fn dsn(&self) -> String {
        dsn().replace("dbname=lease_sched", &format!("dbname={}", self.name))
    }
    fn connect(&self) -> Client {
        Client::connect(&self.dsn(), NoTls).unwrap()
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let _ = connect().batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Grant `n` lease tokens and `n` lock tokens; return the highest.
fn grant_tokens(c: &mut Client, n: i64, tag: &str) -> i64 {
    let mut highest = 0;
    for i in 0..n {
        let r = claim(c, &format!("{tag}_job"), plan() + chrono::Duration::seconds(i), "r");
        assert_eq!(r.outcome, "won");
        highest = highest.max(r.fencing_token.unwrap());
        let (_, t) = lock_acquire(c, &format!("{tag}_lock_{i}"), "h").unwrap();
        highest = highest.max(t);
    }
    highest
}

/// One lease token and one lock token, both checked above `floor`.
fn assert_grants_above(c: &mut Client, floor: i64, what: &str) -> i64 {
    let r = claim(c, &unique("after"), plan(), "r");
    assert_eq!(r.outcome, "won", "{what}");
    let lease_tok = r.fencing_token.unwrap();
    let (_, lock_tok) = lock_acquire(c, &unique("after-lock"), "h").unwrap();
    assert!(lease_tok > floor, "{what}: lease token {lease_tok} is not above {floor}, granted before");
    assert!(lock_tok > lease_tok, "{what}: lock token {lock_tok} after lease token {lease_tok}");
    lock_tok
}

#[test]
fn tokens_keep_increasing_across_drop_and_create_extension() {
    if native_only("tokens_keep_increasing_across_drop_and_create_extension", "DROP and CREATE EXTENSION in scratch databases; the portable edition is installed by its script (the floor after a fresh install is checked by its regress suite, tokens.sql)") {
        return;
    }
    let db = ScratchDb::new("fence_recreate");
    let mut old_backend = db.connect();
    old_backend.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let highest = grant_tokens(&mut old_backend, 5, "before");
    let mut other_old = db.connect();
    grant_tokens(&mut other_old, 1, "before2");
    let highest = highest.max(grant_tokens(&mut old_backend, 1, "before3"));

    old_backend.batch_execute("DROP EXTENSION lease_sched CASCADE; CREATE EXTENSION lease_sched").unwrap();
    let last: i64 = old_backend.query_one("SELECT last_value FROM lease_sched.fencing_token_seq", &[]).unwrap().get(0);
    assert!(last < highest, "the re-created sequence starts over ({last}): without a floor tokens would repeat");

    // A new session, and sessions that granted tokens before the re-create (a pooler keeps
    // such backends), all grant above every token granted before.
    let mut fresh = db.connect();
    let t1 = assert_grants_above(&mut fresh, highest, "new session after DROP/CREATE EXTENSION");
    let t2 = assert_grants_above(&mut old_backend, highest, "the session that re-created the extension");
    let t3 = assert_grants_above(&mut other_old, highest, "a session that granted before the re-create");
    assert!(t1 < t2 && t2 < t3);
}

/// A session that floored the sequence before DROP/CREATE EXTENSION, re-created in another
/// session, and grants first after it.
#[test]
fn a_session_from_before_drop_and_create_extension_grants_first_above_the_old_tokens() {
    if native_only("a_session_from_before_drop_and_create_extension_grants_first_above_the_old_tokens", "DROP and CREATE EXTENSION in scratch databases") {
        return;
    }
    let db = ScratchDb::new("fence_recreate2");
    let mut old = db.connect();
    old.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let highest = grant_tokens(&mut old, 3, "before");
    let mut admin = db.connect();
    admin.batch_execute("DROP EXTENSION lease_sched CASCADE; CREATE EXTENSION lease_sched").unwrap();
    assert_grants_above(&mut old, highest, "first grant after the re-create, from a session that granted before it");
}

/// The floor after an event (here CREATE EXTENSION) is taken by the first grant, inside its
/// caller's transaction. Another session's grant, of another lease or lock, must not wait
/// for that transaction to end.
#[test]
fn the_first_grant_after_create_extension_does_not_hold_up_other_sessions_grants() {
    if native_only("the_first_grant_after_create_extension_does_not_hold_up_other_sessions_grants", "CREATE EXTENSION in a scratch database") {
        return;
    }
    let db = ScratchDb::new("fence_floor_wait");
    let mut a = db.connect();
    a.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let mut b = db.connect();
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(claim(&mut a, "long_job", plan(), "a").outcome, "won"); // floors, stays open
    b.batch_execute("SET lock_timeout = '2s'").unwrap();
    let got = b.query("SELECT acquired FROM lease_sched.lock_acquire('other-lock', 'b')", &[]);
    let waited = got.as_ref().err().map(db_error);
    a.batch_execute("COMMIT").unwrap();
    assert!(waited.is_none(), "an unrelated lock_acquire waited for the open transaction that floored the sequence: {waited:?}");
    let r = try_claim_with(&mut b, "other_job", plan(), "b", &ClaimArgs::default());
    assert!(r.is_ok());
}

fn host_port() -> (String, String) {
    let get = |k: &str| dsn().split_whitespace().find_map(|kv| kv.strip_prefix(k).map(str::to_string)).unwrap();
    (get("host="), get("port="))
}

fn pg_tool(tool: &str, args: &[&str]) -> Vec<u8> {
    let (host, port) = host_port();
    let out = Command::new(format!("{}/{tool}", pgbin()))
        .args(["-h", &host, "-p", &port, "-U", "postgres"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn tokens_keep_increasing_across_a_restore_without_the_sequence() {
    if native_only("tokens_keep_increasing_across_a_restore_without_the_sequence", "dumps and restores the extension into scratch databases") {
        return;
    }
    let src = ScratchDb::new("fence_dump_src");
    let mut s = src.connect();
    s.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let mut highest = grant_tokens(&mut s, 5, "before");
    // A run that failed and may be retried, and one still RUNNING: both restored, then taken over.
    let failed = claim(&mut s, "retry_job", plan(), "r");
    assert!(finish_failed(&mut s, failed.id(), failed.token(), Duration::ZERO));
    let running = claim(&mut s, "running_job", plan(), "r");
    highest = highest.max(running.fencing_token.unwrap());
    let (_, t) = lock_acquire(&mut s, "last-lock", "h").unwrap();
    highest = highest.max(t);

    // Only the executions table, data only: the sequence is not carried.
    let dump = std::env::temp_dir().join(format!("{}.sql", src.name));
    std::fs::write(&dump, pg_tool("pg_dump", &["--data-only", "--table=lease_sched.sys_cron_executions", "-d", &src.name])).unwrap();
    let dst = ScratchDb::new("fence_dump_dst");
    let mut d = dst.connect();
    d.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    pg_tool("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dst.name, "-f", dump.to_str().unwrap()]);
    let _ = std::fs::remove_file(&dump);
    assert_eq!(count(&mut d, "SELECT count(*) FROM lease_sched.sys_cron_executions"), 7, "restored");
    let max_restored: i64 = d.query_one("SELECT max(fencing_token) FROM lease_sched.sys_cron_executions", &[]).unwrap().get(0);
    assert_eq!(max_restored, running.fencing_token.unwrap());
    let last: i64 = d.query_one("SELECT last_value FROM lease_sched.fencing_token_seq", &[]).unwrap().get(0);
    assert!(last < max_restored, "the sequence was not carried ({last} vs {max_restored})");

    // The restored FAILED run is retried, the restored RUNNING lease (stale) is stolen, new
    // plans and locks are granted: every token above every token granted before.
    let retry = claim(&mut d, "retry_job", plan(), "r2");
    assert_eq!(retry.outcome, "stole");
    assert!(retry.fencing_token.unwrap() > highest, "retry token {:?} vs {highest}", retry.fencing_token);
    make_stale(&mut d, running.id());
    let steal = claim(&mut d, "running_job", plan(), "r2");
    assert_eq!(steal.outcome, "stole");
    assert!(steal.fencing_token.unwrap() > retry.fencing_token.unwrap());
    // The old holder's token no longer passes in the restored copy.
    assert_ls001(lease_fence(&mut d, running.id(), running.fencing_token.unwrap()), &[&steal.fencing_token.unwrap().to_string()], "restored old token");
    assert_grants_above(&mut d, highest, "after a restore of the executions table alone");

    // A whole-database dump carries the sequence; the restore floors anyway: still above.
    let full = std::env::temp_dir().join(format!("{}_full.sql", src.name));
    std::fs::write(&full, pg_tool("pg_dump", &["-d", &src.name])).unwrap();
    let dst2 = ScratchDb::new("fence_dump_full");
    pg_tool("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &dst2.name, "-f", full.to_str().unwrap()]);
    let _ = std::fs::remove_file(&full);
    let mut d2 = dst2.connect();
    let floored: i64 = d2.query_one("SELECT timeline FROM lease_sched.token_floor", &[]).unwrap().get(0);
    assert_eq!(floored, 0, "token_floor is not dumped: the restored copy floors at its first grant");
    assert_grants_above(&mut d2, highest, "after a whole-database restore");
}

// ---------------------------------------------------------------------------------------
// promotion of a lagging asynchronous replica

// Ports the kernel picked as free, and a directory named after them: fixed ones collide
// with whatever else runs on a shared machine.
static FO_PORTS: std::sync::LazyLock<[u16; 2]> = std::sync::LazyLock::new(free_ports::<2>);

fn fo_base() -> String {
    format!("/tmp/lease_sched_fencing_failover_{}", FO_PORTS[0])
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

struct FoClusters;

impl Drop for FoClusters {
    fn drop(&mut self) {
        for dir in ["primary", "replica"] {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", &format!("{}/{dir}/data", fo_base()), "-m", "immediate", "stop"])
                .output();
        }
        // Named after its port, the directory is this run's alone: leave nothing behind.
        let _ = std::fs::remove_dir_all(fo_base());
    }
}

#[test]
fn tokens_keep_increasing_across_promotion_of_a_lagging_async_replica() {
    if native_only("tokens_keep_increasing_across_promotion_of_a_lagging_async_replica", "starts its own primary and replica preloading the library") {
        return;
    }
    let [fo_primary, fo_replica] = *FO_PORTS;
    let fo_base = fo_base();
    let _clusters = FoClusters;
    let cluster_sh = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
    let status = Command::new(cluster_sh)
        .env("PGBIN", pgbin())
        .args(["start", &format!("{fo_base}/primary"), &fo_primary.to_string(), "wal_level = replica", "log_min_messages = warning"])
        .status()
        .unwrap();
    assert!(status.success());
    let mut p = client_at(fo_primary);
    p.batch_execute("CREATE EXTENSION lease_sched").unwrap();

    // An asynchronous streaming replica.
    let replica = format!("{fo_base}/replica");
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", &format!("{replica}/data"), "-m", "immediate", "-w", "stop"])
        .output();
    let _ = std::fs::remove_dir_all(&replica);
    std::fs::create_dir_all(&replica).unwrap();
    Command::new("chown").args(["postgres", &replica]).status().unwrap();
    as_postgres(&[
        &format!("{}/pg_basebackup", pgbin()), "-h", "127.0.0.1", "-p", &fo_primary.to_string(), "-U", "postgres",
        "-D", &format!("{replica}/data"), "-R", "-X", "stream", "-c", "fast",
    ]);
    let conf = format!("{replica}/data/postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&conf).unwrap();
    auto.push_str(&format!(
        "port = {fo_replica}\nunix_socket_directories = '{replica}'\n\
         primary_conninfo = 'host=127.0.0.1 port={fo_primary} user=postgres application_name=lagging'\n"
    ));
    std::fs::write(&conf, auto).unwrap();
    pg_ctl_at(&replica, &["-l", &format!("{replica}/server.log"), "start"]);

    // Phase 1: grants the replica receives and replays.
    let seen_by_replica = grant_tokens(&mut p, 10, "phase1");
    let lsn: String = p.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let mut r = client_at(fo_replica);
    assert!(
        wait_until(Duration::from_secs(30), || {
            r.query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&lsn]).unwrap().get::<_, bool>(0)
        }),
        "the replica replays phase 1"
    );
    let sync: Option<String> = p
        .query_opt("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'lagging'", &[])
        .unwrap()
        .map(|row| row.get(0));
    assert_eq!(sync.as_deref(), Some("async"));
    drop(r);

    // The replica falls behind (stops receiving), the primary grants on (far more than the
    // 32 sequence values WAL-logged ahead), then dies.
    pg_ctl_at(&replica, &["-m", "fast", "stop"]);
    let lost = grant_tokens(&mut p, 100, "phase2");
    assert!(lost > seen_by_replica);
    drop(p);
    pg_ctl_at(&format!("{fo_base}/primary"), &["-m", "immediate", "stop"]);

    // The replica comes back (its primary is gone), really lacks phase 2, and is promoted.
    pg_ctl_at(&replica, &["-l", &format!("{replica}/server.log"), "start"]);
    let mut r = client_at(fo_replica);
    assert_eq!(count(&mut r, "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = 'phase2_job'"), 0);
    assert_eq!(count(&mut r, "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = 'phase1_job'"), 10);
    let seq: i64 = r.query_one("SELECT last_value FROM lease_sched.fencing_token_seq", &[]).unwrap().get(0);
    assert!(seq < lost, "the replica's sequence ({seq}) is behind the lost grants ({lost}): without a floor tokens would repeat");
    pg_ctl_at(&replica, &["promote"]);
    assert!(wait_until(Duration::from_secs(30), || !r.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get::<_, bool>(0)));

    // The session opened during recovery and a new one both grant above every lost token,
    // leases (new and stolen) and locks alike.
    assert_grants_above(&mut r, lost, "the first grant after promotion (session from before it)");
    let mut r2 = client_at(fo_replica);
    let t = assert_grants_above(&mut r2, lost, "a new session after promotion");
    let victim = r2
        .query_one("SELECT id, plan_time FROM lease_sched.sys_cron_executions WHERE job_name = 'phase1_job' AND status = 'RUNNING' LIMIT 1", &[])
        .unwrap();
    let (victim_id, victim_plan): (Uuid, chrono::DateTime<chrono::Utc>) = (victim.get(0), victim.get(1));
    make_stale(&mut r2, victim_id);
    let stolen = claim(&mut r2, "phase1_job", victim_plan, "after-promotion");
    assert_eq!(stolen.outcome, "stole");
    assert!(stolen.fencing_token.unwrap() > t);
    let timeline: i64 = r2.query_one("SELECT timeline FROM lease_sched.token_floor", &[]).unwrap().get(0);
    assert!(timeline >= 2, "floored on the new timeline ({timeline})");
    eprintln!("promotion: replica saw tokens up to {seen_by_replica}, lost up to {lost}; after promotion {}", stolen.fencing_token.unwrap());
}
