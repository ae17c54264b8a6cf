//! Every database that has the extension is swept (docs/operations.md, "The background
//! workers"): on a cluster that scripts/test.sh starts with `lease_sched.database` unset and
//! `lease_sched.max_databases = 3` (LEASE_SCHED_EVERYDB_DSN; the tests skip themselves
//! without it), the launcher finds each database with lease_sched and keeps one sweeper
//! there; a database it does not sweep says so (a WARNING at CREATE EXTENSION,
//! `sweeper_status()`, `stats()`, `job_health.swept`). On the main test cluster, which sets
//! `lease_sched.database`, another database with the extension says so too.
//!
//! The tests here create and drop databases and count sweepers against the bound, so they
//! run one at a time (`serial()`).
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lease_sched_integration::*;
use postgres::{Client, NoTls};

/// How long the launcher may take to notice a database (it looks every second).
const NOTICE: Duration = Duration::from_secs(30);

fn base_dsn(test: &str) -> Option<String> {
    match std::env::var("LEASE_SCHED_EVERYDB_DSN") {
        Ok(dsn) => Some(dsn),
        Err(_) => {
            skip(&format!("every_database::{test}"), "LEASE_SCHED_EVERYDB_DSN is not set (scripts/test.sh sets it)");
            None
        }
    }
}

fn dsn_for(base: &str, db: &str) -> String {
    base.split_whitespace()
        .map(|kv| if kv.starts_with("dbname=") { format!("dbname={db}") } else { kv.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A connection whose NOTICE/WARNING messages are collected.
fn connect_noting(dsn: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let notes = Arc::new(Mutex::new(Vec::new()));
    let sink = notes.clone();
    let mut config: postgres::Config = dsn.parse().unwrap();
    config.notice_callback(move |n| {
        sink.lock().unwrap().push(format!("{}: {} ({})", n.severity(), n.message(), n.hint().unwrap_or("")))
    });
    (config.connect(NoTls).expect("connect"), notes)
}

fn create_database(admin: &mut Client, name: &str) {
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
}

/// Drop a database whatever is connected to it (its sweeper included).
fn drop_database(admin: &mut Client, name: &str) {
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
}

fn swept(c: &mut Client) -> (bool, String) {
    let r = c.query_one("SELECT swept, state FROM lease_sched.sweeper_status()", &[]).unwrap();
    (r.get(0), r.get(1))
}

fn wait_swept(c: &mut Client, what: &str) {
    assert!(wait_until(NOTICE, || swept(c).0), "{what} is swept: {:?}", swept(c));
}

fn sweepers_in(admin: &mut Client, db: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper' AND datname = $1",
            &[&db],
        )
        .unwrap()
        .get(0)
}

/// The sweep really runs there: a lease that goes stale and may not be stolen is failed.
fn sweeps_here(c: &mut Client, what: &str) {
    let lease = abandoned_lease(c);
    assert!(wait_until(NOTICE, || status_of(c, lease.id()) == "FAILED"), "{what}: the sweep fails an abandoned lease");
}

/// A database with the extension, swept; returns a connection to it.
fn swept_database(base: &str, admin: &mut Client, name: &str) -> Client {
    create_database(admin, name);
    let mut c = connect_retrying(&dsn_for(base, name));
    c.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    wait_swept(&mut c, name);
    c
}

#[test]
fn three_databases_each_get_their_own_sweeper() {
    let Some(base) = base_dsn("three_databases_each_get_their_own_sweeper") else { return };
    let _g = serial();
    let mut admin = connect_retrying(&dsn_for(&base, "postgres"));
    let names: Vec<String> = (0..3).map(|_| unique("everydb")).collect();
    let plain = unique("plain");
    create_database(&mut admin, &plain);
    for name in &names {
        let mut c = swept_database(&base, &mut admin, name);
        sweeps_here(&mut c, name);
        let (swept_now, state) = swept(&mut c);
        assert!(swept_now && state == "sweeping", "{name}: {state}");
        assert_eq!(stat(&mut c, "swept"), 1, "{name}: stats() says swept");
    }
    for name in &names {
        assert_eq!(sweepers_in(&mut admin, name), 1, "exactly one sweeper in {name}");
    }
    // A database without the extension keeps no sweeper (the one that looked has left).
    assert!(
        wait_until(NOTICE, || sweepers_in(&mut admin, &plain) == 0),
        "no sweeper stays in a database without lease_sched"
    );
    let mut c = connect_retrying(&dsn_for(&base, &names[0]));
    assert!(stat(&mut c, "databases_swept") >= 3);
    drop(c);
    for name in names.iter().chain(std::iter::once(&plain)) {
        drop_database(&mut admin, name);
    }
}

#[test]
fn over_the_bound_a_database_says_so_and_is_swept_once_a_place_frees_up() {
    let Some(base) = base_dsn("over_the_bound_a_database_says_so_and_is_swept_once_a_place_frees_up") else { return };
    let _g = serial();
    let mut admin = connect_retrying(&dsn_for(&base, "postgres"));
    let max: i64 = admin.query_one("SELECT current_setting('lease_sched.max_databases')::int8", &[]).unwrap().get(0);
    assert_eq!(max, 3, "scripts/test.sh starts this cluster with max_databases = 3");
    let names: Vec<String> = (0..3).map(|_| unique("bound")).collect();
    let mut swept_dbs: Vec<Client> = names.iter().map(|n| swept_database(&base, &mut admin, n)).collect();
    let over_before = stat(&mut swept_dbs[0], "databases_over_limit");

    let fourth = unique("bound4");
    create_database(&mut admin, &fourth);
    let (mut c, notes) = connect_noting(&dsn_for(&base, &fourth));
    c.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let warned = notes.lock().unwrap().clone();
    assert!(
        warned.iter().any(|n| n.starts_with("WARNING") && n.contains("lease_sched.max_databases")),
        "CREATE EXTENSION over the bound warns: {warned:?}"
    );
    let (s, state) = swept(&mut c);
    assert!(!s && state == "over max_databases", "{state}");
    assert_eq!(stat(&mut c, "swept"), 0);
    c.batch_execute("SELECT lease_sched.job_define('bound_job', every => '1 minute')").unwrap();
    let health_swept: bool = c.query_one("SELECT swept FROM lease_sched.job_health", &[]).unwrap().get(0);
    assert!(!health_swept, "job_health shows the database is not swept");
    // The launcher's sweeper looked, found the bound reached, and left; it is counted.
    assert!(
        wait_until(NOTICE, || stat(&mut c, "databases_over_limit") > over_before),
        "databases_over_limit counts the database left unswept"
    );
    assert_eq!(sweepers_in(&mut admin, &fourth), 0);

    // DROP EXTENSION in a swept database: its sweeper leaves, and the fourth gets the place.
    swept_dbs[0].batch_execute("DROP EXTENSION lease_sched").unwrap();
    assert!(wait_until(NOTICE, || sweepers_in(&mut admin, &names[0]) == 0), "the sweeper leaves after DROP EXTENSION");
    wait_swept(&mut c, &fourth);
    sweeps_here(&mut c, &fourth);
    let health_swept: bool = c.query_one("SELECT swept FROM lease_sched.job_health", &[]).unwrap().get(0);
    assert!(health_swept);

    // CREATE EXTENSION again in the first: over the bound again, and it says so.
    let (mut again, notes) = connect_noting(&dsn_for(&base, &names[0]));
    again.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    assert!(notes.lock().unwrap().iter().any(|n| n.contains("lease_sched.max_databases")));
    drop((again, c));
    swept_dbs.clear();
    for name in names.iter().chain(std::iter::once(&fourth)) {
        drop_database(&mut admin, name);
    }
}

#[test]
fn a_database_created_and_dropped_while_running_and_created_again() {
    let Some(base) = base_dsn("a_database_created_and_dropped_while_running_and_created_again") else { return };
    let _g = serial();
    let mut admin = connect_retrying(&dsn_for(&base, "postgres"));
    let name = unique("churn");
    for round in 0..2 {
        let mut c = swept_database(&base, &mut admin, &name);
        sweeps_here(&mut c, &format!("{name}, round {round}"));
        drop(c);
        drop_database(&mut admin, &name);
        assert!(
            wait_until(NOTICE, || sweepers_in(&mut admin, &name) == 0),
            "no sweeper is left for a dropped database"
        );
    }
    // The launcher is still the one it was, and did not crash.
    let launchers: i64 = admin
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'lease_sched launcher'", &[])
        .unwrap()
        .get(0);
    assert_eq!(launchers, 1);
}

#[test]
fn a_copy_made_with_create_database_template_is_swept() {
    let Some(base) = base_dsn("a_copy_made_with_create_database_template_is_swept") else { return };
    let _g = serial();
    let mut admin = connect_retrying(&dsn_for(&base, "postgres"));
    let (source, copy) = (unique("source"), unique("copy"));
    let c = swept_database(&base, &mut admin, &source);
    drop(c);
    // The sweeper is connected to the source: terminate it and copy while the launcher
    // leaves the database alone (docs/operations.md). Retried: a busy machine can be slow.
    let copied = wait_until(NOTICE, || {
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper' AND datname = $1",
                &[&source],
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        admin.batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {source}")).is_ok()
    });
    assert!(copied, "CREATE DATABASE ... TEMPLATE after terminating the sweeper");
    // Nobody ran CREATE EXTENSION in the copy: the launcher finds it by itself.
    let mut c = connect_retrying(&dsn_for(&base, &copy));
    wait_swept(&mut c, &copy);
    sweeps_here(&mut c, &copy);
    let mut s = connect_retrying(&dsn_for(&base, &source));
    wait_swept(&mut s, &source);
    drop((c, s));
    drop_database(&mut admin, &copy);
    drop_database(&mut admin, &source);
}

#[test]
fn drop_extension_while_swept_then_create_it_again() {
    let Some(base) = base_dsn("drop_extension_while_swept_then_create_it_again") else { return };
    let _g = serial();
    let mut admin = connect_retrying(&dsn_for(&base, "postgres"));
    let name = unique("dropext");
    let mut c = swept_database(&base, &mut admin, &name);
    let id = register_runtime(&mut c);
    assert!(touch(&mut c, id));
    c.batch_execute("DROP EXTENSION lease_sched").unwrap();
    assert!(wait_until(NOTICE, || sweepers_in(&mut admin, &name) == 0), "the sweeper leaves after DROP EXTENSION");
    c.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    wait_swept(&mut c, &name);
    sweeps_here(&mut c, &name);
    drop(c);
    drop_database(&mut admin, &name);
}

/// On the main test cluster `lease_sched.database` names the database `lease_sched`: the
/// extension anywhere else is not swept, and says so.
#[test]
fn with_lease_sched_database_set_another_database_says_it_is_not_swept() {
    let _g = serial();
    let mut main = connect();
    let only: String = main.query_one("SELECT current_setting('lease_sched.database')", &[]).unwrap().get(0);
    if only.is_empty() {
        skip(
            "every_database::with_lease_sched_database_set_another_database_says_it_is_not_swept",
            "lease_sched.database is not set",
        );
        return;
    }
    let name = unique("elsewhere");
    create_database(&mut main, &name);
    let (mut c, notes) = connect_noting(&dsn_for(&dsn(), &name));
    c.batch_execute("CREATE EXTENSION lease_sched").unwrap();
    let warned = notes.lock().unwrap().clone();
    assert!(
        warned.iter().any(|n| n.starts_with("WARNING") && n.contains("lease_sched.database") && n.contains(&name)),
        "CREATE EXTENSION warns: {warned:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (s, state) = swept(&mut c);
    assert!(!s && state == "not lease_sched.database", "{state}");
    assert_eq!(stat(&mut c, "swept"), 0);
    c.batch_execute("SELECT lease_sched.job_define('elsewhere_job', every => '1 minute')").unwrap();
    let health_swept: bool = c.query_one("SELECT swept FROM lease_sched.job_health", &[]).unwrap().get(0);
    assert!(!health_swept);
    assert_eq!(sweepers_in(&mut main, &name), 0);
    // The named database is swept.
    assert!(wait_until(NOTICE, || swept(&mut main).0), "{only} is swept");
    drop(c);
    drop_database(&mut main, &name);
}

fn sweeper_pid_in(admin: &mut Client, db: &str) -> Option<i32> {
    admin
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper' AND datname = $1",
            &[&db],
        )
        .unwrap()
        .map(|r| r.get(0))
}

fn launcher_pid(admin: &mut Client) -> Option<i32> {
    admin
        .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched launcher'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn a_restarted_launcher_adopts_every_sweeper_and_still_finds_new_databases() {
    let Some(base) = base_dsn("a_restarted_launcher_adopts_every_sweeper_and_still_finds_new_databases") else {
        return;
    };
    let _g = serial();
    let mut admin = connect_retrying(&dsn_for(&base, "postgres"));
    let names: Vec<String> = (0..2).map(|_| unique("adopt")).collect();
    let clients: Vec<Client> = names.iter().map(|n| swept_database(&base, &mut admin, n)).collect();
    let before: Vec<Option<i32>> = names.iter().map(|n| sweeper_pid_in(&mut admin, n)).collect();
    assert!(before.iter().all(Option::is_some));
    let launcher = launcher_pid(&mut admin).expect("a launcher");
    admin.execute("SELECT pg_terminate_backend($1)", &[&launcher]).unwrap();
    assert!(wait_until(NOTICE, || launcher_pid(&mut admin).is_some_and(|p| p != launcher)), "the launcher comes back");
    // The new launcher adopts the running sweepers: the same processes, never a second one.
    for _ in 0..15 {
        for (name, pid) in names.iter().zip(&before) {
            assert_eq!(sweepers_in(&mut admin, name), 1, "exactly one sweeper in {name}");
            assert_eq!(sweeper_pid_in(&mut admin, name), *pid, "the sweeper of {name} went on");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let third = unique("adopt3");
    let mut c = swept_database(&base, &mut admin, &third);
    sweeps_here(&mut c, &third);
    drop((c, clients));
    for name in names.iter().chain(std::iter::once(&third)) {
        drop_database(&mut admin, name);
    }
}
