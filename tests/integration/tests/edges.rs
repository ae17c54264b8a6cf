//! Buffered touches survive failed and rolled-back
//! flushes and locked rows; retry backoff saturates and errors carry no Rust internals;
//! `result` is stored exactly; retention keeps what may still run and each job's cursor; a
//! plan in the future does not silence the planner.
//!
//! The touch-buffer tests share the one shared-memory buffer (runtime_pending counts all of
//! it), so they run one at a time (BUFFER), and so do the tests that call sweep() (which may
//! flush the buffer); nothing else in this file touches runtimes.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lease_sched_integration::*;
use postgres::Client;
use uuid::Uuid;

static BUFFER: Mutex<()> = Mutex::new(());

fn buffer_lock() -> std::sync::MutexGuard<'static, ()> {
    BUFFER.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` runtimes whose rows are `ago` seconds behind, each with one touch buffered.
fn runtimes_with_touch(c: &mut Client, n: usize, ago: i64) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| register_runtime(c)).collect();
    flush(c);
    for &id in &ids {
        set_last_seen_ago(c, id, ago);
    }
    for &id in &ids {
        assert!(touch(c, id));
    }
    assert_eq!(pending(c), n as i64, "the touches are buffered");
    ids
}

fn runtime_with_touch(c: &mut Client, ago: i64) -> Uuid {
    runtimes_with_touch(c, 1, ago)[0]
}

fn seen_ago(c: &mut Client, id: Uuid) -> f64 {
    runtime_state(c, id).1
}

fn lock_row(id: Uuid) -> Client {
    let mut holder = connect();
    holder.batch_execute("BEGIN").unwrap();
    holder.execute("SELECT 1 FROM lease_sched.runtimes WHERE id = $1 FOR UPDATE", &[&id]).unwrap();
    holder
}

// ---- 7. buffered touches ------------------------------------------------------------

#[test]
fn a_flush_skips_a_locked_runtime_and_keeps_its_touch_for_the_next_flush() {
    let _g = buffer_lock();
    let mut c = connect();
    let ids = runtimes_with_touch(&mut c, 2, 120);
    let (locked, free) = (ids[0], ids[1]);
    let mut holder = lock_row(locked);

    c.batch_execute("SET lock_timeout = '500ms'").unwrap();
    let started = Instant::now();
    let written = c.query_one("SELECT lease_sched.runtime_flush()", &[]).expect("the flush does not fail on a locked row");
    assert!(started.elapsed() < Duration::from_millis(450), "nor waits for it ({:?})", started.elapsed());
    assert_eq!(written.get::<_, i64>(0), 1, "the other runtime's touch is written");
    assert_eq!(pending(&mut c), 1, "the locked runtime's touch stays buffered");
    assert!(seen_ago(&mut c, free) < 60.0);
    assert!(seen_ago(&mut c, locked) >= 115.0);

    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(flush(&mut c), 1, "the next flush writes it");
    assert_eq!(pending(&mut c), 0);
    assert!(seen_ago(&mut c, locked) < 60.0);
}

#[test]
fn a_flush_rolled_back_to_a_savepoint_or_with_its_transaction_keeps_the_touches() {
    let _g = buffer_lock();
    let mut c = connect();
    let id = runtime_with_touch(&mut c, 120);
    assert_eq!(pending(&mut c), 1);

    c.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    assert_eq!(flush(&mut c), 1);
    c.batch_execute("ROLLBACK TO SAVEPOINT s; COMMIT").unwrap();
    assert_eq!(pending(&mut c), 1, "a flush rolled back to its savepoint keeps its touches");
    assert!(seen_ago(&mut c, id) >= 115.0);

    c.batch_execute("BEGIN").unwrap();
    assert_eq!(flush(&mut c), 1);
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(pending(&mut c), 1, "a flush whose transaction rolls back keeps its touches");
    assert!(seen_ago(&mut c, id) >= 115.0);

    // A flush that fails outright (here: cancelled by a statement timeout on a lock wait
    // that PostgreSQL takes before the flush statement) keeps them too.
    c.batch_execute("BEGIN").unwrap();
    assert_eq!(flush(&mut c), 1);
    let e = c.batch_execute("SELECT 1/0").expect_err("the transaction fails after the flush");
    assert_eq!(sqlstate(&e), "22012");
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(pending(&mut c), 1, "an aborted transaction keeps its flush's touches");

    assert_eq!(flush(&mut c), 1, "a later flush writes them");
    assert_eq!(pending(&mut c), 0);
    assert!(seen_ago(&mut c, id) < 60.0);
}

#[test]
fn a_locked_runtime_row_does_not_stop_the_sweeps() {
    let _g = buffer_lock();
    let mut c = connect();
    // Silent (a sweep candidate) with a touch buffered: the sweep wants to write this row.
    let id = runtime_with_touch(&mut c, 3 * 3600);
    let mut holder = lock_row(id);
    let errors = stat(&mut c, "sweep_errors");
    let sweeps = stat(&mut c, "sweeps");
    let lease = abandoned_lease(&mut c);
    assert!(
        wait_until(Duration::from_secs(10), || status_of(&mut c, lease.id()) == "FAILED"),
        "the abandoned lease failed while a runtime row is locked"
    );
    // Keep the row locked over several sweep intervals (1 s in the test cluster).
    std::thread::sleep(Duration::from_secs(4));
    assert!(stat(&mut c, "sweeps") >= sweeps + 3, "sweeps ran");
    assert_eq!(stat(&mut c, "sweep_errors"), errors, "no sweep failed on the locked row");
    assert_eq!(pending(&mut c), 1, "its touch stays buffered");
    let (status, _) = runtime_state(&mut c, id);
    assert_eq!(status, "online", "a runtime with a buffered touch is not marked offline");
    holder.batch_execute("COMMIT").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || seen_ago(&mut c, id) < 60.0),
        "once unlocked, the sweep writes the touch"
    );
    assert_eq!(runtime_state(&mut c, id).0, "online");
}

// ---- 10. retry backoff and error hygiene ---------------------------------------------

fn assert_clean_error(e: &postgres::Error, what: &str) {
    let Some(db) = e.as_db_error() else { panic!("{what}: not a server error: {e}") };
    for text in [Some(db.message()), db.detail(), db.hint()].into_iter().flatten() {
        for bad in ["backtrace", ".rs:", "pgrx", "panicked"] {
            assert!(!text.contains(bad), "{what}: the error carries {bad:?}: {text}");
        }
    }
    assert_ne!(db.code().code(), "XX000", "{what}: an internal error: {}", db.message());
}

/// A lease of a fresh job with max_attempts 40, pushed to `attempt` by hand.
fn lease_at_attempt(c: &mut Client, attempt: i32, stale_timeout: Duration) -> Claim {
    let args = ClaimArgs { max_attempts: 40, stale_timeout, allow_stale_reentry: false };
    let l = claim_with(c, &unique("backoff"), plan(), "r1", &args);
    c.execute("UPDATE lease_sched.sys_cron_executions SET attempt = $2 WHERE id = $1", &[&l.id(), &attempt]).unwrap();
    l
}

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
        let exact: bool = c
            .query_one(
                "SELECT next_retry_at = finished_at + current_setting('lease_sched.retry_backoff_max')::interval
                   FROM lease_sched.sys_cron_executions WHERE id = $1",
                &[&l.id()],
            )
            .unwrap()
            .get(0);
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

/// One lease whose backoff would overflow does not poison the sweep: the other abandoned
/// leases still fail (0.1.0: every sweep failed with "interval out of range").
#[test]
fn a_lease_at_a_huge_attempt_does_not_poison_the_sweep() {
    let _g = buffer_lock(); // sweep() may flush the touch buffer
    let mut c = connect();
    let poison = lease_at_attempt(&mut c, 35, Duration::from_secs(3600));
    let other = claim_with(
        &mut c,
        &unique("victim"),
        plan(),
        "r1",
        &ClaimArgs { stale_timeout: Duration::from_secs(3600), allow_stale_reentry: false, ..Default::default() },
    );
    // Make both stale inside this transaction (so the background sweeper, which skips
    // locked rows, leaves them to us) and sweep with the overflowing setting.
    c.batch_execute("BEGIN; SET LOCAL lease_sched.retry_backoff_base = '20d'").unwrap();
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - interval '1 second' WHERE id = ANY($1)",
        &[&vec![poison.id(), other.id()]],
    )
    .unwrap();
    let swept = c.query_one("SELECT leases_failed FROM lease_sched.sweep()", &[]);
    let failed: i64 = match swept {
        Ok(r) => r.get(0),
        Err(e) => {
            assert_clean_error(&e, "sweep");
            panic!("the sweep failed: {e}");
        }
    };
    c.batch_execute("COMMIT").unwrap();
    assert!(failed >= 2, "both abandoned leases failed ({failed})");
    assert_eq!(status_of(&mut c, other.id()), "FAILED");
    assert_eq!(status_of(&mut c, poison.id()), "FAILED");
    let capped: bool = c
        .query_one(
            "SELECT next_retry_at = finished_at + current_setting('lease_sched.retry_backoff_max')::interval
               FROM lease_sched.sys_cron_executions WHERE id = $1",
            &[&poison.id()],
        )
        .unwrap()
        .get(0);
    assert!(capped);
}

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
    if let Err(e) = c2.batch_execute(&format!("SELECT lease_sched.lease_finish('{}', '{}', 'FAILED')", l.id(), l.token())) {
        assert_clean_error(&e, "lease_finish at attempt 33");
    }
}

// ---- 11. result payloads -------------------------------------------------------------

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
                    .query_one(&format!("SELECT result = ({sql})::jsonb FROM lease_sched.sys_cron_executions WHERE id = $1"), &[&l.id()])
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

// ---- 12. retention -------------------------------------------------------------------

fn exists(c: &mut Client, id: Uuid) -> bool {
    c.query_one("SELECT EXISTS (SELECT 1 FROM lease_sched.sys_cron_executions WHERE id = $1)", &[&id]).unwrap().get(0)
}

#[test]
fn retention_keeps_pending_retries_and_each_jobs_latest_row() {
    let _g = buffer_lock(); // sweep() may flush the touch buffer
    let mut c = connect();
    let retention: String = c.query_one("SHOW lease_sched.retention", &[]).unwrap().get(0);
    let long_ago = "400 days";
    // A FAILED plan waiting for its retry (attempts left, next_retry_at ahead), then a later plan.
    let job = unique("ret_retry");
    let pending_retry = claim(&mut c, &job, plan(), "r1");
    assert!(finish_failed(&mut c, pending_retry.id(), pending_retry.token(), Duration::from_secs(10 * 86400)));
    let later = claim(&mut c, &job, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, later.id(), later.token()));
    // A job with two finished plans: the older goes, the latest (the planner's cursor) stays.
    let job2 = unique("ret_old");
    let old = claim(&mut c, &job2, plan(), "r1");
    assert!(finish_ok(&mut c, old.id(), old.token()));
    let latest = claim(&mut c, &job2, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, latest.id(), latest.token()));
    // A FAILED plan with no attempts left is prunable like a success.
    let job3 = unique("ret_exhausted");
    let args = ClaimArgs { max_attempts: 1, ..Default::default() };
    let exhausted = claim_with(&mut c, &job3, plan(), "r1", &args);
    assert!(finish_failed(&mut c, exhausted.id(), exhausted.token(), Duration::from_secs(10 * 86400)));
    let latest3 = claim(&mut c, &job3, plan() + chrono::Duration::hours(1), "r1");
    assert!(finish_ok(&mut c, latest3.id(), latest3.token()));

    let ids = vec![pending_retry.id(), later.id(), old.id(), latest.id(), exhausted.id(), latest3.id()];
    c.execute(
        &format!("UPDATE lease_sched.sys_cron_executions SET finished_at = now() - interval '{long_ago}' WHERE id = ANY($1)"),
        &[&ids],
    )
    .unwrap();
    // The background sweeper prunes (every second); an explicit sweep too.
    c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !exists(&mut c, old.id()) && !exists(&mut c, exhausted.id())),
        "finished rows older than retention ({retention}) are pruned"
    );
    c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
    assert!(exists(&mut c, pending_retry.id()), "a FAILED plan waiting for its retry is kept");
    assert!(exists(&mut c, later.id()), "the latest row of a job is kept");
    assert!(exists(&mut c, latest.id()), "the latest row of a job is kept");
    assert!(exists(&mut c, latest3.id()));
    // The kept plan is still retried as attempt 2, not won again as attempt 1.
    c.execute("UPDATE lease_sched.sys_cron_executions SET next_retry_at = now() - interval '1 s' WHERE id = $1", &[&pending_retry.id()])
        .unwrap();
    let retry = claim(&mut c, &job, plan(), "r2");
    assert_ne!(retry.outcome, "conflicted");
    assert_eq!(retry.attempt, Some(2), "the retry is attempt 2 ({}), not a fresh attempt 1", retry.outcome);
}

// ---- 13. the planner never looks into the future ---------------------------------------

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

#[test]
fn lease_next_plan_never_returns_a_plan_after_now() {
    let mut c = connect();
    for (every, catch_up) in [("1 minute", true), ("1 hour", false), ("1 day", true), ("7 days", false), ("1 second", true)] {
        // Future plans in every state: done, failed with a retry due now, and a stale lease
        // that may be stolen (0.1.0 offered the last two as due, in 2099).
        let job = unique("never_future");
        let l = claim(&mut c, &job, "2030-06-01T12:00:00Z".parse().unwrap(), "r1");
        assert!(finish_ok(&mut c, l.id(), l.token()));
        let l = claim(&mut c, &job, "2099-01-01T00:00:00Z".parse().unwrap(), "r1");
        assert!(finish_failed(&mut c, l.id(), l.token(), Duration::ZERO));
        let stale = unique("never_future_stale");
        claim_with(&mut c, &stale, "2099-01-01T00:00:00Z".parse().unwrap(), "r1",
                   &ClaimArgs { stale_timeout: Duration::from_millis(1), ..Default::default() });
        std::thread::sleep(Duration::from_millis(5));
        for j in [&stale] {
            let p: Option<DateTime<Utc>> = c
                .query_one("SELECT lease_sched.lease_next_plan($1, $2::text::interval, catch_up => $3)", &[j, &every, &catch_up])
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

/// A stale lease that a later plan of its job superseded is failed by the sweep, even
/// though it may be stolen: the planner only offers the latest plan, so no scheduler would
/// come back for it. (0.1.0 left it RUNNING forever: two schedulers on either side of a
/// bucket boundary, the first one dying, was enough.)
#[test]
fn a_stale_lease_superseded_by_a_later_plan_is_failed_by_the_sweep() {
    let mut c = connect();
    let job = unique("superseded");
    let short = ClaimArgs { stale_timeout: Duration::from_millis(300), ..Default::default() };
    let orphan = claim_with(&mut c, &job, plan(), "dies", &short);
    assert_eq!(orphan.outcome, "won");
    let later = claim_with(&mut c, &job, plan() + chrono::Duration::minutes(1), "lives", &short);
    assert!(finish_ok(&mut c, later.id(), later.token()));
    assert!(
        wait_until(Duration::from_secs(10), || status_of(&mut c, orphan.id()) == "FAILED"),
        "the superseded stale lease is failed by the sweeper"
    );
    let code: Option<String> = c
        .query_one("SELECT error_code FROM lease_sched.sys_cron_executions WHERE id = $1", &[&orphan.id()])
        .unwrap()
        .get(0);
    assert_eq!(code.as_deref(), Some("stale_timeout"));
    // Its holder is fenced out, and with attempts left the plan can still be claimed explicitly.
    assert!(!heartbeat(&mut c, orphan.id(), orphan.token()));

    // The latest plan, stale but stealable, is left for its thief.
    let job2 = unique("latest_stale");
    let latest = claim_with(&mut c, &job2, plan(), "dies", &short);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(status_of(&mut c, latest.id()), "RUNNING", "a stealable latest plan waits for its thief");
    assert_eq!(claim(&mut c, &job2, plan(), "thief").outcome, "stole");
}
