//! lease_sched.run under the real pg_cron (Debian's postgresql-15-cron, preloaded by the
//! test cluster). pg_cron 1.4 ticks once a minute, so this binary takes one to two minutes.
//! Skipped (with a "skipped test:" line) on PostgreSQL 18, which has no pg_cron here.
use std::time::Duration;

use lease_sched_integration::*;

#[test]
fn two_cron_schedules_of_one_job_run_it_once_per_minute_and_failures_are_recorded() {
    if skip_without_pg_cron("pg_cron::two_cron_schedules_of_one_job_run_it_once_per_minute_and_failures_are_recorded") {
        return;
    }
    let mut c = connect();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron").unwrap();
    let (job, bad_job, table) = (unique("cron"), unique("cronfail"), unique("t"));
    c.batch_execute(&format!("CREATE TABLE {table} (at timestamptz DEFAULT now())")).unwrap();
    let cmd = format!("CALL lease_sched.run(job_name => '{job}', command => 'INSERT INTO {table} DEFAULT VALUES')");
    let bad = format!("CALL lease_sched.run(job_name => '{bad_job}', command => 'SELECT 1/0')");
    let mut ids: Vec<i64> = vec![];
    for (i, command) in [&cmd, &cmd, &bad].iter().enumerate() {
        ids.push(
            c.query_one("SELECT cron.schedule($1, '* * * * *', $2)", &[&format!("{job}-{i}"), command]).unwrap().get(0),
        );
    }
    let runs = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM cron.job_run_details WHERE jobid = ANY($1) AND status IN ('succeeded', 'failed')",
            &[&ids],
        )
        .unwrap()
        .get(0)
    };
    // Wait for one full tick: all three entries ran once.
    let ok = wait_until(Duration::from_secs(150), || runs(&mut c) >= 3);
    for id in &ids {
        c.query_one("SELECT cron.unschedule($1::bigint)", &[id]).unwrap();
    }
    assert!(ok, "pg_cron ran the three entries");
    let rows: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
    let plans = successes(&mut c, &job);
    assert!(plans >= 1);
    assert_eq!(rows, plans, "two schedules, one execution per plan");
    let failed = c
        .query_one(
            "SELECT status, error_code, error_msg FROM lease_sched.sys_cron_executions WHERE job_name = $1",
            &[&bad_job],
        )
        .unwrap();
    assert_eq!(failed.get::<_, String>(0), "FAILED");
    assert_eq!(failed.get::<_, String>(1), "22012");
    assert!(failed.get::<_, String>(2).contains("division by zero"));
    let cron_saw_failure: i64 = c
        .query_one("SELECT count(*) FROM cron.job_run_details WHERE jobid = $1 AND status = 'failed'", &[&ids[2]])
        .unwrap()
        .get(0);
    assert!(cron_saw_failure >= 1, "pg_cron records the failure too");
}
