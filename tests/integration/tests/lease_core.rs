//! The lease core over real connections: races, steals, fencing, retries (and a backoff that
//! saturates at any attempt), bad input and the errors a user can provoke, result payloads,
//! privileges (runners, outsiders, readers of the history) and the clock. Runs against the
//! cluster scripts/test.sh starts.
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use lease_sched_integration::fixtures::{Role, READER_GRANTS};
use lease_sched_integration::*;
use postgres::Client;

/// Run `n` closures on `n` connections released together by a barrier.
fn herd<T: Send + 'static>(n: usize, f: impl Fn(usize, &mut postgres::Client) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(n));
    let f = Arc::new(f);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, f) = (barrier.clone(), f.clone());
            thread::spawn(move || {
                let mut c = connect();
                barrier.wait();
                f(i, &mut c)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("runner thread")).collect()
}

#[test]
fn one_winner_among_32_runners_on_one_plan() {
    let job = unique("herd");
    let outcomes = herd(32, move |i, c| claim(c, &job, plan(), &format!("r{i}")).outcome);
    assert_eq!(outcomes.iter().filter(|o| *o == "won").count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "conflicted").count(), 31, "{outcomes:?}");
}

#[test]
fn one_winner_per_plan_among_16_runners_on_200_plans() {
    let job = unique("many");
    let plans: Vec<_> = (0..200).map(|m| plan() + ChronoDuration::minutes(m)).collect();
    let plans = Arc::new(plans);
    let p = plans.clone();
    let wins = herd(16, move |i, c| {
        let mut mine = vec![];
        let order: Vec<_> = if i % 2 == 0 { p.iter().collect() } else { p.iter().rev().collect() };
        for t in order {
            let r = claim(c, &job, *t, &format!("r{i}"));
            if r.outcome == "won" {
                mine.push((*t, r.fencing_token.unwrap()));
            }
        }
        mine
    });
    let mut all: Vec<_> = wins.into_iter().flatten().collect();
    all.sort();
    assert_eq!(all.iter().map(|(t, _)| *t).collect::<Vec<_>>(), *plans, "each plan won exactly once");
    let mut tokens: Vec<_> = all.iter().map(|(_, f)| *f).collect();
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 200, "fencing tokens are unique");
}

#[test]
fn one_thief_among_16_when_a_lease_goes_stale() {
    let job = unique("steal");
    let mut c = connect();
    let short = ClaimArgs { stale_timeout: Duration::from_millis(300), ..Default::default() };
    let first = claim_with(&mut c, &job, plan(), "silent", &short);
    thread::sleep(Duration::from_millis(500));
    let j = job.clone();
    let results = herd(16, move |i, c| claim(c, &j, plan(), &format!("thief{i}")));
    let thieves: Vec<_> = results.iter().filter(|r| r.outcome == "stole").collect();
    assert_eq!(thieves.len(), 1, "{results:?}");
    let thief = thieves[0];
    assert_eq!(thief.execution_id, first.execution_id);
    assert_eq!(thief.attempt, Some(2));
    assert!(thief.fencing_token > first.fencing_token);
    // The silent holder is fenced: its token neither extends nor finishes the run.
    assert!(!heartbeat(&mut c, first.id(), first.token()));
    assert!(!finish_ok(&mut c, first.id(), first.token()));
    assert!(finish_ok(&mut c, thief.id(), thief.token()));
}

#[test]
fn one_retry_among_16_when_a_run_failed() {
    let job = unique("retry");
    let mut c = connect();
    let first = claim(&mut c, &job, plan(), "r0");
    assert!(finish_failed(&mut c, first.id(), first.token(), Duration::ZERO));
    let j = job.clone();
    let results = herd(16, move |i, c| claim(c, &j, plan(), &format!("r{}", i + 1)).outcome);
    assert_eq!(results.iter().filter(|o| *o == "stole").count(), 1, "{results:?}");
}

#[test]
fn fencing_tokens_rise_with_every_new_holder() {
    let job = unique("fence");
    let mut c = connect();
    let args = ClaimArgs { max_attempts: 6, ..Default::default() };
    let mut last = 0;
    for attempt in 1..=6 {
        let r = claim_with(&mut c, &job, plan(), "r", &args);
        assert_eq!(r.attempt, Some(attempt));
        assert!(r.fencing_token.unwrap() > last);
        last = r.fencing_token.unwrap();
        if attempt < 6 {
            assert!(finish_failed(&mut c, r.id(), r.token(), Duration::ZERO));
        }
    }
}

#[test]
fn retries_wait_for_backoff_then_exhaust() {
    let job = unique("backoff");
    let mut c = connect();
    let args = ClaimArgs { max_attempts: 2, ..Default::default() };
    let a = claim_with(&mut c, &job, plan(), "r1", &args);
    assert!(finish_failed(&mut c, a.id(), a.token(), Duration::from_millis(400)));
    assert_eq!(claim_with(&mut c, &job, plan(), "r2", &args).outcome, "conflicted", "still backing off");
    thread::sleep(Duration::from_millis(500));
    let b = claim_with(&mut c, &job, plan(), "r2", &args);
    assert_eq!((b.outcome.as_str(), b.attempt), ("stole", Some(2)));
    assert!(finish_failed(&mut c, b.id(), b.token(), Duration::ZERO));
    let retry: Option<chrono::DateTime<chrono::Utc>> = c
        .query_one("SELECT next_retry_at FROM lease_sched.sys_cron_executions WHERE id = $1", &[&b.id()])
        .unwrap()
        .get(0);
    assert_eq!(retry, None, "no retry is scheduled once attempts are exhausted");
    assert_eq!(claim_with(&mut c, &job, plan(), "r3", &args).outcome, "conflicted");
}

#[test]
fn default_backoff_doubles_from_the_settings_and_caps() {
    let job = unique("expo");
    let mut c = connect();
    c.batch_execute("SET lease_sched.retry_backoff_base = '2s'; SET lease_sched.retry_backoff_max = '5s'").unwrap();
    let args = ClaimArgs { max_attempts: 5, ..Default::default() };
    let mut delays = vec![];
    for _ in 0..3 {
        // Move the backoff out of the way so the next claim can retry at once.
        c.execute(
            "UPDATE lease_sched.sys_cron_executions SET next_retry_at = now() - interval '1s' WHERE job_name = $1",
            &[&job],
        )
        .unwrap();
        let r = claim_with(&mut c, &job, plan(), "r", &args);
        assert_ne!(r.outcome, "conflicted");
        c.query_one("SELECT lease_sched.lease_finish($1, $2, 'FAILED')", &[&r.id(), &r.token()]).unwrap();
        let secs: f64 = c
            .query_one(
                "SELECT extract(epoch FROM next_retry_at - finished_at)::float8 FROM lease_sched.sys_cron_executions WHERE id = $1",
                &[&r.id()],
            )
            .unwrap()
            .get(0);
        delays.push(secs);
    }
    assert_eq!(delays, vec![2.0, 4.0, 5.0]);
}

#[test]
fn a_claim_in_a_long_transaction_gets_a_full_lease() {
    let job = unique("clock");
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    tx.batch_execute("SELECT pg_sleep(1.2)").unwrap();
    let r = tx
        .query_one(
            "SELECT stale_after, now() AS txn_start FROM lease_sched.lease_try_claim($1, $2, 'r1', stale_timeout => '2 seconds')",
            &[&job, &plan()],
        )
        .unwrap();
    let stale_after: chrono::DateTime<chrono::Utc> = r.get(0);
    let txn_start: chrono::DateTime<chrono::Utc> = r.get(1);
    tx.commit().unwrap();
    // Measured from the claim (clock_timestamp), not from the transaction start (now()).
    assert!(stale_after - txn_start >= ChronoDuration::milliseconds(3100), "{stale_after} vs {txn_start}");
}

#[test]
fn duration_is_measured_on_the_database_clock() {
    let job = unique("dur");
    let mut c = connect();
    let r = claim(&mut c, &job, plan(), "r1");
    thread::sleep(Duration::from_millis(250));
    assert!(finish_ok(&mut c, r.id(), r.token()));
    let ms: i64 = c
        .query_one("SELECT duration_ms FROM lease_sched.sys_cron_executions WHERE id = $1", &[&r.id()])
        .unwrap()
        .get(0);
    assert!((250..5000).contains(&ms), "duration_ms = {ms}");
}

fn count_rows(c: &mut postgres::Client, job: &str) -> i64 {
    c.query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job]).unwrap().get(0)
}

#[test]
fn bad_claim_arguments_are_class_22_errors_naming_the_argument_and_write_nothing() {
    let mut c = connect();
    let job = unique("bad");
    let cases: &[(&str, &str)] = &[
        ("job_name", "lease_try_claim(NULL, '2026-01-01', 'r')"),
        ("job_name", "lease_try_claim('', '2026-01-01', 'r')"),
        ("plan_time", "lease_try_claim('JOB', NULL, 'r')"),
        ("plan_time", "lease_try_claim('JOB', 'infinity', 'r')"),
        ("plan_time", "lease_try_claim('JOB', '-infinity', 'r')"),
        ("runner_id", "lease_try_claim('JOB', '2026-01-01', NULL)"),
        ("runner_id", "lease_try_claim('JOB', '2026-01-01', '')"),
        ("scope_kind", "lease_try_claim('JOB', '2026-01-01', 'r', scope_kind => NULL)"),
        ("scope_kind", "lease_try_claim('JOB', '2026-01-01', 'r', scope_kind => '')"),
        ("scope_id", "lease_try_claim('JOB', '2026-01-01', 'r', scope_id => NULL)"),
        ("stale_timeout", "lease_try_claim('JOB', '2026-01-01', 'r', stale_timeout => NULL)"),
        ("stale_timeout", "lease_try_claim('JOB', '2026-01-01', 'r', stale_timeout => '0')"),
        ("stale_timeout", "lease_try_claim('JOB', '2026-01-01', 'r', stale_timeout => '-1 second')"),
        ("stale_timeout", "lease_try_claim('JOB', '2026-01-01', 'r', stale_timeout => '1 month -40 days')"),
        ("stale_timeout", "lease_try_claim('JOB', '2026-01-01', 'r', stale_timeout => '1000 years')"),
        ("max_attempts", "lease_try_claim('JOB', '2026-01-01', 'r', max_attempts => 0)"),
        ("max_attempts", "lease_try_claim('JOB', '2026-01-01', 'r', max_attempts => -2147483648)"),
        ("max_attempts", "lease_try_claim('JOB', '2026-01-01', 'r', max_attempts => NULL)"),
        ("allow_stale_reentry", "lease_try_claim('JOB', '2026-01-01', 'r', allow_stale_reentry => NULL)"),
    ];
    for (arg, call) in cases {
        assert_rejects(&mut c, &format!("SELECT * FROM lease_sched.{}", call.replace("JOB", &job)), arg);
    }
    assert_eq!(count_rows(&mut c, &job), 0);
}

#[test]
fn bad_finish_and_heartbeat_arguments_change_nothing() {
    let mut c = connect();
    let job = unique("badfin");
    let r = claim(&mut c, &job, plan(), "r1");
    let (id, tok) = (r.id(), r.token());
    let cases: &[(&str, String)] = &[
        ("status", format!("lease_finish('{id}', '{tok}', 'DONE')")),
        ("status", format!("lease_finish('{id}', '{tok}', 'RUNNING')")),
        ("status", format!("lease_finish('{id}', '{tok}', NULL)")),
        ("execution_id", format!("lease_finish(NULL, '{tok}', 'SUCCESS')")),
        ("lease_token", format!("lease_finish('{id}', NULL, 'SUCCESS')")),
        ("retry_in", format!("lease_finish('{id}', '{tok}', 'FAILED', retry_in => '-1 minute')")),
        (
            "result",
            format!("lease_finish('{id}', '{tok}', 'SUCCESS', result => jsonb_build_object('x', repeat('y', 17000)))"),
        ),
        ("execution_id", format!("lease_heartbeat(NULL, '{tok}')")),
        ("lease_token", format!("lease_heartbeat('{id}', NULL)")),
    ];
    for (arg, call) in cases {
        assert_rejects(&mut c, &format!("SELECT lease_sched.{call}"), arg);
    }
    assert_eq!(status_of(&mut c, id), "RUNNING");
    assert!(finish_ok(&mut c, id, tok));
}

#[test]
fn error_fields_belong_to_failures() {
    let mut c = connect();
    let job = unique("errf");
    let r = claim(&mut c, &job, plan(), "r1");
    c.query_one(
        "SELECT lease_sched.lease_finish($1, $2, 'FAILED', error_msg => repeat('ü', 5000))",
        &[&r.id(), &r.token()],
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT error_code, char_length(error_msg), octet_length(error_msg) FROM lease_sched.sys_cron_executions WHERE id = $1",
            &[&r.id()],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "handler_error");
    assert_eq!(row.get::<_, i32>(1), 4000);
    assert_eq!(row.get::<_, i32>(2), 8000, "cut on a character boundary");
}

#[test]
fn outsiders_are_kept_out_and_runners_use_only_the_api() {
    let outsider = Role::new("outsider", "");
    let runner = Role::runner("runner");
    let job = unique("priv");
    {
        let mut o = outsider.connect();
        assert!(o.query("SELECT * FROM lease_sched.lease_try_claim('x', now(), 'r')", &[]).is_err());
        assert!(o.query("SELECT count(*) FROM lease_sched.sys_cron_executions", &[]).is_err());
        let mut r = runner.connect();
        let got = claim(&mut r, &job, plan(), "r1");
        assert_eq!(got.outcome, "won");
        assert!(heartbeat(&mut r, got.id(), got.token()));
        for sql in [
            "UPDATE lease_sched.sys_cron_executions SET status = 'SUCCESS'",
            "DELETE FROM lease_sched.sys_cron_executions",
            "INSERT INTO lease_sched.sys_cron_executions (job_name) VALUES ('x')",
            "SELECT nextval('lease_sched.fencing_token_seq')",
        ] {
            let e = r.batch_execute(sql).expect_err(sql);
            assert_eq!(sqlstate(&e), "42501", "{sql}");
        }
        // Admin functions stay out of reach even though EXECUTE was granted on all functions.
        for sql in ["SELECT * FROM lease_sched.sweep()", "SELECT lease_sched.runtime_flush()"] {
            let e = r.batch_execute(sql).expect_err(sql);
            assert_eq!(sqlstate(&e), "42501", "{sql}");
        }
        // Without the token, another runner's lease cannot be touched.
        assert!(!heartbeat(&mut r, got.id(), uuid::Uuid::new_v4()));
        assert!(!finish_ok(&mut r, got.id(), uuid::Uuid::new_v4()));
        assert!(finish_ok(&mut r, got.id(), got.token()));
    }
}

#[test]
fn a_hostile_search_path_cannot_redirect_the_api() {
    let mut c = connect();
    let schema = unique("evil");
    let job = unique("sp");
    // A look-alike table and function first on the path must not be used.
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.sys_cron_executions (LIKE lease_sched.sys_cron_executions);
         CREATE FUNCTION {schema}.gen_random_uuid() RETURNS uuid LANGUAGE sql AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $$;
         SET search_path = {schema}, lease_sched, public"
    ))
    .unwrap();
    let r = claim(&mut c, &job, plan(), "r1");
    assert_eq!(r.outcome, "won");
    assert_ne!(r.token(), uuid::Uuid::nil());
    let fake: i64 = c.query_one(&format!("SELECT count(*) FROM {schema}.sys_cron_executions"), &[]).unwrap().get(0);
    assert_eq!(fake, 0);
    c.batch_execute(&format!("RESET search_path; DROP SCHEMA {schema} CASCADE")).unwrap();
}

#[test]
fn pg_dump_keeps_the_executions() {
    let mut c = connect();
    let job = unique("dump");
    claim(&mut c, &job, plan(), "r1");
    let dsn = dsn();
    let port = dsn.split_whitespace().find_map(|kv| kv.strip_prefix("port=")).unwrap_or("55440").to_string();
    let out = std::process::Command::new(format!("{}/pg_dump", pgbin()))
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "--data-only", "lease_sched"])
        .output()
        .expect("pg_dump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&job));
}

#[test]
fn concurrent_claims_never_error() {
    // Inserts racing on one key, then steals racing on it, with errors counted.
    let job = unique("noerr");
    let errors = Arc::new(Mutex::new(vec![]));
    let e = errors.clone();
    herd(24, move |i, c| {
        let args = ClaimArgs { stale_timeout: Duration::from_millis(1), max_attempts: 1000, ..Default::default() };
        for k in 0..30 {
            let p = plan() + ChronoDuration::minutes(k % 3);
            if let Err(err) = try_claim_with(c, &job, p, &format!("r{i}"), &args) {
                e.lock().unwrap().push(err.to_string());
            }
        }
    });
    assert!(errors.lock().unwrap().is_empty(), "{:?}", errors.lock().unwrap());
}

/// A reader granted SELECT on the documented views reads the history but can obtain no
/// live lease_token (nor lock_token) from anything it is allowed to read.
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
    let n: i64 =
        r.query_one("SELECT count(*) FROM lease_sched.executions WHERE job_name = $1", &[&job]).unwrap().get(0);
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

// ---------------------------------------------------------------------------------------
// retry backoff at extreme attempts; errors a user can provoke

/// The default backoff saturates at retry_backoff_max for any attempt, however large, and
/// lease_finish never fails on it. Pins the hole where a large attempt overflowed the
/// interval and the finish failed.
#[test]
fn retry_backoff_saturates_at_its_maximum_for_any_attempt() {
    let mut c = connect();
    c.batch_execute("SET lease_sched.retry_backoff_base = '20d'").unwrap();
    for attempt in [31, 32, 39] {
        let l = lease_at_attempt(&mut c, attempt, Duration::from_secs(300));
        let ok = c
            .query_one(
                "SELECT lease_sched.lease_finish(execution_id => $1, lease_token => $2, status => 'FAILED', error_msg => 'x')",
                &[&l.id(), &l.token()],
            )
            .unwrap_or_else(|e| {
                assert_clean_error(&e, "lease_finish");
                panic!("lease_finish FAILED at attempt {attempt}: {e}")
            });
        assert!(ok.get::<_, bool>(0));
        let exact: bool = retry_at_backoff_max(&mut c, l.id());
        assert!(exact, "attempt {attempt}: next_retry_at = finished_at + retry_backoff_max");
    }
    // One definition: the SQL function agrees, for extreme attempts and settings too.
    let text: Vec<String> = c
        .query_one(
            "SELECT ARRAY[lease_sched.retry_backoff(31, '20 days', '1 hour')::text,
                          lease_sched.retry_backoff(2147483647, '20 days', '1 hour')::text,
                          lease_sched.retry_backoff(1, '10 s', '1 hour')::text,
                          lease_sched.retry_backoff(3, '10 s', '1 hour')::text]",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(text, vec!["01:00:00", "01:00:00", "00:00:10", "00:00:40"]);
}

/// Every error a user can provoke is PostgreSQL's own: no Rust backtrace, file name or panic
/// text in message, detail or hint, and never XX000 (internal error) for bad input.
#[test]
fn no_error_a_user_can_provoke_carries_rust_internals() {
    let mut c = connect();
    let l = claim(&mut c, &unique("errs"), plan(), "r1");
    let (id, tok) = (l.id(), l.token());
    let calls = [
        "SELECT * FROM lease_sched.lease_try_claim(NULL, now(), 'r')".to_string(),
        "SELECT * FROM lease_sched.lease_try_claim('j', 'infinity', 'r')".to_string(),
        "SELECT * FROM lease_sched.lease_try_claim('j', now(), 'r', stale_timeout => '178000000 years')".to_string(),
        "SELECT * FROM lease_sched.lease_try_claim('j', '294276-12-31 23:59:59', 'r', stale_timeout => '1 year')".to_string(),
        "SELECT * FROM lease_sched.lease_try_claim('j', now(), 'r', max_attempts => -1)".to_string(),
        format!("SELECT lease_sched.lease_finish('{id}', '{tok}', 'MAYBE')"),
        format!("SELECT lease_sched.lease_finish('{id}', '{tok}', 'FAILED', retry_in => '-1 s')"),
        format!("SELECT lease_sched.lease_finish('{id}', '{tok}', 'FAILED', retry_in => '178000000 years')"),
        format!("SELECT lease_sched.lease_finish('{id}', '{tok}', 'SUCCESS', result => (SELECT jsonb_agg(repeat('x', 100)) FROM generate_series(1, 500)))"),
        "SELECT lease_sched.lease_heartbeat(NULL, NULL)".to_string(),
        "SELECT lease_sched.runtime_register(repeat('x', 100000))".to_string(),
        "SELECT lease_sched.runtime_touch_batch(ARRAY[NULL]::uuid[])".to_string(),
        "SELECT * FROM lease_sched.lock_acquire('x', 'h', '178000000 years')".to_string(),
        "SELECT * FROM lease_sched.lock_acquire('x', 'h', '1 month -31 days')".to_string(),
        "SELECT lease_sched.lease_next_plan('j', '1 month')".to_string(),
        "SELECT lease_sched.lease_next_plan('j', '-1 s')".to_string(),
        "SELECT lease_sched.retry_backoff(NULL, '1 s', '1 h')".to_string(),
        "SELECT lease_sched.retry_backoff(1, '-1 s', '1 h')".to_string(),
        "SELECT lease_sched.run_arm_deadline('infinity', '1 s')".to_string(),
        "CALL lease_sched.run('j', '')".to_string(),
    ];
    let mut c2 = connect();
    c2.batch_execute("SET lease_sched.retry_backoff_base = '20d'").unwrap();
    for sql in &calls {
        if let Err(e) = c2.batch_execute(sql) {
            assert_clean_error(&e, sql);
        }
    }
    // The error of a failing SPI statement inside the extension surfaces as PostgreSQL's own.
    let l = lease_at_attempt(&mut c, 33, Duration::from_secs(300));
    if let Err(e) =
        c2.batch_execute(&format!("SELECT lease_sched.lease_finish('{}', '{}', 'FAILED')", l.id(), l.token()))
    {
        assert_clean_error(&e, "lease_finish at attempt 33");
    }
}

// ---------------------------------------------------------------------------------------
// result payloads

fn finish_with_result(c: &mut Client, l: &Claim, result: &str) -> Result<bool, postgres::Error> {
    c.query_one(
        "SELECT lease_sched.lease_finish(execution_id => $1, lease_token => $2, status => 'SUCCESS', result => $3::text::jsonb)",
        &[&l.id(), &l.token(), &result],
    )
    .map(|r| r.get(0))
}

#[test]
fn results_are_stored_exactly() {
    let mut c = connect();
    for given in [
        r#"{"id": 12345678901234567890123, "pi": 3.14159265358979323846}"#,
        r#"{"big": 1e400, "small": -1.5e-400, "zeros": 1.000000000000000000000}"#,
        r#"[0.1, 100000000000000000000000000000000000001, -0, 1E+2]"#,
    ] {
        let l = claim(&mut c, &unique("result"), plan(), "r1");
        match finish_with_result(&mut c, &l, given) {
            Ok(ok) => assert!(ok),
            Err(e) => panic!("{given}: {e}"),
        }
        let r = c
            .query_one(
                "SELECT result = $2::text::jsonb, result::text, $2::text::jsonb::text FROM lease_sched.sys_cron_executions WHERE id = $1",
                &[&l.id(), &given],
            )
            .unwrap();
        let (same, stored, expected): (bool, String, String) = (r.get(0), r.get(1), r.get(2));
        assert!(same, "{given}: stored {stored}");
        assert_eq!(stored, expected);
    }
}

#[test]
fn odd_results_are_stored_or_refused_with_a_data_error_and_big_ones_keep_the_lease() {
    let mut c = connect();
    c.batch_execute("SET statement_timeout = '60s'").unwrap();
    for (what, sql) in [
        ("1e400", "'1e400'".to_string()),
        ("deep", "repeat('[', 5000) || repeat(']', 5000)".to_string()),
        ("deeper", "repeat('{\"a\":', 3000) || '1' || repeat('}', 3000)".to_string()),
        ("huge number", "repeat('9', 20000)".to_string()),
    ] {
        let l = claim(&mut c, &unique("odd"), plan(), "r1");
        let r = c.query_one(
            &format!(
                "SELECT lease_sched.lease_finish(execution_id => $1, lease_token => $2, status => 'SUCCESS', result => ({sql})::jsonb)"
            ),
            &[&l.id(), &l.token()],
        );
        match r {
            Ok(row) => {
                assert!(row.get::<_, bool>(0), "{what}");
                let same: bool = c
                    .query_one(
                        &format!("SELECT result = ({sql})::jsonb FROM lease_sched.sys_cron_executions WHERE id = $1"),
                        &[&l.id()],
                    )
                    .unwrap()
                    .get(0);
                assert!(same, "{what} stored exactly");
            }
            Err(e) => {
                let state = sqlstate(&e);
                assert!(state.starts_with("22") || state.starts_with("54"), "{what}: {state} {e}");
                assert_clean_error(&e, what);
                assert!(heartbeat(&mut c, l.id(), l.token()), "{what}: the lease is kept");
            }
        }
    }
    // Over 16 KiB: 22001, and the lease stays RUNNING for a smaller result.
    let l = claim(&mut c, &unique("big"), plan(), "r1");
    let big = format!("{{\"blob\": \"{}\"}}", "x".repeat(17 * 1024));
    let e = finish_with_result(&mut c, &l, &big).expect_err("over 16 KiB");
    assert_eq!(sqlstate(&e), "22001", "{e}");
    assert_clean_error(&e, "16 KiB");
    assert_eq!(status_of(&mut c, l.id()), "RUNNING");
    assert!(heartbeat(&mut c, l.id(), l.token()));
    assert!(finish_with_result(&mut c, &l, r#"{"ok": true}"#).unwrap());
}
