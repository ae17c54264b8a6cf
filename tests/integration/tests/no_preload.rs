//! lease_sched without shared_preload_libraries (docs/operations.md, "Without preload"): a
//! second cluster that scripts/test.sh starts with lease_sched NOT preloaded (pg_cron only,
//! where there is one), named by LEASE_SCHED_NOPRELOAD_DSN; every test here skips itself
//! when that is unset. There is no worker and no shared touch buffer: touches are written
//! directly, and `lease_sched.sweep()`, called by hand or scheduled from pg_cron, does what
//! the worker does.
//!
//! The sweep is called directly (pg_cron ticks once a minute); that cron.schedule accepts it
//! is checked where pg_cron is there. LEASE_NOPRELOAD_CRON_WAIT=1 also waits (up to two
//! minutes) for pg_cron to run it and fail an abandoned lease.
use std::sync::Mutex;
use std::time::Duration;

use lease_sched_integration::*;
use postgres::Client;

static CREATED: Mutex<bool> = Mutex::new(false);

/// A connection to the cluster without preload, with the extension created (once), or
/// None (after a skip line) when scripts/test.sh did not start one.
fn no_preload(test: &str) -> Option<Client> {
    let Ok(dsn) = std::env::var("LEASE_SCHED_NOPRELOAD_DSN") else {
        skip(&format!("no_preload::{test}"), "LEASE_SCHED_NOPRELOAD_DSN is not set (scripts/test.sh sets it)");
        return None;
    };
    let mut c = connect_retrying(&dsn);
    let mut created = CREATED.lock().unwrap();
    if !*created {
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS lease_sched").unwrap();
        *created = true;
    }
    Some(c)
}

fn preloaded(c: &mut Client) -> String {
    c.query_one("SELECT current_setting('shared_preload_libraries')", &[]).unwrap().get(0)
}

#[test]
fn the_library_is_not_preloaded_and_no_worker_runs() {
    let Some(mut c) = no_preload("the_library_is_not_preloaded_and_no_worker_runs") else { return };
    assert!(!preloaded(&mut c).contains("lease_sched"), "this cluster must not preload lease_sched");
    // Any call loads the library into this backend only.
    let _ = claim(&mut c, &unique("load"), plan(), "r1");
    std::thread::sleep(Duration::from_millis(500));
    let workers: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'lease_sched%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(workers, 0, "no launcher or sweeper without preload");
    // The counters live in shared memory: callable, all zero.
    let nonzero: i64 = c.query_one("SELECT count(*) FROM lease_sched.stats() WHERE value <> 0", &[]).unwrap().get(0);
    assert_eq!(nonzero, 0, "stats() without preload");
}

#[test]
fn claim_heartbeat_finish() {
    let Some(mut c) = no_preload("claim_heartbeat_finish") else { return };
    let job = unique("np_lease");
    let won = claim(&mut c, &job, plan(), "r1");
    assert_eq!(won.outcome, "won");
    let lost = claim(&mut c, &job, plan(), "r2");
    assert_ne!(lost.outcome, "won", "one winner per plan");
    assert!(heartbeat(&mut c, won.id(), won.token()));
    assert!(!heartbeat(&mut c, won.id(), uuid::Uuid::new_v4()), "a wrong token is refused");
    assert!(finish_ok(&mut c, won.id(), won.token()));
    assert_eq!(status_of(&mut c, won.id()), "SUCCESS");
    assert!(!finish_ok(&mut c, won.id(), won.token()), "finished once");
}

#[test]
fn touches_are_written_directly() {
    let Some(mut c) = no_preload("touches_are_written_directly") else { return };
    let id = register_runtime(&mut c);
    set_last_seen_ago(&mut c, id, 100);
    assert!(touch(&mut c, id));
    assert_eq!(pending(&mut c), 0, "nothing is buffered without preload");
    let (status, ago) = runtime_state(&mut c, id);
    assert_eq!(status, "online");
    assert!(ago < 10.0, "last_seen_at moved at the touch itself: {ago}s ago");

    let other = register_runtime(&mut c);
    set_last_seen_ago(&mut c, other, 100);
    let unknown = uuid::Uuid::new_v4();
    let missing: Vec<uuid::Uuid> =
        c.query_one("SELECT lease_sched.runtime_touch_batch($1)", &[&vec![other, unknown]]).unwrap().get(0);
    assert_eq!(missing, vec![unknown], "touch_batch returns the unknown ids");
    assert!(runtime_state(&mut c, other).1 < 10.0, "touch_batch wrote directly too");
    assert_eq!(pending(&mut c), 0);
    assert_eq!(flush(&mut c), 0, "runtime_flush has nothing to write");
}

#[test]
fn a_lock_is_acquired_heartbeaten_and_released() {
    let Some(mut c) = no_preload("a_lock_is_acquired_heartbeaten_and_released") else { return };
    let name = unique("np_lock");
    let acquire = |c: &mut Client, holder: &str| {
        let r = c
            .query_one(
                "SELECT acquired, lock_token, fencing_token, holder, expires_at > now()
                   FROM lease_sched.lock_acquire(lock_name => $1, holder => $2, ttl => '60 seconds')",
                &[&name, &holder],
            )
            .unwrap();
        (
            r.get::<_, bool>(0),
            r.get::<_, Option<uuid::Uuid>>(1),
            r.get::<_, Option<i64>>(2),
            r.get::<_, String>(3),
            r.get::<_, bool>(4),
        )
    };
    let (acquired, token, fence1, holder, live) = acquire(&mut c, "h1");
    assert!(acquired && live);
    assert_eq!(holder, "h1");
    let token = token.expect("the winner gets its lock_token");
    let (acquired, other_token, _, holder, _) = acquire(&mut c, "h2");
    assert!(!acquired, "held by h1");
    assert_eq!(holder, "h1", "the loser learns who holds it");
    assert_eq!(other_token, None, "and never the secret");
    let beat = |c: &mut Client, t: uuid::Uuid| -> bool {
        c.query_one("SELECT lease_sched.lock_heartbeat(lock_name => $1, lock_token => $2)", &[&name, &t])
            .unwrap()
            .get(0)
    };
    let release = |c: &mut Client, t: uuid::Uuid| -> bool {
        c.query_one("SELECT lease_sched.lock_release(lock_name => $1, lock_token => $2)", &[&name, &t]).unwrap().get(0)
    };
    assert!(beat(&mut c, token));
    assert!(!beat(&mut c, uuid::Uuid::new_v4()), "a wrong lock_token is refused");
    assert!(!release(&mut c, uuid::Uuid::new_v4()));
    assert!(release(&mut c, token));
    assert!(!beat(&mut c, token), "released");
    let (acquired, _, fence2, holder, _) = acquire(&mut c, "h2");
    assert!(acquired);
    assert_eq!(holder, "h2");
    assert!(fence2.unwrap() > fence1.unwrap(), "fencing tokens rise");
}

#[test]
fn sweep_by_hand_fails_abandoned_leases_and_marks_silent_runtimes_offline() {
    let Some(mut c) = no_preload("sweep_by_hand_fails_abandoned_leases_and_marks_silent_runtimes_offline") else {
        return;
    };
    let lease = abandoned_lease(&mut c);
    let silent = register_runtime(&mut c);
    set_last_seen_ago(&mut c, silent, 3600);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status_of(&mut c, lease.id()), "RUNNING", "no worker sweeps this cluster");
    let r = c.query_one("SELECT leases_failed, runtimes_offline FROM lease_sched.sweep()", &[]).unwrap();
    assert!(r.get::<_, i64>(0) >= 1, "the sweep failed the abandoned lease");
    assert!(r.get::<_, i64>(1) >= 1, "the sweep marked the silent runtime offline");
    assert_eq!(status_of(&mut c, lease.id()), "FAILED");
    assert_eq!(runtime_state(&mut c, silent).0, "offline");
}

#[test]
fn pg_cron_accepts_the_sweep() {
    let test = "no_preload::pg_cron_accepts_the_sweep";
    let Some(mut c) = no_preload("pg_cron_accepts_the_sweep") else { return };
    if !preloaded(&mut c).contains("pg_cron") {
        skip(test, &format!("PostgreSQL {} here has no pg_cron; sweep() by hand is tested above", pg_major()));
        return;
    }
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron").unwrap();
    let name = unique("lease_sched_sweep");
    let job: i64 = c
        .query_one("SELECT cron.schedule($1, '* * * * *', 'SELECT * FROM lease_sched.sweep()')", &[&name])
        .unwrap()
        .get(0);
    let (command, active): (String, bool) = c
        .query_one("SELECT command, active FROM cron.job WHERE jobid = $1", &[&job])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let outcome = || {
        assert_eq!(command, "SELECT * FROM lease_sched.sweep()");
        assert!(active);
        if std::env::var("LEASE_NOPRELOAD_CRON_WAIT").as_deref() != Ok("1") {
            return;
        }
        let lease = abandoned_lease(&mut c);
        let ran = wait_until(Duration::from_secs(130), || {
            c.query_one(
                "SELECT count(*) FROM cron.job_run_details WHERE jobid = $1 AND status = 'succeeded' AND start_time > now() - interval '3 minutes'",
                &[&job],
            )
            .unwrap()
            .get::<_, i64>(0)
                >= 1
                && status_of(&mut c, lease.id()) == "FAILED"
        });
        assert!(ran, "pg_cron ran the sweep and it failed the abandoned lease");
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(outcome));
    c.query_one("SELECT cron.unschedule($1::bigint)", &[&job]).unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// CREATE DATABASE ... TEMPLATE copies every sequence as it is, the records of the last
/// token floor included, on the same server and timeline. (Where the worker runs, its
/// sweeper keeps every database with the extension open, and PostgreSQL copies no database
/// in use; here nothing holds it.) The copy floors before its first grant: the two databases
/// never hand out the same tokens.
#[test]
fn a_template_copy_floors_before_its_first_grant() {
    let Some(mut c) = no_preload("a_template_copy_floors_before_its_first_grant") else { return };
    let dsn = std::env::var("LEASE_SCHED_NOPRELOAD_DSN").unwrap();
    let in_db = |db: &str| connect_retrying(&dsn.replace("dbname=lease_sched", &format!("dbname={db}")));
    let token = |c: &mut Client| claim(c, &unique("after_copy"), plan(), "r").fencing_token.unwrap();
    let (original, copy) = (unique("tpl"), unique("tpl_copy"));
    c.batch_execute(&format!("CREATE DATABASE {original}")).unwrap();
    {
        let mut o = in_db(&original);
        o.batch_execute("CREATE EXTENSION lease_sched").unwrap();
        claim(&mut o, &unique("before_copy"), plan(), "r");
    }
    // (the closed session may linger for a moment: CREATE DATABASE copies no database in use)
    let created = wait_until(Duration::from_secs(10), || {
        c.batch_execute(&format!("CREATE DATABASE {copy} TEMPLATE {original}")).is_ok()
    });
    assert!(created, "CREATE DATABASE {copy} TEMPLATE {original}");
    let in_original = token(&mut in_db(&original));
    let in_copy = token(&mut in_db(&copy));
    assert!(
        in_copy > in_original,
        "the copy granted {in_copy}, not above {in_original} the original granted after the copy"
    );
    for db in [&original, &copy] {
        c.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).unwrap();
    }
}

#[test]
fn a_steal_notifies_the_loser_from_the_stealing_backend() {
    use postgres::fallible_iterator::FallibleIterator;
    let Some(mut l) = no_preload("a_steal_notifies_the_loser_from_the_stealing_backend") else { return };
    let mut a = no_preload("a_steal_notifies_the_loser_from_the_stealing_backend").unwrap();
    let mut thief = no_preload("a_steal_notifies_the_loser_from_the_stealing_backend").unwrap();
    l.batch_execute("LISTEN lease_sched_lost").unwrap();
    let job = unique("np_notice");
    let held = claim(&mut a, &job, plan(), "r1");
    a.execute(
        "UPDATE lease_sched.sys_cron_executions SET stale_after = now() - interval '1 second' WHERE id = $1",
        &[&held.id()],
    )
    .unwrap();
    let thief_pid: i32 = thief.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    assert_eq!(claim(&mut thief, &job, plan(), "thief").outcome, "stole");
    // No worker here: the stealing transaction sends the notice itself, at its commit.
    let payload = held.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut from = None;
    while from.is_none() && std::time::Instant::now() < deadline {
        let mut n = l.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        if let Some(note) = it.next().unwrap() {
            if note.payload() == payload {
                from = Some(note.process_id());
            }
        }
    }
    assert_eq!(from, Some(thief_pid), "notified by the stealing backend");
}
