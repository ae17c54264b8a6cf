//! What only the portable edition has (docs/portable.md): an install script run by the
//! database owner, plain tables and sequences that pg_dump carries like any other, and the
//! sweep scheduled through pg_cron. Each test runs against the portable edition only
//! (scripts/portable_test.sh) and skips itself on the native one.
//!
//! Each test installs the script (`scripts/portable.py`, as `make portable` builds it) into
//! databases of its own, as the role that owns lease_sched in the test database.
use std::process::Command;

use lease_sched_integration::fixtures::stop_now;
use lease_sched_integration::*;
use postgres::{Client, NoTls};

/// The role that owns lease_sched in the test database (scripts/portable_test.sh: a
/// non-superuser with CREATEDB).
fn owner(c: &mut Client) -> String {
    c.query_one("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'lease_sched'", &[]).unwrap().get(0)
}

fn dsn_for(db: &str, user: &str) -> String {
    let cfg: postgres::Config = dsn().parse().unwrap();
    let port = cfg.get_ports()[0];
    format!("host=127.0.0.1 port={port} dbname={db} user={user}")
}

fn host_port() -> (String, String) {
    let cfg: postgres::Config = dsn().parse().unwrap();
    ("127.0.0.1".into(), cfg.get_ports()[0].to_string())
}

/// The install script of this checkout, built as `make portable` builds it.
fn script() -> String {
    let out = std::env::temp_dir().join(format!("{}.sql", unique("lease_sched_portable")));
    let built = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/portable.py"))
        .arg(&out)
        .output()
        .expect("python3 scripts/portable.py");
    assert!(built.status.success(), "portable.py: {}", String::from_utf8_lossy(&built.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    text
}

/// A new database owned by `owner`, with the portable edition installed by `owner`.
fn installed_database(c: &mut Client, owner: &str, prefix: &str) -> String {
    let db = unique(prefix);
    c.batch_execute(&format!("CREATE DATABASE {db} OWNER {owner}")).unwrap();
    let mut o = Client::connect(&dsn_for(&db, owner), NoTls).unwrap();
    o.batch_execute(&script()).unwrap();
    db
}

fn claim_token(c: &mut Client, job: &str) -> i64 {
    c.query_one("SELECT fencing_token FROM lease_sched.lease_try_claim($1, now(), 'r')", &[&job]).unwrap().get(0)
}

fn lock_token(c: &mut Client, name: &str) -> i64 {
    c.query_one("SELECT fencing_token FROM lease_sched.lock_acquire($1, 'h', '1 hour')", &[&name]).unwrap().get(0)
}

struct Databases<'a>(&'a mut Client, Vec<String>);

impl Drop for Databases<'_> {
    fn drop(&mut self) {
        for db in &self.1 {
            let _ = self.0.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
        }
    }
}

/// A dump restored on the same server (same start, same timeline) must not hand out tokens
/// the original granted after the dump: the dump carries the floor records of the original
/// as they were, so without more the restored sequence would go on from the dump's value.
#[test]
fn a_dump_restored_on_the_same_server_grants_above_every_token_granted_after_the_dump() {
    if portable_only("a_dump_restored_on_the_same_server_grants_above_every_token_granted_after_the_dump", "the native edition's floor records are extension members pg_dump leaves out (tests/integration/tests/tokens.rs)") {
        return;
    }
    let mut admin = connect();
    let owner = owner(&mut admin);
    let original = installed_database(&mut admin, &owner, "dumped");
    let restored = unique("restored");
    let dbs = Databases(&mut admin, vec![original.clone(), restored.clone()]);
    let mut o = Client::connect(&dsn_for(&original, &owner), NoTls).unwrap();
    claim_token(&mut o, "before_dump");
    lock_token(&mut o, "before_dump");

    let (host, port) = host_port();
    let file = std::env::temp_dir().join(format!("{original}.dump"));
    let dump = Command::new(format!("{}/pg_dump", pgbin()))
        .args(["-h", &host, "-p", &port, "-U", &owner, "-Fc", "-f"])
        .arg(&file)
        .arg(&original)
        .output()
        .expect("pg_dump");
    assert!(dump.status.success(), "pg_dump as the owner: {}", String::from_utf8_lossy(&dump.stderr));

    // The original goes on granting after the dump.
    let mut highest = 0;
    for i in 0..5 {
        highest = highest.max(claim_token(&mut o, &format!("after_dump_{i}")));
        highest = highest.max(lock_token(&mut o, &format!("after_dump_{i}")));
    }

    dbs.0.batch_execute(&format!("CREATE DATABASE {restored} OWNER {owner}")).unwrap();
    let restore = Command::new(format!("{}/pg_restore", pgbin()))
        .args(["-h", &host, "-p", &port, "-U", &owner, "--exit-on-error", "-d", &restored])
        .arg(&file)
        .output()
        .expect("pg_restore");
    let _ = std::fs::remove_file(&file);
    assert!(restore.status.success(), "pg_restore as the owner: {}", String::from_utf8_lossy(&restore.stderr));

    let mut r = Client::connect(&dsn_for(&restored, &owner), NoTls).unwrap();
    let before: i64 =
        r.query_one("SELECT count(*) FROM lease_sched.executions WHERE job_name = 'before_dump'", &[]).unwrap().get(0);
    assert_eq!(before, 1, "the history is restored");
    let claimed = claim_token(&mut r, "after_restore");
    assert!(
        claimed > highest,
        "a claim in the restored copy got token {claimed}, not above {highest} granted after the dump"
    );
    let locked = lock_token(&mut r, "after_restore");
    assert!(locked > claimed);
    // The lock held at the dump is still held.
    let held: bool = r.query_one("SELECT NOT expired FROM lease_sched.lock_info('before_dump')", &[]).unwrap().get(0);
    assert!(held);
}

/// CREATE DATABASE ... TEMPLATE copies the sequences as they are: the copy floors before its
/// first grant, so the two databases never hand out the same tokens from there.
#[test]
fn a_template_copy_floors_before_its_first_grant() {
    if portable_only("a_template_copy_floors_before_its_first_grant", "the install script's plain sequences") {
        return;
    }
    let mut admin = connect();
    let owner = owner(&mut admin);
    let original = installed_database(&mut admin, &owner, "template");
    let copy = unique("copy");
    let dbs = Databases(&mut admin, vec![original.clone(), copy.clone()]);
    {
        let mut o = Client::connect(&dsn_for(&original, &owner), NoTls).unwrap();
        claim_token(&mut o, "before_copy");
    }
    // (CREATE DATABASE waits for the template's last session to go)
    let mut created = false;
    for _ in 0..50 {
        if dbs.0.batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {original} OWNER {owner}")).is_ok() {
            created = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(created, "CREATE DATABASE {copy} TEMPLATE {original}");
    let mut o = Client::connect(&dsn_for(&original, &owner), NoTls).unwrap();
    let in_original = claim_token(&mut o, "after_copy");
    let mut c = Client::connect(&dsn_for(&copy, &owner), NoTls).unwrap();
    let in_copy = claim_token(&mut c, "after_copy");
    assert!(
        in_copy > in_original,
        "the copy granted {in_copy}, not above {in_original} the original granted after the copy"
    );
}

/// The owner (not a superuser) schedules the sweep with pg_cron in the database pg_cron is
/// installed in; in any other database it is told the cron.schedule_in_database call to run
/// there, and that call works. (Everything pg_cron is given here is rolled back: no sweep
/// is ever scheduled for the other tests' database.)
#[test]
fn the_owner_schedules_the_sweep_with_pg_cron_and_is_told_how_from_another_database() {
    if portable_only(
        "the_owner_schedules_the_sweep_with_pg_cron_and_is_told_how_from_another_database",
        "portable_schedule_sweep is the portable edition's (the native edition sweeps with its background worker)",
    ) || skip_without_pg_cron("the_owner_schedules_the_sweep_with_pg_cron_and_is_told_how_from_another_database")
    {
        return;
    }
    let mut admin = connect();
    let owner = owner(&mut admin);
    let here: String = admin.query_one("SELECT current_database()::text", &[]).unwrap().get(0);
    // What docs/portable.md asks the service's admin to grant the owner.
    admin.batch_execute(&format!("GRANT USAGE ON SCHEMA cron TO {owner}")).unwrap();

    let mut o = Client::connect(&dsn_for(&here, &owner), NoTls).unwrap();
    let mut t = o.transaction().unwrap();
    let id: i64 = t.query_one("SELECT lease_sched.portable_schedule_sweep('10 seconds')", &[]).unwrap().get(0);
    let again: i64 = t.query_one("SELECT lease_sched.portable_schedule_sweep('1 minute')", &[]).unwrap().get(0);
    assert_eq!(id, again, "a second call replaces the schedule");
    let row = t
        .query_one("SELECT command, database, username, count(*) OVER () FROM cron.job WHERE jobid = $1", &[&id])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "SELECT lease_sched.sweep()");
    assert_eq!(row.get::<_, String>(1), here);
    assert_eq!(row.get::<_, String>(2), owner, "pg_cron runs the sweep as the owner");
    assert_eq!(row.get::<_, i64>(3), 1);
    assert!(t.query_one("SELECT lease_sched.portable_unschedule_sweep()", &[]).unwrap().get::<_, bool>(0));
    assert!(!t.query_one("SELECT lease_sched.portable_unschedule_sweep()", &[]).unwrap().get::<_, bool>(0));
    t.rollback().unwrap();

    // Another database, where pg_cron is not installed.
    let other = installed_database(&mut admin, &owner, "elsewhere");
    let dbs = Databases(&mut admin, vec![other.clone()]);
    let mut e = Client::connect(&dsn_for(&other, &owner), NoTls).unwrap();
    // (every minute: the schedule every pg_cron version takes)
    let err = e.query_one("SELECT lease_sched.portable_schedule_sweep('1 minute')", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "55000");
    let db_err = err.as_db_error().unwrap();
    let hint = db_err.hint().unwrap_or_default().to_string();
    let call = format!(
        "SELECT cron.schedule_in_database('lease_sched sweep: {other}', '* * * * *', 'SELECT lease_sched.sweep()', '{other}', '{owner}');"
    );
    assert!(hint.contains(&call), "the hint names the call to run where pg_cron is: {hint}");
    // pg_cron lets a superuser (or a role granted EXECUTE on it) schedule into another
    // database; the job runs as the owner.
    drop(o);
    let mut s = connect();
    let mut t = s.transaction().unwrap();
    t.batch_execute(&call).unwrap();
    let n: i64 = t
        .query_one("SELECT count(*) FROM cron.job WHERE database = $1 AND username = $2 AND command = 'SELECT lease_sched.sweep()'", &[&other, &owner])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    t.rollback().unwrap();
    drop(s);
    drop(e);
    drop(dbs);
}

/// The settings are placeholders here, which take any value; one the native edition would
/// refuse (below its minimum, beyond an int4 in its unit, not a duration) is ignored with a
/// WARNING and the default applies, as the native edition ignores it in postgresql.conf.
/// A FAILED finish never fails for a setting.
#[test]
fn settings_the_native_edition_would_refuse_are_ignored_and_the_default_applies() {
    if portable_only(
        "settings_the_native_edition_would_refuse_are_ignored_and_the_default_applies",
        "the native library refuses these values when they are set (22023)",
    ) {
        return;
    }
    let mut c = connect();
    for (setting, value) in [
        ("retry_backoff_base", "-1s"),
        ("retry_backoff_base", "3000000000"),
        ("retry_backoff_max", "-5min"),
        ("retry_backoff_base", "soon"),
        ("retry_backoff_base", "1000000000000 days"),
    ] {
        c.batch_execute(&format!("SET lease_sched.{setting} = '{value}'")).unwrap();
        let job = unique("bad_setting");
        let l = claim(&mut c, &job, plan(), "r");
        c.execute("SELECT lease_sched.lease_finish($1, $2, 'FAILED')", &[&l.id(), &l.token()])
            .unwrap_or_else(|e| panic!("lease_sched.{setting} = '{value}': the FAILED finish failed: {e}"));
        let delay: f64 = c
            .query_one(
                "SELECT extract(epoch FROM next_retry_at - finished_at)::float8 FROM lease_sched.executions WHERE id = $1",
                &[&l.id()],
            )
            .unwrap()
            .get(0);
        assert!(
            (delay - 10.0).abs() < 0.001,
            "lease_sched.{setting} = '{value}': the default backoff (10 s) applies, not {delay} s"
        );
        c.batch_execute(&format!("RESET lease_sched.{setting}")).unwrap();
    }
}

/// The portable-to-native snippet of docs/portable.md ("Moving to native and back"), run as
/// written, in a database of its own on the native test cluster: history, the held lock and
/// its token carry over, tokens go on increasing, and the application's require_lock
/// trigger still refuses unfenced writes (DROP SCHEMA ... CASCADE drops it with the
/// functions it calls; the snippet re-creates it).
#[test]
fn moving_a_portable_install_to_native_keeps_history_tokens_and_fence_triggers() {
    if portable() {
        skip(
            "moving_a_portable_install_to_native_keeps_history_tokens_and_fence_triggers",
            "needs the native library: runs against the native test cluster",
        );
        return;
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/portable.md")).unwrap();
    let marker = "<!-- docs-test: skip (portable edition only: moves a portable install to native) -->";
    let after = &docs[docs.find(marker).expect("the snippet's marker in docs/portable.md") + marker.len()..];
    let start = after.find("```sql\n").unwrap() + "```sql\n".len();
    let snippet = &after[start..start + after[start..].find("```").unwrap()];

    let mut admin = connect();
    let db = unique("moved");
    admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let dbs = Databases(&mut admin, vec![db.clone()]);
    let mut c = Client::connect(&dsn_for(&db, "postgres"), NoTls).unwrap();
    c.batch_execute(&script()).unwrap();
    c.batch_execute(
        "CREATE TABLE public.app_writes (v int);
         CREATE TRIGGER leader_only BEFORE INSERT ON public.app_writes
             FOR EACH ROW EXECUTE FUNCTION lease_sched.require_lock('app-writer');",
    )
    .unwrap();
    let lock = c
        .query_one(
            "SELECT lock_token, fencing_token FROM lease_sched.lock_acquire('app-writer', 'node', '1 hour')",
            &[],
        )
        .unwrap();
    let (lock_token, lock_fencing): (uuid::Uuid, i64) = (lock.get(0), lock.get(1));
    let before = claim_token(&mut c, "moved_job");

    c.batch_execute(snippet).unwrap_or_else(|e| panic!("the snippet of docs/portable.md failed: {e:?}"));

    let native: i64 =
        c.query_one("SELECT count(*) FROM pg_extension WHERE extname = 'lease_sched'", &[]).unwrap().get(0);
    assert_eq!(native, 1, "the native extension is installed");
    let history: i64 =
        c.query_one("SELECT count(*) FROM lease_sched.executions WHERE job_name = 'moved_job'", &[]).unwrap().get(0);
    assert_eq!(history, 1);
    let err = c.execute("INSERT INTO public.app_writes VALUES (1)", &[]).unwrap_err();
    assert_eq!(sqlstate(&err), "LS001", "an unfenced write is still refused after the move: {err:?}");
    let mut t = c.transaction().unwrap();
    t.execute("SELECT lease_sched.lock_fence('app-writer', $1, $2)", &[&lock_fencing, &lock_token]).unwrap();
    t.execute("INSERT INTO public.app_writes VALUES (2)", &[]).unwrap();
    t.commit().unwrap();
    let after = claim_token(&mut c, "moved_job_after");
    assert!(after > before, "tokens go on increasing: {after} after {before}");
    drop(c);
    drop(dbs);
}

/// A read replica answers what readers ask, as the native edition's does: the views (the
/// runtimes view included, although it reads the UNLOGGED touch buffer, which a standby
/// cannot open), stats(), sweeper_status() and runtime_pending(). A cluster of its own and
/// a streaming replica of it.
#[test]
fn a_read_replica_answers_the_views_and_the_read_only_calls() {
    if portable_only(
        "a_read_replica_answers_the_views_and_the_read_only_calls",
        "the native edition's runtimes is a table; tests/integration/tests/failover.rs runs its replica",
    ) {
        return;
    }
    let [primary_port, replica_port] = free_ports::<2>();
    let base = format!("/tmp/lease_sched_portable_replica_{primary_port}");
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            for dir in ["primary", "replica"] {
                stop_now(&format!("{}/{dir}/data", self.0));
            }
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _stop = Stop(base.clone());
    let cluster_sh = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/cluster.sh");
    let status = Command::new(cluster_sh)
        .env("PGBIN", pgbin())
        .env("LEASE_CLUSTER_PRELOAD", "")
        .args([
            "start",
            &format!("{base}/primary"),
            &primary_port.to_string(),
            "wal_level = replica",
            "log_min_messages = warning",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut p = connect_retrying(&format!("host=127.0.0.1 port={primary_port} dbname=lease_sched user=postgres"));
    p.batch_execute(&script()).unwrap();
    let rt: uuid::Uuid = p.query_one("SELECT lease_sched.runtime_register('replica-rt')", &[]).unwrap().get(0);
    p.query_one("SELECT lease_sched.runtime_touch($1)", &[&rt]).unwrap();
    claim_token(&mut p, "replica_job");
    p.batch_execute("SELECT * FROM lease_sched.sweep()").unwrap();

    let replica = format!("{base}/replica");
    std::fs::create_dir_all(&replica).unwrap();
    Command::new("chown").args(["postgres", &replica]).status().unwrap();
    let backup = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            &format!("{}/pg_basebackup", pgbin()),
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
        ])
        .args(["-U", "postgres", "-D", &format!("{replica}/data"), "-R", "-X", "stream", "-c", "fast"])
        .output()
        .unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    let conf = format!("{replica}/data/postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&conf).unwrap();
    auto.push_str(&format!("port = {replica_port}\nunix_socket_directories = '{replica}'\n"));
    std::fs::write(&conf, auto).unwrap();
    let started = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{}/pg_ctl", pgbin()), "-D", &format!("{replica}/data")])
        .args(["-l", &format!("{replica}/server.log"), "-w", "start"])
        .output()
        .unwrap();
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    let mut r = connect_retrying(&format!("host=127.0.0.1 port={replica_port} dbname=lease_sched user=postgres"));
    assert!(r.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get::<_, bool>(0));
    for sql in [
        "SELECT count(last_seen_at) FROM lease_sched.runtimes",
        "SELECT count(*) FROM lease_sched.executions",
        "SELECT count(*) FROM lease_sched.active_leases",
        "SELECT count(*) FROM lease_sched.job_summary",
        "SELECT count(*) FROM lease_sched.job_definitions",
        "SELECT count(*) FROM lease_sched.job_health",
        "SELECT count(*) FROM lease_sched.stats()",
        "SELECT count(*) FROM lease_sched.sweeper_status()",
        "SELECT lease_sched.runtime_pending()",
    ] {
        r.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql} on the replica: {e:?}"));
    }
    let (status, seen): (String, bool) = {
        let row = r
            .query_one("SELECT status, last_seen_at IS NOT NULL FROM lease_sched.runtimes WHERE id = $1", &[&rt])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((status.as_str(), seen), ("online", true));
}
