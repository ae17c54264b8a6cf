//! Job definitions, misfire policies and job_health. Outages are simulated with
//! history rows in the past (claimed and finished plans days ago, as a runner that stopped
//! would leave them) or with `every => '1 second'` and a few seconds of waiting.
use std::time::Duration;

use chrono::{DateTime, Utc};
use lease_sched_integration::*;
use postgres::Client;

type Ts = DateTime<Utc>;

/// The start of today's (UTC) day slot, `days` days back.
fn day(c: &mut Client, days: i32) -> Ts {
    c.query_one(
        "SELECT date_bin('1 day', clock_timestamp(), timestamptz 'epoch') - make_interval(days => $1)",
        &[&days],
    )
    .unwrap()
    .get(0)
}

fn define(c: &mut Client, job: &str, every: &str, misfire: &str, grace: Option<&str>) {
    c.execute(
        "SELECT lease_sched.job_define($1, $2::text::interval, misfire => $3, grace => $4::text::interval)",
        &[&job, &every, &misfire, &grace],
    )
    .unwrap();
}

fn next(c: &mut Client, job: &str) -> Option<Ts> {
    c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&job]).unwrap().get(0)
}

/// A plan that ran and succeeded (what a runner left before it stopped).
fn ran(c: &mut Client, job: &str, plan: Ts) {
    let r = claim(c, job, plan, "before-the-outage");
    assert_eq!(r.outcome, "won");
    assert!(finish_ok(c, r.id(), r.token()));
}

/// Claim and finish each plan the planner offers, until it offers none.
fn walk(c: &mut Client, job: &str) -> Vec<Ts> {
    let mut walked = vec![];
    while let Some(p) = next(c, job) {
        let r = claim(c, job, p, "runner");
        assert_eq!(r.outcome, "won", "{p}");
        assert!(finish_ok(c, r.id(), r.token()));
        walked.push(p);
        assert!(walked.len() < 20, "the planner must stop at the current slot: {walked:?}");
    }
    walked
}

/// (plan_time, reason) of the SKIPPED rows of a job, oldest first.
fn skipped(c: &mut Client, job: &str) -> Vec<(Ts, String)> {
    c.query(
        "SELECT plan_time, error_code FROM lease_sched.executions WHERE job_name = $1 AND status = 'SKIPPED' ORDER BY plan_time",
        &[&job],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn days(c: &mut Client, ds: &[i32]) -> Vec<Ts> {
    ds.iter().map(|d| day(c, *d)).collect()
}

fn reasons(c: &mut Client, ds: &[i32], reason: &str) -> Vec<(Ts, String)> {
    days(c, ds).into_iter().map(|t| (t, reason.to_string())).collect()
}

#[test]
fn misfire_all_runs_every_missed_slot_oldest_first() {
    let mut c = connect();
    let job = unique("all");
    define(&mut c, &job, "1 day", "all", None);
    let last = day(&mut c, 5);
    ran(&mut c, &job, last);
    let walked = walk(&mut c, &job);
    assert_eq!(walked, days(&mut c, &[4, 3, 2, 1, 0]));
    assert!(skipped(&mut c, &job).is_empty());
}

#[test]
fn misfire_latest_runs_the_most_recent_missed_slot_and_skips_the_older_ones() {
    let mut c = connect();
    let job = unique("latest");
    define(&mut c, &job, "1 day", "latest", None);
    let last = day(&mut c, 5);
    ran(&mut c, &job, last);
    let walked = walk(&mut c, &job);
    assert_eq!(walked, days(&mut c, &[1, 0]), "the most recent missed slot, then the current one");
    assert_eq!(skipped(&mut c, &job), reasons(&mut c, &[4, 3, 2], "misfire"));
    // "why didn't it run?" has an answer in SQL
    let msg: String = c
        .query_one(
            "SELECT error_msg FROM lease_sched.executions WHERE job_name = $1 AND status = 'SKIPPED' LIMIT 1",
            &[&job],
        )
        .unwrap()
        .get(0);
    assert!(msg.contains("latest"), "{msg}");
}

#[test]
fn misfire_skip_runs_only_the_current_slot() {
    let mut c = connect();
    let job = unique("skip");
    define(&mut c, &job, "1 day", "skip", None);
    let last = day(&mut c, 5);
    ran(&mut c, &job, last);
    assert_eq!(walk(&mut c, &job), days(&mut c, &[0]));
    assert_eq!(skipped(&mut c, &job), reasons(&mut c, &[4, 3, 2, 1], "misfire"));
}

#[test]
fn grace_skips_slots_older_than_now_minus_grace_under_any_policy() {
    let mut c = connect();
    let job = unique("grace");
    // now - 3 days falls inside the slot of 3 days ago: that slot and older ones are too late.
    define(&mut c, &job, "1 day", "all", Some("3 days"));
    let last = day(&mut c, 5);
    ran(&mut c, &job, last);
    assert_eq!(walk(&mut c, &job), days(&mut c, &[2, 1, 0]));
    assert_eq!(skipped(&mut c, &job), reasons(&mut c, &[4, 3], "grace"));
}

#[test]
fn a_skipped_slot_is_final_and_never_claimed() {
    let mut c = connect();
    let job = unique("final");
    define(&mut c, &job, "1 day", "skip", None);
    let last = day(&mut c, 3);
    ran(&mut c, &job, last);
    assert!(next(&mut c, &job).is_some());
    let old = day(&mut c, 2);
    let r = claim(&mut c, &job, old, "late-runner");
    assert_eq!(r.outcome, "conflicted");
    assert_eq!(r.lease_token, None);
    let status: String = c
        .query_one("SELECT status FROM lease_sched.executions WHERE job_name = $1 AND plan_time = $2", &[&job, &old])
        .unwrap()
        .get(0);
    assert_eq!(status, "SKIPPED");
    let latest: String = c.query_one("SELECT status FROM lease_sched.lease_latest_plan($1)", &[&job]).unwrap().get(0);
    assert_eq!(latest, "SKIPPED", "the current slot is not claimed yet: the latest plan is the last skipped one");
}

#[test]
fn a_long_backlog_is_recorded_in_batches_of_at_most_1000() {
    let mut c = connect();
    let job = unique("backlog");
    define(&mut c, &job, "1 second", "skip", None);
    let old: Ts = c
        .query_one("SELECT date_bin('1 second', clock_timestamp() - interval '1500 seconds', timestamptz 'epoch')", &[])
        .unwrap()
        .get(0);
    ran(&mut c, &job, old);
    assert_eq!(next(&mut c, &job), None, "first call: 1000 skipped slots, no plan yet");
    assert_eq!(skipped(&mut c, &job).len(), 1000);
    let plan = next(&mut c, &job).expect("second call: the rest, then the current slot");
    let n = skipped(&mut c, &job).len() as i64;
    let gap = (plan - old).num_seconds() - 1;
    assert_eq!(n, gap, "every slot between the last run and the plan is recorded");
}

#[test]
fn pause_offers_nothing_and_resume_skips_what_was_due_meanwhile() {
    let mut c = connect();
    let job = unique("pause");
    define(&mut c, &job, "1 second", "all", None);
    assert!(c.query_one("SELECT lease_sched.job_pause($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert!(c.query_one("SELECT lease_sched.job_pause($1)", &[&job]).unwrap().get::<_, bool>(0), "idempotent");
    assert!(!c.query_one("SELECT lease_sched.job_pause($1)", &[&unique("none")]).unwrap().get::<_, bool>(0));
    assert_eq!(next(&mut c, &job), None);
    let (paused, overdue): (bool, bool) = {
        let r = c.query_one("SELECT paused, overdue FROM lease_sched.job_health WHERE job_name = $1", &[&job]).unwrap();
        (r.get(0), r.get(1))
    };
    assert!(paused && !overdue);
    // run() does nothing for a paused job
    c.batch_execute(&format!("CALL lease_sched.run('{job}', 'SELECT 1')")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(next(&mut c, &job), None);
    let rows: i64 =
        c.query_one("SELECT count(*) FROM lease_sched.executions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert_eq!(rows, 0, "a paused job writes nothing");
    // Some history before the pause, so the slots due meanwhile are recorded on resume.
    let before: Ts = c
        .query_one("SELECT date_bin('1 second', clock_timestamp() - interval '2 seconds', timestamptz 'epoch')", &[])
        .unwrap()
        .get(0);
    ran(&mut c, &job, before);
    assert!(c.query_one("SELECT lease_sched.job_resume($1)", &[&job]).unwrap().get::<_, bool>(0));
    let resumed_at: Ts =
        c.query_one("SELECT resumed_at FROM lease_sched.job_definitions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert!(wait_until(Duration::from_secs(5), || next(&mut c, &job).is_some()));
    let plan = next(&mut c, &job).unwrap();
    assert!(plan >= resumed_at, "no slot due while paused runs: {plan} < {resumed_at}");
    let sk = skipped(&mut c, &job);
    assert!(!sk.is_empty() && sk.iter().all(|(t, r)| r == "paused" && *t < resumed_at && *t > before), "{sk:?}");
}

fn health(c: &mut Client, job: &str) -> (bool, Option<String>, i64) {
    let r = c
        .query_one(
            "SELECT overdue, last_status, consecutive_failures FROM lease_sched.job_health WHERE job_name = $1",
            &[&job],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn a_runner_that_dies_mid_plan_makes_the_job_overdue_until_it_recovers() {
    let mut c = connect();
    let job = unique("deadman");
    c.execute(
        "SELECT lease_sched.job_define($1, '1 second', misfire => 'latest', stale_timeout => '1 second')",
        &[&job],
    )
    .unwrap();
    let args = ClaimArgs { stale_timeout: Duration::from_secs(1), ..Default::default() };
    let p = next(&mut c, &job).unwrap();
    let r = claim_with(&mut c, &job, p, "r1", &args);
    assert!(finish_ok(&mut c, r.id(), r.token()));
    assert!(!health(&mut c, &job).0, "just succeeded");
    // The runner claims the next slot and dies without finishing.
    assert!(wait_until(Duration::from_secs(3), || next(&mut c, &job).is_some()));
    let p = next(&mut c, &job).unwrap();
    let dead = claim_with(&mut c, &job, p, "r1-dies", &args);
    assert_eq!(dead.outcome, "won");
    assert!(wait_until(Duration::from_secs(10), || health(&mut c, &job).0), "overdue turns true");
    // A runner comes back: takes the stale plan over, then catches up.
    let mut recovered = false;
    for _ in 0..50 {
        if let Some(p) = next(&mut c, &job) {
            let r = claim_with(&mut c, &job, p, "r2", &args);
            if r.outcome != "conflicted" {
                assert!(finish_ok(&mut c, r.id(), r.token()));
            }
        }
        if !health(&mut c, &job).0 {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(recovered, "overdue turns false after recovery");
    let stolen: i32 =
        c.query_one("SELECT attempt FROM lease_sched.executions WHERE id = $1", &[&dead.id()]).unwrap().get(0);
    assert!(stolen >= 2, "the dead runner's plan was taken over (attempt {stolen})");
    assert_eq!(health(&mut c, &job).1.as_deref(), Some("SUCCESS"));
}

#[test]
fn job_health_counts_consecutive_failures_and_skips() {
    let mut c = connect();
    let job = unique("failing");
    c.execute("SELECT lease_sched.job_define($1, '1 hour', misfire => 'skip', max_attempts => 1)", &[&job]).unwrap();
    let last: Ts = c
        .query_one("SELECT date_bin('1 hour', clock_timestamp() - interval '3 hours', timestamptz 'epoch')", &[])
        .unwrap()
        .get(0);
    ran(&mut c, &job, last);
    let p = next(&mut c, &job).unwrap();
    let r = claim_with(&mut c, &job, p, "r", &ClaimArgs { max_attempts: 1, ..Default::default() });
    assert!(finish_failed(&mut c, r.id(), r.token(), Duration::ZERO));
    let r = c
        .query_one(
            "SELECT last_status, consecutive_failures, skipped_24h, last_success_plan FROM lease_sched.job_health WHERE job_name = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "FAILED");
    assert_eq!(r.get::<_, i64>(1), 1);
    assert_eq!(r.get::<_, i64>(2), 2, "the two missed hourly slots were skipped within the last 24 hours");
    assert_eq!(r.get::<_, Ts>(3), last);
    assert!(!health(&mut c, &job).0, "the switch starts when the job is defined (just now)");
    // A definition made a day ago, as if it had been there all along.
    c.execute("UPDATE lease_sched.jobs SET created_at = created_at - interval '1 day' WHERE job_name = $1", &[&job])
        .unwrap();
    assert!(health(&mut c, &job).0, "no success since 3 hours ago (every 1 hour, stale_timeout 5 minutes): overdue");
}

#[test]
fn run_uses_the_definition_and_explicit_arguments_win() {
    let mut c = connect();
    let job = unique("rundef");
    c.execute(
        "SELECT lease_sched.job_define($1, '1 day', misfire => 'skip', max_attempts => 1, stale_timeout => '10 minutes')",
        &[&job],
    )
    .unwrap();
    c.batch_execute(&format!("CALL lease_sched.run('{job}', 'SELECT 1')")).unwrap();
    let r = c
        .query_one("SELECT plan_time, max_attempts, stale_timeout = interval '10 minutes', status FROM lease_sched.executions WHERE job_name = $1", &[&job])
        .unwrap();
    let today = day(&mut c, 0);
    assert_eq!(r.get::<_, Ts>(0), today, "every from the definition");
    assert_eq!(r.get::<_, i32>(1), 1, "max_attempts from the definition");
    assert!(r.get::<_, bool>(2), "stale_timeout from the definition");
    assert_eq!(r.get::<_, String>(3), "SUCCESS");
    // explicit arguments win
    let job2 = unique("rundef2");
    c.execute("SELECT lease_sched.job_define($1, '1 day', stale_timeout => '10 minutes')", &[&job2]).unwrap();
    c.batch_execute(&format!(
        "CALL lease_sched.run('{job2}', 'SELECT 1', every => '1 hour', stale_timeout => '2 hours')"
    ))
    .unwrap();
    let r = c
        .query_one(
            "SELECT plan_time = date_bin('1 hour', clock_timestamp(), timestamptz 'epoch') OR plan_time = date_bin('1 hour', clock_timestamp() - interval '1 hour', timestamptz 'epoch'),
                    stale_timeout = interval '2 hours', max_attempts
               FROM lease_sched.executions WHERE job_name = $1",
            &[&job2],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0), "every => '1 hour' wins over the definition's 1 day");
    assert!(r.get::<_, bool>(1));
    assert_eq!(r.get::<_, i32>(2), 3, "the definition's default max_attempts");
    // Without a definition, run() is what it was: every 1 minute, 3 attempts, 1 hour.
    let job3 = unique("nodef");
    c.batch_execute(&format!("CALL lease_sched.run('{job3}', 'SELECT 1')")).unwrap();
    let r = c
        .query_one(
            "SELECT plan_time = date_bin('1 minute', plan_time, timestamptz 'epoch'), max_attempts, stale_timeout = interval '1 hour'
               FROM lease_sched.executions WHERE job_name = $1",
            &[&job3],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, i32>(1), 3);
    assert!(r.get::<_, bool>(2));
}

#[test]
fn define_replaces_the_settings_and_keeps_the_pause_and_drop_keeps_the_history() {
    let mut c = connect();
    let job = unique("redefine");
    assert!(c.query_one("SELECT lease_sched.job_define($1, '1 hour')", &[&job]).unwrap().get::<_, bool>(0), "created");
    c.execute("SELECT lease_sched.job_pause($1)", &[&job]).unwrap();
    assert!(!c
        .query_one("SELECT lease_sched.job_define($1, '2 hours', misfire => 'all', grace => '10 minutes')", &[&job])
        .unwrap()
        .get::<_, bool>(0));
    let r = c
        .query_one("SELECT every = interval '2 hours', misfire, grace = interval '10 minutes', paused, max_attempts FROM lease_sched.job_definition($1)", &[&job])
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, String>(1), "all");
    assert!(r.get::<_, bool>(2));
    assert!(r.get::<_, bool>(3), "still paused");
    assert_eq!(r.get::<_, i32>(4), 3);
    c.execute("SELECT lease_sched.job_resume($1)", &[&job]).unwrap();
    let p = next(&mut c, &job);
    assert!(p.is_none() || p.is_some());
    ran(&mut c, &job, plan());
    assert!(c.query_one("SELECT lease_sched.job_drop($1)", &[&job]).unwrap().get::<_, bool>(0));
    assert!(!c.query_one("SELECT lease_sched.job_drop($1)", &[&job]).unwrap().get::<_, bool>(0));
    let n: i64 =
        c.query_one("SELECT count(*) FROM lease_sched.executions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert!(n >= 1, "history stays");
    // without a definition, every is required again
    assert_rejects(&mut c, &format!("SELECT lease_sched.lease_next_plan('{job}')"), "every");
}

#[test]
fn job_arguments_are_checked() {
    let mut c = connect();
    for (arg, sql) in [
        ("job_name", "SELECT lease_sched.job_define(NULL, '1 minute')"),
        ("job_name", "SELECT lease_sched.job_define('', '1 minute')"),
        ("every", "SELECT lease_sched.job_define('j', NULL)"),
        ("every", "SELECT lease_sched.job_define('j', '0')"),
        ("every", "SELECT lease_sched.job_define('j', '1 month')"),
        ("every", "SELECT lease_sched.job_define('j', '2 years')"),
        ("misfire", "SELECT lease_sched.job_define('j', '1 minute', misfire => 'sometimes')"),
        ("misfire", "SELECT lease_sched.job_define('j', '1 minute', misfire => NULL)"),
        ("grace", "SELECT lease_sched.job_define('j', '1 minute', grace => '-1 second')"),
        ("grace", "SELECT lease_sched.job_define('j', '1 minute', grace => '1 month')"),
        ("max_attempts", "SELECT lease_sched.job_define('j', '1 minute', max_attempts => 0)"),
        ("max_attempts", "SELECT lease_sched.job_define('j', '1 minute', max_attempts => NULL)"),
        ("stale_timeout", "SELECT lease_sched.job_define('j', '1 minute', stale_timeout => '0')"),
        ("stale_timeout", "SELECT lease_sched.job_define('j', '1 minute', stale_timeout => NULL)"),
        ("scope_kind", "SELECT lease_sched.job_define('j', '1 minute', scope_kind => '')"),
        ("scope_id", "SELECT lease_sched.job_define('j', '1 minute', scope_id => NULL)"),
        ("job_name", "SELECT lease_sched.job_pause(NULL)"),
        ("scope_kind", "SELECT lease_sched.job_resume('j', NULL)"),
        ("scope_id", "SELECT lease_sched.job_drop('j', 'global', NULL)"),
        ("job_name", "SELECT * FROM lease_sched.job_definition('')"),
        ("every", "SELECT lease_sched.lease_next_plan('no-such-job-anywhere')"),
    ] {
        assert_rejects(&mut c, sql, arg);
    }
    let n: i64 = c.query_one("SELECT count(*) FROM lease_sched.jobs WHERE job_name = 'j'", &[]).unwrap().get(0);
    assert_eq!(n, 0, "nothing written by a rejected call");
}

#[test]
fn definitions_survive_pg_dump_and_restore() {
    if native_only("definitions_survive_pg_dump_and_restore", "dumps and restores the extension (pg_dump --extension, CREATE EXTENSION); the portable edition's tables are dumped as any other") {
        return;
    }
    let mut c = connect();
    let job = unique("dumped");
    c.execute(
        "SELECT lease_sched.job_define($1, '15 minutes', misfire => 'skip', grace => '5 minutes', max_attempts => 7,
                                       stale_timeout => '42 seconds', scope_kind => 'tenant', scope_id => 't1')",
        &[&job],
    )
    .unwrap();
    c.execute("SELECT lease_sched.job_pause($1, 'tenant', 't1')", &[&job]).unwrap();
    let db = unique("restored");
    c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let cfg: postgres::Config = dsn().parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".into(),
    };
    let port = cfg.get_ports()[0].to_string();
    let dbname = cfg.get_dbname().unwrap().to_string();
    let bin = pgbin();
    // The extension with the contents of its dumped tables (pg_dump --extension).
    let dump = std::process::Command::new(format!("{bin}/pg_dump"))
        .args(["-h", &host, "-p", &port, "-U", "postgres", "--extension", "lease_sched", "-d", &dbname])
        .output()
        .expect("pg_dump");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let mut psql = std::process::Command::new(format!("{bin}/psql"))
        .args(["-h", &host, "-p", &port, "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-d", &db])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    std::io::Write::write_all(psql.stdin.as_mut().unwrap(), &dump.stdout).unwrap();
    let out = psql.wait_with_output().unwrap();
    {
        assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
        let mut r =
            Client::connect(&dsn().replace(&format!("dbname={dbname}"), &format!("dbname={db}")), postgres::NoTls)
                .unwrap();
        let row = r
            .query_one(
                "SELECT every = interval '15 minutes', misfire, grace = interval '5 minutes', max_attempts,
                        stale_timeout = interval '42 seconds', paused
                   FROM lease_sched.job_definition($1, 'tenant', 't1')",
                &[&job],
            )
            .unwrap();
        assert!(row.get::<_, bool>(0));
        assert_eq!(row.get::<_, String>(1), "skip");
        assert!(row.get::<_, bool>(2));
        assert_eq!(row.get::<_, i32>(3), 7);
        assert!(row.get::<_, bool>(4));
        assert!(row.get::<_, bool>(5), "still paused after the restore");
        let n: i64 =
            r.query_one("SELECT count(*) FROM lease_sched.job_health WHERE job_name = $1", &[&job]).unwrap().get(0);
        assert_eq!(n, 1);
    }
    c.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).unwrap();
}

/// A job with a tiny `every` runs again after a gap (or the `every` is refused). Under the
/// default misfire policy ('latest') a gap after the last plan is recorded as SKIPPED rows,
/// at most 1000 per lease_next_plan call, each call returning NULL until the backlog is
/// written. Pins the hole where, with an `every` short enough that more than 1000 slots
/// pass between two calls, the backlog grew faster than it was written: the job never ran
/// again, and every call (every pg_cron tick of run()) wrote another 1000 rows, forever.
#[test]
fn a_job_with_a_tiny_every_runs_again_after_a_gap() {
    let mut c = connect();
    let job = unique("tiny_every");
    let defined = c.query_one("SELECT lease_sched.job_define($1, every => '1 millisecond')", &[&job]);
    if let Err(e) = &defined {
        // Refusing such an `every` (22023 naming it) closes the hole too.
        assert_eq!(sqlstate(e), "22023", "{e}");
        return;
    }
    // One run, finished.
    let plan: chrono::DateTime<chrono::Utc> =
        c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&job]).unwrap().get(0);
    let won = claim(&mut c, &job, plan, "runner");
    assert_eq!(won.outcome, "won");
    assert!(finish_ok(&mut c, won.id(), won.token()));

    // The runner comes back after two seconds (2000 slots) and asks once a second: as pg_cron would.
    std::thread::sleep(Duration::from_secs(2));
    let mut offered = None;
    for _ in 0..5 {
        let p: Option<chrono::DateTime<chrono::Utc>> =
            c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&job]).unwrap().get(0);
        if p.is_some() {
            offered = p;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let skipped: i64 = c
        .query_one(
            "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SKIPPED'",
            &[&job],
        )
        .unwrap()
        .get(0);
    let _ = c.execute("DELETE FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job]);
    let _ = c.execute("SELECT lease_sched.job_drop($1)", &[&job]);
    assert!(
        offered.is_some(),
        "job_define accepted every => '1 millisecond'; after a 2 s gap five lease_next_plan calls (one a second) \
         returned NULL and wrote {skipped} SKIPPED rows: the 1000-row bound per call never catches up, so the job \
         never runs again"
    );
}

/// A job that job_define accepts can be claimed (or its name is refused with a data error).
/// Pins the hole where job_define accepted a name whose definition fit lease_sched.jobs'
/// key but whose runs did not fit sys_cron_executions' unique key (8 bytes more: plan_time):
/// the job was defined and every run of it failed with an index-size error that named no
/// argument.
#[test]
fn a_defined_job_can_be_claimed_or_its_name_is_refused() {
    let mut c = connect();
    // ~2684 bytes of incompressible text.
    let name: String = c
        .query_one("SELECT left(string_agg(md5(random()::text || g), ''), 2684) FROM generate_series(1, 90) g", &[])
        .unwrap()
        .get(0);
    let defined = c.execute("SELECT lease_sched.job_define($1, '1 hour')", &[&name]);
    if let Err(e) = &defined {
        let code = sqlstate(e);
        assert!(code == "22023" || code == "54000", "refused with {code}: {e}");
        return;
    }
    let plan: chrono::DateTime<chrono::Utc> =
        c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&name]).unwrap().get(0);
    let claimed = c.query_one("SELECT outcome FROM lease_sched.lease_try_claim($1, $2, 'runner')", &[&name, &plan]);
    let _ = c.execute("SELECT lease_sched.job_drop($1)", &[&name]);
    let _ = c.execute("DELETE FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&name]);
    assert!(
        claimed.is_ok(),
        "job_define accepted a {}-byte job name, but no run of the job can ever be claimed: {:?}",
        name.len(),
        claimed.err().map(|e| e.to_string())
    );
}
