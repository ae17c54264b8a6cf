//! The catch-up planner, which never offers a plan after now, and lease_sched.run by hand
//! (pg_cron is in pg_cron.rs): run() never commits the work of a lost lease, is bounded by
//! its lease, and every failure (cancel, timeout, deferred constraint) ends the plan FAILED
//! with the real SQLSTATE, which also reaches the caller.
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lease_sched_integration::*;
use postgres::Client;

fn next_plan(c: &mut postgres::Client, job: &str, catch_up: bool) -> Option<chrono::DateTime<chrono::Utc>> {
    c.query_one("SELECT lease_sched.lease_next_plan($1, '1 minute', catch_up => $2)", &[&job, &catch_up])
        .unwrap()
        .get(0)
}

fn bucket(c: &mut postgres::Client, minutes_ago: i32) -> chrono::DateTime<chrono::Utc> {
    c.query_one("SELECT date_bin('1 minute', now() - make_interval(mins => $1), timestamptz 'epoch')", &[&minutes_ago])
        .unwrap()
        .get(0)
}

#[test]
fn catch_up_walks_every_missed_bucket_in_order_then_stops() {
    let mut c = connect();
    let job = unique("catchup");
    let start = bucket(&mut c, 4);
    let first = claim(&mut c, &job, start, "r1");
    assert!(finish_ok(&mut c, first.id(), first.token()));
    let mut walked = vec![];
    while let Some(p) = next_plan(&mut c, &job, true) {
        let r = claim(&mut c, &job, p, "r1");
        assert_eq!(r.outcome, "won");
        assert!(finish_ok(&mut c, r.id(), r.token()));
        walked.push(p);
        assert!(walked.len() < 10, "must stop at the current bucket");
    }
    let expected: Vec<_> = (1..walked.len() as i64 + 1).map(|m| start + chrono::Duration::minutes(m)).collect();
    assert_eq!(walked, expected);
    assert!(walked.len() >= 4, "{walked:?}");
}

#[test]
fn planner_arguments_are_checked() {
    let mut c = connect();
    for (arg, sql) in [
        ("every", "SELECT lease_sched.lease_next_plan('j', '1 month')"),
        ("every", "SELECT lease_sched.lease_next_plan('j', '0')"),
        ("every", "SELECT lease_sched.lease_next_plan('j', NULL)"),
        ("job_name", "SELECT lease_sched.lease_next_plan('', '1 minute')"),
        ("catch_up", "SELECT lease_sched.lease_next_plan('j', '1 minute', catch_up => NULL)"),
        ("job_name", "SELECT * FROM lease_sched.lease_latest_plan(NULL)"),
    ] {
        assert_rejects(&mut c, sql, arg);
    }
}

#[test]
fn run_records_rows_and_retries_a_failed_plan_until_it_succeeds() {
    let mut c = connect();
    let job = unique("run");
    let table = unique("t");
    c.batch_execute("SET lease_sched.retry_backoff_base = 0").unwrap();
    let call = format!("CALL lease_sched.run('{job}', 'INSERT INTO {table} SELECT generate_series(1, 3)')");
    let e = c.batch_execute(&call).expect_err("the table does not exist yet");
    assert_eq!(sqlstate(&e), "42P01", "the SQLSTATE reaches the caller too");
    let (status, code, attempt): (String, String, i32) = {
        let r = c
            .query_one(
                "SELECT status, error_code, attempt FROM lease_sched.sys_cron_executions WHERE job_name = $1",
                &[&job],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((status.as_str(), code.as_str(), attempt), ("FAILED", "42P01", 1));
    c.batch_execute(&format!("CREATE TABLE {table} (n int)")).unwrap();
    c.batch_execute(&call).unwrap();
    let r = c
        .query_one(
            "SELECT status, attempt, rows_affected FROM lease_sched.sys_cron_executions WHERE job_name = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!((r.get::<_, String>(0), r.get::<_, i32>(1), r.get::<_, i64>(2)), ("SUCCESS".into(), 2, 3));
    c.batch_execute(&call).unwrap(); // same minute: nothing due, nothing run
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
    let runs: i64 = c
        .query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job])
        .unwrap()
        .get(0);
    assert!(n == 3 || (n == 6 && runs == 2), "ran once per plan: {n} rows over {runs} plans");
}

#[test]
fn run_inside_an_explicit_transaction_is_refused_and_leaves_no_lease() {
    let mut c = connect();
    let job = unique("txn");
    let e = c.batch_execute(&format!("BEGIN; CALL lease_sched.run('{job}', 'SELECT 1'); COMMIT;")).unwrap_err();
    assert_eq!(sqlstate(&e), "2D000", "invalid transaction termination: {e}");
    c.batch_execute("ROLLBACK").ok();
    let n: i64 = c
        .query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// A plan claimed far in the future does not stop the planner offering the current bucket,
/// and the planner never offers that future plan.
#[test]
fn a_claim_in_the_future_does_not_silence_the_planner() {
    let mut c = connect();
    let job = unique("future");
    let now: DateTime<Utc> = c.query_one("SELECT now()", &[]).unwrap().get(0);
    let future: DateTime<Utc> = "2099-01-01T00:00:00Z".parse().unwrap();
    let f = claim(&mut c, &job, future, "r1");
    assert_eq!(f.outcome, "won");
    let next: Option<DateTime<Utc>> =
        c.query_one("SELECT lease_sched.lease_next_plan($1, '1 hour')", &[&job]).unwrap().get(0);
    let next = next.expect("the current bucket is still due");
    let bucket: DateTime<Utc> =
        c.query_one("SELECT date_bin('1 hour', now(), timestamptz 'epoch')", &[]).unwrap().get(0);
    assert_eq!(next, bucket, "the planner offers the current bucket");
    assert!(next <= now + chrono::Duration::seconds(5));
    // Claim and finish it: the next call offers nothing (this bucket is done), never 2099.
    let cur = claim(&mut c, &job, next, "r1");
    assert!(finish_ok(&mut c, cur.id(), cur.token()));
    let after: Option<DateTime<Utc>> =
        c.query_one("SELECT lease_sched.lease_next_plan($1, '1 hour')", &[&job]).unwrap().get(0);
    assert!(after.is_none_or(|p| p <= Utc::now()), "never a plan in the future: {after:?}");
    // Finishing the future plan changes nothing either.
    assert!(finish_ok(&mut c, f.id(), f.token()));
    let after: Option<DateTime<Utc>> =
        c.query_one("SELECT lease_sched.lease_next_plan($1, '1 hour')", &[&job]).unwrap().get(0);
    assert!(after.is_none_or(|p| p <= Utc::now()), "never a plan in the future: {after:?}");
    let latest: Option<DateTime<Utc>> =
        c.query_opt("SELECT plan_time FROM lease_sched.lease_latest_plan($1)", &[&job]).unwrap().map(|r| r.get(0));
    assert_eq!(latest, Some(next), "lease_latest_plan shows the latest plan at or before now");
}

/// lease_next_plan never returns a plan after now, whatever state future plans of the job
/// are in (done, failed with a retry due, stale and stealable).
#[test]
fn lease_next_plan_never_returns_a_plan_after_now() {
    let mut c = connect();
    for (every, catch_up) in
        [("1 minute", true), ("1 hour", false), ("1 day", true), ("7 days", false), ("1 second", true)]
    {
        // Future plans in every state: done, failed with a retry due now, and a stale lease
        // that may be stolen (the last two were once offered as due, in 2099).
        let job = unique("never_future");
        let l = claim(&mut c, &job, "2030-06-01T12:00:00Z".parse().unwrap(), "r1");
        assert!(finish_ok(&mut c, l.id(), l.token()));
        let l = claim(&mut c, &job, "2099-01-01T00:00:00Z".parse().unwrap(), "r1");
        assert!(finish_failed(&mut c, l.id(), l.token(), Duration::ZERO));
        let stale = unique("never_future_stale");
        claim_with(
            &mut c,
            &stale,
            "2099-01-01T00:00:00Z".parse().unwrap(),
            "r1",
            &ClaimArgs { stale_timeout: Duration::from_millis(1), ..Default::default() },
        );
        std::thread::sleep(Duration::from_millis(5));
        {
            let j = &stale;
            let p: Option<DateTime<Utc>> = c
                .query_one(
                    "SELECT lease_sched.lease_next_plan($1, $2::text::interval, catch_up => $3)",
                    &[j, &every, &catch_up],
                )
                .unwrap()
                .get(0);
            assert!(p.is_none_or(|p| p <= Utc::now()), "every {every}: a stale future lease offered: {p:?}");
        }
        for _ in 0..3 {
            let r = c
                .query_one(
                    "SELECT p, p <= now() FROM lease_sched.lease_next_plan($1, $2::text::interval, catch_up => $3) p",
                    &[&job, &every, &catch_up],
                )
                .unwrap();
            let (p, ok): (Option<DateTime<Utc>>, Option<bool>) = (r.get(0), r.get(1));
            assert!(ok.unwrap_or(true), "every {every}: a plan after now: {p:?}");
            let Some(p) = p else { break };
            let l = claim(&mut c, &job, p, "r1");
            assert!(finish_ok(&mut c, l.id(), l.token()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// run(): the work of a plan, bounded by its lease

/// Plans are daily buckets: two calls seconds apart are for the same plan (unless they
/// straddle midnight UTC, so wait that out).
fn same_bucket_for(secs: i64) {
    let now = chrono::Utc::now();
    let left = 86_400 - (now.timestamp() % 86_400);
    if left < secs {
        std::thread::sleep(Duration::from_secs(left as u64 + 1));
    }
}

fn call_run(c: &mut Client, job: &str, command: &str, stale_timeout: &str) -> Result<(), postgres::Error> {
    c.execute(
        "CALL lease_sched.run(job_name => $1, command => $2, every => '1 day', stale_timeout => $3::text::interval)",
        &[&job, &command, &stale_timeout],
    )
    .map(|_| ())
}

/// (status, attempt, error_code, error_msg) of the job's only plan.
fn plan_row(c: &mut Client, job: &str) -> (String, i32, Option<String>, Option<String>) {
    let rows = c
        .query(
            "SELECT status, attempt, error_code, error_msg FROM lease_sched.sys_cron_executions WHERE job_name = $1",
            &[&job],
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "one plan of {job}");
    let r = &rows[0];
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

fn rows_in(c: &mut Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0)
}

/// A command outlives stale_timeout while a second scheduler calls run() for the same plan:
/// the first is cancelled at its lease deadline (57014, FAILED, retried at once) and only
/// the retry commits. Pins the hole where both copies of the work committed.
#[test]
fn a_command_that_outlives_its_lease_is_cancelled_and_runs_exactly_once() {
    if native_only("a_command_that_outlives_its_lease_is_cancelled_and_runs_exactly_once", "run() arms a statement timer inside the running CALL, which no SQL can do; the portable run() still never commits the work of a lost lease (LS001), docs/portable.md") {
        return;
    }
    same_bucket_for(30);
    let mut c = connect();
    let job = unique("dup");
    let table = unique("dup_t");
    c.batch_execute(&format!("CREATE TABLE {table}(pid int)")).unwrap();
    let first = {
        let (job, table) = (job.clone(), table.clone());
        std::thread::spawn(move || {
            let mut c1 = connect();
            let started = Instant::now();
            let r = call_run(
                &mut c1,
                &job,
                &format!("INSERT INTO {table} SELECT pg_backend_pid() FROM pg_sleep(8)"),
                "3 seconds",
            );
            (r, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(4500));
    let mut c2 = connect();
    call_run(&mut c2, &job, &format!("INSERT INTO {table} SELECT pg_backend_pid() FROM pg_sleep(1)"), "3 seconds")
        .expect("the second scheduler runs the plan");
    let (r, took) = first.join().unwrap();
    let e = r.expect_err("the first call outlived its lease");
    assert_eq!(sqlstate(&e), "57014", "cancelled at its lease deadline: {e}");
    assert!(took < Duration::from_secs(4), "cancelled before the lease went stale (took {took:?})");
    assert_eq!(rows_in(&mut c, &table), 1, "the command's work committed exactly once");
    let (status, attempt, _, _) = plan_row(&mut c, &job);
    assert_eq!((status.as_str(), attempt), ("SUCCESS", 2), "the history shows the retry");
    // And nothing more is due for this plan.
    call_run(&mut c2, &job, &format!("INSERT INTO {table} SELECT 0"), "3 seconds").unwrap();
    assert_eq!(rows_in(&mut c, &table), 1);
    c.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

/// A command whose lease is taken from it while it runs (here, deterministically: the
/// command itself replaces its row's lease_token) raises LS001 and none of its work commits.
#[test]
fn a_run_that_lost_its_lease_raises_ls001_and_commits_nothing() {
    let mut c = connect();
    let job = unique("lost");
    let table = unique("lost_t");
    c.batch_execute(&format!("CREATE TABLE {table}(x int)")).unwrap();
    let command = format!(
        "WITH stolen AS (UPDATE lease_sched.sys_cron_executions SET lease_token = gen_random_uuid()
                          WHERE job_name = '{job}' AND status = 'RUNNING' RETURNING 1)
         INSERT INTO {table} SELECT 1 FROM stolen"
    );
    let e = call_run(&mut c, &job, &command, "1 hour").expect_err("a lost lease is an error");
    assert_eq!(sqlstate(&e), "LS001", "{e}");
    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(msg.contains("lost"), "{msg}");
    assert_eq!(rows_in(&mut c, &table), 0, "nothing of the command's work committed");
    c.batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

/// The caller's own statement_timeout cancels the command: FAILED 57014, not RUNNING.
#[test]
fn a_statement_timeout_ends_the_plan_failed() {
    let mut c = connect();
    let job = unique("to");
    c.batch_execute("SET statement_timeout = '2s'").unwrap();
    let started = Instant::now();
    let e = call_run(&mut c, &job, "SELECT pg_sleep(10)", "1 hour").expect_err("timed out");
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(8));
    c.batch_execute("RESET statement_timeout").unwrap();
    let (status, _, code, _) = plan_row(&mut c, &job);
    assert_eq!(status, "FAILED");
    assert_eq!(code.as_deref(), Some("57014"));
    let running: i64 =
        c.query_one("SELECT count(*) FROM lease_sched.active_leases WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert_eq!(running, 0, "the job is not blocked by a RUNNING row");
}

/// A deferred constraint that fails at commit time ends the plan FAILED with its SQLSTATE,
/// and the error reaches the caller.
#[test]
fn a_deferred_constraint_failure_ends_the_plan_failed_with_its_sqlstate() {
    let mut c = connect();
    let (parent, child) = (unique("parent"), unique("child"));
    c.batch_execute(&format!(
        "CREATE TABLE {parent}(id int PRIMARY KEY);
         CREATE TABLE {child}(pid int REFERENCES {parent} DEFERRABLE INITIALLY DEFERRED);"
    ))
    .unwrap();
    let job = unique("deferred");
    let e = call_run(&mut c, &job, &format!("INSERT INTO {child} VALUES (42)"), "1 hour").expect_err("FK violation");
    assert_eq!(sqlstate(&e), "23503", "{e}");
    let (status, _, code, msg) = plan_row(&mut c, &job);
    assert_eq!(status, "FAILED");
    assert_eq!(code.as_deref(), Some("23503"));
    assert!(msg.unwrap_or_default().contains("foreign key"));
    assert_eq!(rows_in(&mut c, &child), 0);

    // A deferred constraint trigger, too.
    let t = unique("trig");
    c.batch_execute(&format!(
        "CREATE TABLE {t}(x int);
         CREATE FUNCTION {t}_check() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'late check failed' USING ERRCODE = '23514'; END $$;
         CREATE CONSTRAINT TRIGGER {t}_late AFTER INSERT ON {t} DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION {t}_check();"
    ))
    .unwrap();
    let job = unique("deferred_trigger");
    let e = call_run(&mut c, &job, &format!("INSERT INTO {t} VALUES (1)"), "1 hour").expect_err("trigger failure");
    assert_eq!(sqlstate(&e), "23514", "{e}");
    let (status, _, code, _) = plan_row(&mut c, &job);
    assert_eq!((status.as_str(), code.as_deref()), ("FAILED", Some("23514")));
    assert_eq!(rows_in(&mut c, &t), 0);
    c.batch_execute(&format!("DROP TABLE {child}, {parent}, {t}; DROP FUNCTION {t}_check()")).unwrap();
}

/// pg_cancel_backend of the session running the command ends the plan FAILED (57014).
#[test]
fn a_cancelled_command_ends_the_plan_failed() {
    let job = unique("cancel");
    let mut victim = connect();
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let runner = {
        let job = job.clone();
        std::thread::spawn(move || call_run(&mut victim, &job, "SELECT pg_sleep(20)", "1 hour"))
    };
    let mut c = connect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            c.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'", &[&pid])
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }),
        "the command is running"
    );
    let cancelled: bool = c.query_one("SELECT pg_cancel_backend($1)", &[&pid]).unwrap().get(0);
    assert!(cancelled);
    let e = runner.join().unwrap().expect_err("cancelled");
    assert_eq!(sqlstate(&e), "57014", "{e}");
    let (status, _, code, _) = plan_row(&mut c, &job);
    assert_eq!((status.as_str(), code.as_deref()), ("FAILED", Some("57014")));
}

/// A failed command's error reaches the caller as it was: its DETAIL and HINT when it had
/// them, and no empty DETAIL or HINT line when it had none.
#[test]
fn a_failed_command_is_raised_again_with_its_own_detail_and_hint_only() {
    let mut c = connect();
    let e = call_run(&mut c, &unique("bare_error"), "SELECT 1/0", "1 minute").expect_err("division by zero");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22012");
    assert_eq!((db.detail(), db.hint()), (None, None), "no empty DETAIL or HINT: {db:?}");

    let command = "DO $$ BEGIN RAISE EXCEPTION 'nope' USING DETAIL = 'the detail', HINT = 'the hint'; END $$";
    let e = call_run(&mut c, &unique("full_error"), command, "1 minute").expect_err("raised");
    let db = e.as_db_error().expect("a server error");
    assert_eq!((db.message(), db.detail(), db.hint()), ("nope", Some("the detail"), Some("the hint")));

    let command = "DO $$ BEGIN RAISE EXCEPTION 'only a hint' USING HINT = 'h'; END $$";
    let e = call_run(&mut c, &unique("hint_error"), command, "1 minute").expect_err("raised");
    let db = e.as_db_error().expect("a server error");
    assert_eq!((db.detail(), db.hint()), (None, Some("h")));
}
