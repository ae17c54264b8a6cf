//! The catch-up planner and lease_sched.run by hand (pg_cron is in pg_cron.rs).
use lease_sched_integration::*;

fn next_plan(c: &mut postgres::Client, job: &str, catch_up: bool) -> Option<chrono::DateTime<chrono::Utc>> {
    c.query_one("SELECT lease_sched.lease_next_plan($1, '1 minute', catch_up => $2)", &[&job, &catch_up]).unwrap().get(0)
}

fn bucket(c: &mut postgres::Client, minutes_ago: i32) -> chrono::DateTime<chrono::Utc> {
    c.query_one(
        "SELECT date_bin('1 minute', now() - make_interval(mins => $1), timestamptz 'epoch')",
        &[&minutes_ago],
    )
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
            .query_one("SELECT status, error_code, attempt FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job])
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!((status.as_str(), code.as_str(), attempt), ("FAILED", "42P01", 1));
    c.batch_execute(&format!("CREATE TABLE {table} (n int)")).unwrap();
    c.batch_execute(&call).unwrap();
    let r = c
        .query_one("SELECT status, attempt, rows_affected FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job])
        .unwrap();
    assert_eq!((r.get::<_, String>(0), r.get::<_, i32>(1), r.get::<_, i64>(2)), ("SUCCESS".into(), 2, 3));
    c.batch_execute(&call).unwrap(); // same minute: nothing due, nothing run
    let n: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
    let runs: i64 = c.query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert!(n == 3 || (n == 6 && runs == 2), "ran once per plan: {n} rows over {runs} plans");
}

#[test]
fn run_inside_an_explicit_transaction_is_refused_and_leaves_no_lease() {
    let mut c = connect();
    let job = unique("txn");
    let e = c.batch_execute(&format!("BEGIN; CALL lease_sched.run('{job}', 'SELECT 1'); COMMIT;")).unwrap_err();
    assert_eq!(sqlstate(&e), "2D000", "invalid transaction termination: {e}");
    c.batch_execute("ROLLBACK").ok();
    let n: i64 = c.query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert_eq!(n, 0);
}
