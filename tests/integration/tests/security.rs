//! What a role with only the documented grants can do to others.
//!  - 4: a runner role cannot heartbeat or release another role's lock, knowing everything
//!    lock_info (and the refusal of lock_acquire) shows; the 0.1 bigint signatures are gone.
//!  - 6: a reader granted SELECT on the documented views reads the history but can obtain no
//!    live lease_token (nor lock_token) from anything it is allowed to read.
use lease_sched_integration::*;
use postgres::Client;

static DDL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A login role, dropped (with what it owns and was granted) when the guard goes.
struct Role(String);

impl Role {
    fn new(prefix: &str, grants: &str) -> Role {
        let name = unique(prefix);
        // GRANTs on one schema from parallel tests race on its catalog row.
        let _serial = DDL.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = connect();
        c.batch_execute(&format!("CREATE ROLE {name} LOGIN; {}", grants.replace("{role}", &name))).unwrap();
        Role(name)
    }
    fn connect(&self) -> Client {
        connect_as(&self.0)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _serial = DDL.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut c) = Client::connect(&dsn(), postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP OWNED BY {0}; DROP ROLE IF EXISTS {0}", self.0));
        }
    }
}

/// The grants docs/api.md ("Privileges") gives a runner role.
const RUNNER_GRANTS: &str = "GRANT USAGE ON SCHEMA lease_sched TO {role};
                             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA lease_sched TO {role};";

/// The grants docs/api.md gives a role that reads the history.
const READER_GRANTS: &str = "GRANT USAGE ON SCHEMA lease_sched TO {role};
                             GRANT SELECT ON lease_sched.executions, lease_sched.active_leases, lease_sched.job_summary TO {role};";

#[test]
fn a_runner_cannot_heartbeat_or_release_another_runners_lock() {
    let (ra, rb) = (Role::new("runner_a", RUNNER_GRANTS), Role::new("runner_b", RUNNER_GRANTS));
    let (mut a, mut b) = (ra.connect(), rb.connect());
    let name = unique("leader");
    let r = a.query_one("SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, 'node-a', '60 s')", &[&name]).unwrap();
    assert!(r.get::<_, bool>(0));
    let (token, fencing): (uuid::Uuid, i64) = (r.get(1), r.get(2));

    // Everything b can learn about the lock.
    let info = b.query_one("SELECT to_jsonb(i)::text FROM lease_sched.lock_info($1) i", &[&name]).unwrap();
    let info: String = info.get(0);
    assert!(info.contains(&fencing.to_string()) && info.contains("node-a"), "lock_info shows holder and fencing token: {info}");
    assert!(!info.contains(&token.to_string()), "lock_info never shows the secret: {info}");
    let refusal = b.query_one("SELECT to_jsonb(l)::text FROM lease_sched.lock_acquire($1, 'node-b', '60 s') l", &[&name]).unwrap();
    let refusal: String = refusal.get(0);
    assert!(refusal.contains("\"acquired\": false") && !refusal.contains(&token.to_string()), "{refusal}");

    // The 0.1 way: the public fencing token as proof. Those signatures no longer exist.
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
    let taken: bool = b.query_one("SELECT acquired FROM lease_sched.lock_acquire($1, 'node-b')", &[&name]).unwrap().get(0);
    assert!(!taken);
    let rel: bool = a.query_one("SELECT lease_sched.lock_release($1, $2)", &[&name, &token]).unwrap().get(0);
    assert!(rel);
}

#[test]
fn a_reader_reads_the_history_but_no_live_secret() {
    let reader = Role::new("reader", READER_GRANTS);
    let mut c = connect();
    let job = unique("secret");
    let live = claim(&mut c, &job, plan(), "r1");
    let done = claim(&mut c, &job, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, done.id(), done.token()));
    let lock = unique("secretlock");
    let lock_token: uuid::Uuid =
        c.query_one("SELECT lock_token FROM lease_sched.lock_acquire($1, 'h', '60 s')", &[&lock]).unwrap().get(0);

    let mut r = reader.connect();
    // The history, without the secret.
    let n: i64 = r.query_one("SELECT count(*) FROM lease_sched.executions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert_eq!(n, 2, "the reader sees both runs");
    let running: i64 =
        r.query_one("SELECT count(*) FROM lease_sched.active_leases WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert_eq!(running, 1);
    r.query_one("SELECT count(*) FROM lease_sched.job_summary WHERE job_name = $1", &[&job]).unwrap();
    let e = r.batch_execute("SELECT lease_token FROM lease_sched.executions").expect_err("no such column");
    assert_eq!(sqlstate(&e), "42703", "{e}");
    for table in ["sys_cron_executions", "locks", "runtimes"] {
        let sql = format!("SELECT * FROM lease_sched.{table} LIMIT 1");
        let e = r.batch_execute(&sql).expect_err(&sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
    }

    // Everything in the schema the reader may read, every column as text: no live secret.
    let readable: Vec<String> = r
        .query(
            "SELECT format('%I.%I', n.nspname, k.relname) FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
              WHERE n.nspname = 'lease_sched' AND k.relkind IN ('r', 'v', 'm', 'p', 'f')
                AND has_table_privilege(k.oid, 'SELECT')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(readable.iter().any(|t| t == "lease_sched.executions"), "{readable:?}");
    for rel in &readable {
        let dump: Option<String> =
            r.query_one(&format!("SELECT string_agg(to_jsonb(t)::text, ',') FROM {rel} t"), &[]).unwrap().get(0);
        let dump = dump.unwrap_or_default();
        for secret in [live.token(), done.token(), lock_token] {
            assert!(!dump.contains(&secret.to_string()), "{rel} shows a secret token to a reader");
        }
    }
    // Nor may the reader call the API that would use one.
    let e = r
        .batch_execute(&format!("SELECT lease_sched.lease_heartbeat('{}', '{}')", live.id(), live.token()))
        .expect_err("a reader has no EXECUTE");
    assert_eq!(sqlstate(&e), "42501");
    assert!(heartbeat(&mut c, live.id(), live.token()), "the holder's lease is untouched");
    let released: bool = c.query_one("SELECT lease_sched.lock_release($1, $2)", &[&lock, &lock_token]).unwrap().get(0);
    assert!(released);
}
