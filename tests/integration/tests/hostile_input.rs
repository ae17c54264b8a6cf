//! Hostile input: proptest drives the SQL API with random NULLs, empty, huge and unicode
//! strings, extreme intervals and timestamps, random tokens and arrays with NULLs and up to
//! 10^5 elements. Every call must succeed with a valid result or fail with a class 22 or 54
//! SQLSTATE; the server must stay up; the tables' invariants must hold afterwards.
//! LEASE_HOSTILE_CASES sets the number of cases (default 300; `make faults` runs more).
use std::sync::atomic::{AtomicU64, Ordering};

use lease_sched_integration::*;
use proptest::prelude::*;

static CALLS: AtomicU64 = AtomicU64::new(0);

/// A SQL literal (or NULL) for a text argument.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("''".to_string()),
        "[a-z]{1,12}".prop_map(|s| format!("'{s}'")),
        "\\PC{1,40}".prop_map(|s| format!("'{}'", s.replace('\'', "''").replace('\0', ""))),
        (1usize..200_000).prop_map(|n| format!("repeat('é', {n})")),
        Just("'x''); DROP TABLE lease_sched.sys_cron_executions; --'".to_string()),
    ]
}

fn interval() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("'0'".to_string()),
        Just("'-1 microsecond'".to_string()),
        Just("'1 microsecond'".to_string()),
        Just("'178000000 years'".to_string()),
        Just("'-178000000 years'".to_string()),
        Just("'1 month -31 days'".to_string()),
        Just("'2147483647 days'".to_string()),
        (0i64..10_000_000_000).prop_map(|us| format!("'{us} microseconds'")),
    ]
}

fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("'infinity'".to_string()),
        Just("'-infinity'".to_string()),
        Just("'4713-01-01 BC'".to_string()),
        Just("'294276-12-31 23:59:59'".to_string()),
        Just("now()".to_string()),
        (0i64..4_000_000_000).prop_map(|s| format!("to_timestamp({s})")),
    ]
}

fn int() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("-2147483648".to_string()),
        Just("2147483647".to_string()),
        (-5i32..10).prop_map(|n| n.to_string()),
    ]
}

fn uuid_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("gen_random_uuid()".to_string()),
        Just("'00000000-0000-0000-0000-000000000000'".to_string()),
        // a real row's id or token, so calls also reach the write paths
        Just("(SELECT id FROM lease_sched.sys_cron_executions ORDER BY random() LIMIT 1)".to_string()),
        Just("(SELECT lease_token FROM lease_sched.sys_cron_executions ORDER BY random() LIMIT 1)".to_string()),
    ]
}

/// A lock's secret (a uuid), real or not.
fn lock_token() -> impl Strategy<Value = String> {
    prop_oneof![uuid_lit(), Just("(SELECT lock_token FROM lease_sched.locks ORDER BY random() LIMIT 1)".to_string()),]
}

fn boolean() -> impl Strategy<Value = String> {
    prop_oneof![Just("NULL"), Just("true"), Just("false")].prop_map(str::to_string)
}

fn uuid_array() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_string()),
        Just("'{}'::uuid[]".to_string()),
        Just("ARRAY[NULL]::uuid[]".to_string()),
        (0usize..100_001).prop_map(|n| format!("ARRAY(SELECT gen_random_uuid() FROM generate_series(1, {n}))")),
        (1usize..1000).prop_map(|n| format!(
            "ARRAY(SELECT CASE WHEN g % 7 = 0 THEN NULL ELSE gen_random_uuid() END FROM generate_series(1, {n}) g)"
        )),
        Just("ARRAY(SELECT id FROM lease_sched.runtimes LIMIT 50)".to_string()),
    ]
}

fn call() -> impl Strategy<Value = String> {
    prop_oneof![
        (text(), timestamp(), text(), text(), text(), interval(), int(), boolean()).prop_map(
            |(j, p, r, sk, si, st, m, a)| format!(
                "SELECT * FROM lease_sched.lease_try_claim({j}, {p}, {r}, {sk}, {si}, {st}, {m}, {a})"
            )
        ),
        (uuid_lit(), uuid_lit()).prop_map(|(i, t)| format!("SELECT lease_sched.lease_heartbeat({i}, {t})")),
        (uuid_lit(), uuid_lit(), text(), text(), interval(), int()).prop_map(|(i, t, s, m, r, n)| format!(
            "SELECT lease_sched.lease_finish({i}, {t}, {s}, NULL, {n}, {m}, {m}, {r})"
        )),
        (uuid_lit(), uuid_lit(), prop_oneof![Just("'SUCCESS'"), Just("'FAILED'")], interval())
            .prop_map(|(i, t, s, r)| format!("SELECT lease_sched.lease_finish({i}, {t}, {s}, retry_in => {r})")),
        text().prop_map(|n| format!("SELECT lease_sched.runtime_register({n})")),
        uuid_lit().prop_map(|i| format!("SELECT lease_sched.runtime_touch({i})")),
        uuid_array().prop_map(|a| format!("SELECT cardinality(lease_sched.runtime_touch_batch({a}))")),
        (text(), text(), interval())
            .prop_map(|(n, h, t)| format!("SELECT * FROM lease_sched.lock_acquire({n}, {h}, {t})")),
        (text(), lock_token()).prop_map(|(n, t)| format!("SELECT lease_sched.lock_heartbeat({n}, {t})")),
        (text(), lock_token()).prop_map(|(n, t)| format!("SELECT lease_sched.lock_release({n}, {t})")),
        text().prop_map(|n| format!("SELECT * FROM lease_sched.lock_info({n})")),
        (text(), interval(), boolean())
            .prop_map(|(j, e, c)| format!("SELECT lease_sched.lease_next_plan({j}, {e}, catch_up => {c})")),
        (text(), text(), text())
            .prop_map(|(j, k, i)| format!("SELECT * FROM lease_sched.lease_latest_plan({j}, {k}, {i})")),
    ]
}

fn check_invariants(c: &mut postgres::Client) {
    let broken: i64 = c
        .query_one(
            "SELECT count(*) FROM lease_sched.sys_cron_executions
              WHERE attempt > max_attempts OR attempt < 1
                 OR (status = 'RUNNING' AND (stale_after IS NULL OR finished_at IS NOT NULL))
                 OR (status <> 'RUNNING' AND finished_at IS NULL)
                 OR (status = 'SUCCESS' AND (error_code IS NOT NULL OR next_retry_at IS NOT NULL))
                 OR (status = 'FAILED' AND attempt >= max_attempts AND next_retry_at IS NOT NULL)
                 OR char_length(error_msg) > 4000",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(broken, 0, "rows breaking the table's invariants");
    let dup_tokens: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT fencing_token FROM lease_sched.sys_cron_executions
                                   UNION ALL SELECT fencing_token FROM lease_sched.locks) t
              GROUP BY fencing_token HAVING count(*) > 1 LIMIT 1",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(0);
    assert_eq!(dup_tokens, 0, "a fencing token was handed out twice");
}

#[test]
fn every_call_succeeds_or_fails_with_a_data_error_and_the_server_survives() {
    let cases = std::env::var("LEASE_HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let c = std::cell::RefCell::new(connect());
    c.borrow_mut().batch_execute("SET statement_timeout = '20s'").unwrap();
    let config = ProptestConfig { cases, max_shrink_iters: 50, ..ProptestConfig::default() };
    proptest!(config, |(sql in call())| {
        CALLS.fetch_add(1, Ordering::Relaxed);
        let mut c = c.borrow_mut();
        match c.batch_execute(&sql) {
            Ok(()) => {}
            Err(e) => {
                let state = sqlstate(&e);
                prop_assert!(!c.is_closed(), "connection lost on {sql}: {e}");
                prop_assert!(state.starts_with("22") || state.starts_with("54"), "{sql}\n=> {state} {e}");
            }
        }
    });
    let mut fresh = connect();
    fresh.batch_execute("SELECT 1").expect("the server is up");
    check_invariants(&mut fresh);
    eprintln!("hostile input: {} calls, 0 violations", CALLS.load(Ordering::Relaxed));
}
