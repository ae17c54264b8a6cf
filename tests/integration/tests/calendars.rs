//! Calendars (cron jobs in a time zone) over real connections:
//! - the slots agree with croniter, an independent cron library, away from DST transitions;
//! - exactly once per slot across real DST transitions of four zones, through `run()` called
//!   by competing schedulers and through `lease_claim_next` runner loops. The transitions are
//!   in the past: a definition "created" the day before one walks its slots (misfire 'all')
//!   on the database clock, without waiting for a real change;
//! - `lease_sched.schedule` under the real pg_cron (PostgreSQL 15; one tick, about a minute).
use std::process::Command;
use std::thread;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lease_sched_integration::*;

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn slots_agree_with_croniter_away_from_transitions() {
    let python = std::env::var("LEASE_SCHED_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok =
        Command::new(&python).args(["-c", "import croniter, psycopg"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        skip(
            "calendars::slots_agree_with_croniter_away_from_transitions",
            "no croniter in LEASE_SCHED_PYTHON (scripts/test.sh installs it)",
        );
        return;
    }
    connect();
    let out = Command::new(&python).arg(repo("tests/integration/cron_reference.py")).arg(dsn()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
}

/// Transitions in the past: (zone, a wall-time-fixed expression, a wildcard one, the day
/// before the transition, the day after it).
const TRANSITIONS: &[(&str, &str, &str, &str, &str)] = &[
    ("Europe/Berlin", "30 2 * * *", "*/30 * * * *", "2024-03-30 00:00+00", "2024-04-01 00:00+00"),
    ("Europe/Berlin", "30 2 * * *", "*/30 * * * *", "2024-10-26 00:00+00", "2024-10-28 00:00+00"),
    ("America/New_York", "30 1,2 * * *", "0,30 * * * *", "2024-03-09 12:00+00", "2024-03-11 12:00+00"),
    ("America/New_York", "30 1,2 * * *", "0,30 * * * *", "2024-11-02 12:00+00", "2024-11-04 12:00+00"),
    ("Australia/Lord_Howe", "15 2 * * *", "*/15 * * * *", "2024-04-05 00:00+00", "2024-04-07 12:00+00"),
    ("Australia/Lord_Howe", "15 2 * * *", "*/15 * * * *", "2024-10-04 00:00+00", "2024-10-06 12:00+00"),
    ("Europe/Moscow", "30 1 * * *", "0 * * * *", "2014-10-25 00:00+00", "2014-10-27 00:00+00"),
    ("Pacific/Apia", "0 12 * * *", "0 */6 * * *", "2011-12-28 12:00+00", "2012-01-01 12:00+00"),
];

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_str(s, "%Y-%m-%d %H:%M%#z").unwrap().with_timezone(&Utc)
}

/// Define `job` on `cron` in `zone`, as if created at `from` (misfire 'all': every slot runs).
fn define_in_the_past(c: &mut postgres::Client, job: &str, cron: &str, zone: &str, from: DateTime<Utc>) {
    c.query_one(
        "SELECT lease_sched.job_define($1, cron => $2, timezone => $3, misfire => 'all')",
        &[&job, &cron, &zone],
    )
    .unwrap();
    c.execute("UPDATE lease_sched.jobs SET created_at = $2 WHERE job_name = $1", &[&job, &from]).unwrap();
}

/// The slots of the window (from, to], by cron_next_runs.
fn expected_slots(
    c: &mut postgres::Client,
    cron: &str,
    zone: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    c.query(
        "SELECT plan_time FROM lease_sched.cron_next_runs($1, $2, 10000, $3) WHERE plan_time <= $4 ORDER BY 1",
        &[&cron, &zone, &from, &to],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn succeeded_plans(c: &mut postgres::Client, job: &str, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    c.query(
        "SELECT plan_time FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND plan_time <= $2 AND status = 'SUCCESS'
          ORDER BY 1",
        &[&job, &to],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn run_executes_each_slot_once_across_dst_transitions() {
    let mut c = connect();
    for (i, &(zone, fixed, wildcard, from, to)) in TRANSITIONS.iter().enumerate() {
        for cron in [fixed, wildcard] {
            let (from, to) = (ts(from), ts(to));
            let job = unique(&format!("cal_run{i}"));
            let table = unique("cal_t");
            c.batch_execute(&format!("CREATE TABLE {table} (at timestamptz DEFAULT clock_timestamp())")).unwrap();
            define_in_the_past(&mut c, &job, cron, zone, from);
            let (j, t) = (job.clone(), table.clone());
            // Three schedulers calling run() for the same job (as two pg_cron entries and an
            // application would).
            let handles: Vec<_> = (0..3)
                .map(|_| {
                    let (j, t) = (j.clone(), t.clone());
                    thread::spawn(move || {
                        let mut c = connect();
                        let deadline = std::time::Instant::now() + Duration::from_secs(240);
                        loop {
                            c.execute(&format!("CALL lease_sched.run($1, 'INSERT INTO {t} DEFAULT VALUES')"), &[&j]).unwrap();
                            let done: bool = c
                                .query_one("SELECT EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND plan_time > $2)", &[&j, &to])
                                .unwrap()
                                .get(0);
                            if done {
                                return;
                            }
                            assert!(std::time::Instant::now() < deadline, "{j} did not reach {to} in time");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let expected = expected_slots(&mut c, cron, zone, from, to);
            assert!(expected.len() >= 2, "{zone} {cron}: a window with slots");
            let got = succeeded_plans(&mut c, &job, to);
            assert_eq!(got, expected, "{zone} {cron}: every slot of the window ran, in order, once");
            let others: i64 = c
                .query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND plan_time <= $2 AND status <> 'SUCCESS'", &[&job, &to])
                .unwrap()
                .get(0);
            assert_eq!(others, 0, "{zone} {cron}: nothing skipped or failed under misfire 'all'");
            // The command ran exactly once per plan (the ones after the window included).
            let rows: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
            let plans = successes(&mut c, &job);
            assert_eq!(rows, plans, "{zone} {cron}: one command per plan");
            c.query_one("SELECT lease_sched.job_drop($1)", &[&job]).unwrap();
        }
    }
}

#[test]
fn lease_claim_next_runners_take_each_slot_once_across_dst_transitions() {
    let mut c = connect();
    for (i, &(zone, fixed, wildcard, from, to)) in TRANSITIONS.iter().enumerate() {
        for cron in [fixed, wildcard] {
            let (from, to) = (ts(from), ts(to));
            let job = unique(&format!("cal_claim{i}"));
            let table = unique("cal_w");
            c.batch_execute(&format!("CREATE TABLE {table} (plan_time timestamptz, runner text)")).unwrap();
            define_in_the_past(&mut c, &job, cron, zone, from);
            let handles: Vec<_> = (0..4)
                .map(|r| {
                    let (job, table) = (job.clone(), table.clone());
                    thread::spawn(move || {
                        let mut c = connect();
                        let me = format!("runner-{r}");
                        let deadline = std::time::Instant::now() + Duration::from_secs(240);
                        loop {
                            let row = c
                                .query_one(
                                    "SELECT outcome, execution_id, lease_token, plan_time FROM lease_sched.lease_claim_next($1, $2)",
                                    &[&job, &me],
                                )
                                .unwrap();
                            let outcome: String = row.get(0);
                            if outcome == "won" || outcome == "stole" {
                                let plan: DateTime<Utc> = row.get(3);
                                // The work, then the finish; a lost lease would return false.
                                c.execute(&format!("INSERT INTO {table} VALUES ($1, $2)"), &[&plan, &me]).unwrap();
                                let id: uuid::Uuid = row.get(1);
                                let token: uuid::Uuid = row.get(2);
                                assert!(finish_ok(&mut c, id, token));
                                if plan > to {
                                    return;
                                }
                            } else {
                                assert!(outcome == "none" || outcome == "conflicted", "{outcome}");
                                let done: bool = c
                                    .query_one("SELECT EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND plan_time > $2)", &[&job, &to])
                                    .unwrap()
                                    .get(0);
                                if done {
                                    return;
                                }
                            }
                            assert!(std::time::Instant::now() < deadline, "{job} did not reach {to} in time");
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let expected = expected_slots(&mut c, cron, zone, from, to);
            let worked: Vec<DateTime<Utc>> = c
                .query(&format!("SELECT plan_time FROM {table} WHERE plan_time <= $1 ORDER BY 1"), &[&to])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(worked, expected, "{zone} {cron}: each slot worked exactly once, in order");
            c.query_one("SELECT lease_sched.job_drop($1)", &[&job]).unwrap();
        }
    }
}

#[test]
fn run_now_is_taken_first_and_shifts_no_slot() {
    let mut c = connect();
    let job = unique("cal_trigger");
    let (from, to) = (ts("2024-10-26 00:00+00"), ts("2024-10-28 00:00+00"));
    define_in_the_past(&mut c, &job, "30 2 * * *", "Europe/Berlin", from);
    let triggered: DateTime<Utc> = c.query_one("SELECT lease_sched.job_trigger($1)", &[&job]).unwrap().get(0);
    let first = c
        .query_one(
            "SELECT outcome, execution_id, lease_token, plan_time FROM lease_sched.lease_claim_next($1, 'r')",
            &[&job],
        )
        .unwrap();
    assert_eq!(first.get::<_, String>(0), "won");
    assert_eq!(first.get::<_, DateTime<Utc>>(3), triggered, "the triggered plan first");
    assert!(finish_ok(&mut c, first.get(1), first.get(2)));
    // Then the schedule from where it was: the first slot after the definition.
    let next = c.query_one("SELECT outcome, plan_time FROM lease_sched.lease_claim_next($1, 'r')", &[&job]).unwrap();
    assert_eq!(next.get::<_, DateTime<Utc>>(1), expected_slots(&mut c, "30 2 * * *", "Europe/Berlin", from, to)[0]);
    c.query_one("SELECT lease_sched.job_drop($1)", &[&job]).unwrap();
}

#[test]
fn schedule_registers_one_pg_cron_entry_that_runs_the_job_in_its_zone() {
    if skip_without_pg_cron("calendars::schedule_registers_one_pg_cron_entry_that_runs_the_job_in_its_zone") {
        return;
    }
    let mut c = connect();
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron").unwrap();
    let job = unique("cal_cron");
    let table = unique("cal_ct");
    c.batch_execute(&format!("CREATE TABLE {table} (at timestamptz DEFAULT clock_timestamp())")).unwrap();
    let cmd = format!("INSERT INTO {table} DEFAULT VALUES");
    // Every minute in Lord Howe time (a 30-minute offset: pg_cron's own GMT schedule could
    // not say it), registered once by schedule and once more by hand: two schedulers.
    let id: i64 = c
        .query_one("SELECT lease_sched.schedule($1, '* * * * *', $2, 'Australia/Lord_Howe')", &[&job, &cmd])
        .unwrap()
        .get(0);
    let again: i64 = c
        .query_one("SELECT lease_sched.schedule($1, '* * * * *', $2, 'Australia/Lord_Howe')", &[&job, &cmd])
        .unwrap()
        .get(0);
    assert_eq!(id, again, "scheduling again replaces the entry");
    let extra: i64 = c
        .query_one(
            "SELECT cron.schedule($1, '* * * * *', format('CALL lease_sched.run(%L, %L)', $2::text, $3::text))",
            &[&format!("{job}-extra"), &job, &cmd],
        )
        .unwrap()
        .get(0);
    let plans = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SUCCESS'",
            &[&job],
        )
        .unwrap()
        .get(0)
    };
    let ok = wait_until(Duration::from_secs(150), || plans(&mut c) >= 1);
    // Let both entries of that tick finish.
    thread::sleep(Duration::from_secs(3));
    c.query_one("SELECT cron.unschedule($1::bigint)", &[&extra]).unwrap();
    let removed: bool = c.query_one("SELECT lease_sched.unschedule($1)", &[&job]).unwrap().get(0);
    assert!(ok, "pg_cron ran the job");
    assert!(removed);
    let left: i64 = c.query_one("SELECT count(*) FROM cron.job WHERE jobid = $1", &[&id]).unwrap().get(0);
    assert_eq!(left, 0, "unschedule removed the pg_cron entry");
    assert_eq!(c.query("SELECT 1 FROM lease_sched.job_definition($1)", &[&job]).unwrap().len(), 0);
    let rows: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
    let (n, distinct, whole_minutes): (i64, i64, bool) = {
        let r = c
            .query_one(
                "SELECT count(*), count(DISTINCT plan_time), bool_and(date_trunc('minute', plan_time) = plan_time)
                   FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SUCCESS'",
                &[&job],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(rows, n, "two schedulers, one command per plan");
    assert_eq!(n, distinct);
    assert!(whole_minutes, "plans are the calendar's slots");
}

/// The due slots of a cron job in (from, now], by cron_next_runs.
fn due_slots(c: &mut postgres::Client, cron: &str, from: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    c.query(
        "SELECT plan_time FROM lease_sched.cron_next_runs($1, 'UTC', 10000, $2) WHERE plan_time <= clock_timestamp() ORDER BY 1",
        &[&cron, &from],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn skipped(c: &mut postgres::Client, job: &str) -> Vec<(DateTime<Utc>, String)> {
    c.query(
        "SELECT plan_time, error_code FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SKIPPED' ORDER BY 1",
        &[&job],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn misfire_policies_grace_and_pause_apply_to_calendar_slots() {
    let mut c = connect();
    let cron = "*/10 * * * *";
    let define = |c: &mut postgres::Client, job: &str, misfire: &str, grace: Option<&str>| -> DateTime<Utc> {
        c.query_one(
            "SELECT lease_sched.job_define($1, cron => $2, misfire => $3, grace => $4::text::interval)",
            &[&job, &cron, &misfire, &grace],
        )
        .unwrap();
        c.query_one(
            "UPDATE lease_sched.jobs SET created_at = clock_timestamp() - interval '65 minutes' WHERE job_name = $1 RETURNING created_at",
            &[&job],
        )
        .unwrap()
        .get(0)
    };
    let next = |c: &mut postgres::Client, job: &str| -> Option<DateTime<Utc>> {
        c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&job]).unwrap().get(0)
    };

    // latest: the most recent missed slot runs, the older ones are SKIPPED (misfire).
    let job = unique("cal_latest");
    let latest_job = job.clone();
    let from = define(&mut c, &job, "latest", None);
    let due = due_slots(&mut c, cron, from);
    assert!(due.len() >= 6, "{due:?}");
    let n = due.len();
    assert_eq!(next(&mut c, &job), Some(due[n - 2]));
    let want: Vec<_> = due[..n - 2].iter().map(|t| (*t, "misfire".to_string())).collect();
    assert_eq!(skipped(&mut c, &job), want);

    // skip: only the current slot runs.
    let job = unique("cal_skip");
    let from = define(&mut c, &job, "skip", None);
    let due = due_slots(&mut c, cron, from);
    let n = due.len();
    assert_eq!(next(&mut c, &job), Some(due[n - 1]));
    assert_eq!(skipped(&mut c, &job).len(), n - 1);

    // grace: under 'all', slots older than now - grace are SKIPPED (grace), the rest run in order.
    let job = unique("cal_grace");
    let from = define(&mut c, &job, "all", Some("25 minutes"));
    let due = due_slots(&mut c, cron, from);
    let plan = next(&mut c, &job).expect("a slot within grace");
    let now: DateTime<Utc> = c.query_one("SELECT clock_timestamp()", &[]).unwrap().get(0);
    let cut = now - chrono::Duration::minutes(25);
    let old: Vec<_> = due.iter().filter(|t| **t < cut).map(|t| (*t, "grace".to_string())).collect();
    assert!(!old.is_empty());
    assert_eq!(skipped(&mut c, &job), old);
    assert_eq!(plan, *due.iter().find(|t| **t >= cut).unwrap());

    // pause: nothing is offered (nor written); resume: what fell due meanwhile is SKIPPED (paused).
    let job = unique("cal_pause");
    let from = define(&mut c, &job, "all", None);
    let due = due_slots(&mut c, cron, from);
    c.query_one("SELECT lease_sched.job_pause($1)", &[&job]).unwrap();
    assert_eq!(next(&mut c, &job), None);
    assert!(skipped(&mut c, &job).is_empty());
    c.query_one("SELECT lease_sched.job_resume($1)", &[&job]).unwrap();
    assert_eq!(next(&mut c, &job), None, "nothing due after the resume yet");
    let want: Vec<_> = due.iter().map(|t| (*t, "paused".to_string())).collect();
    assert_eq!(skipped(&mut c, &job), want);

    // job_health: a cron job that has not succeeded since its first slot + stale_timeout
    // is overdue; a paused or resumed-just-now one is not.
    let overdue = |c: &mut postgres::Client, job: &str| -> bool {
        c.query_one("SELECT overdue FROM lease_sched.job_health WHERE job_name = $1", &[&job]).unwrap().get(0)
    };
    assert!(overdue(&mut c, &latest_job));
    assert!(!overdue(&mut c, &job));
}
