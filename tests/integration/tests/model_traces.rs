//! The extension's SQL implements exactly the state machine of crates/lease_model: random
//! traces of claims, heartbeats, finishes, sweeps and clock ticks run against both, and
//! every outcome and every resulting row must agree.
//!
//! Time: one model unit is one hour. A tick moves every stored time of the trace's row one
//! hour back (the same, for the row, as the clock moving one hour on), and within a tick
//! each operation happens a little later than the one before, as on a real clock. The
//! background sweeper is paused for the duration (sweep_interval = 1h) so that sweeps
//! happen exactly where the trace puts them.
use std::time::Duration;

use lease_model::{self as model, ClaimOutcome, ClaimParams, Execution, Status};
use lease_sched_integration::*;
use proptest::prelude::*;

const UNIT: i64 = 1_000_000; // model time units per hour (ops within a tick step by 1)
const RUNNERS: usize = 3;

#[derive(Clone, Debug)]
enum Op {
    Claim { runner: usize, reentry: bool, max_attempts: i32 },
    Heartbeat { runner: usize },
    Finish { runner: usize, success: bool },
    Sweep,
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..RUNNERS, any::<bool>(), 1..4i32).prop_map(|(runner, reentry, max_attempts)| Op::Claim { runner, reentry, max_attempts }),
        2 => (0..RUNNERS).prop_map(|runner| Op::Heartbeat { runner }),
        2 => (0..RUNNERS, any::<bool>()).prop_map(|(runner, success)| Op::Finish { runner, success }),
        1 => Just(Op::Sweep),
        3 => Just(Op::Tick),
    ]
}

struct PausedSweeper;

impl PausedSweeper {
    fn new() -> Self {
        let mut c = connect();
        c.batch_execute("ALTER SYSTEM SET lease_sched.sweep_interval = '1h'").unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
        std::thread::sleep(Duration::from_millis(1500)); // a sweep already due may still run
        PausedSweeper
    }
}

impl Drop for PausedSweeper {
    fn drop(&mut self) {
        let mut c = connect();
        c.batch_execute("ALTER SYSTEM RESET lease_sched.sweep_interval").unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
    }
}

struct Runner {
    model_token: u64,
    sql: (uuid::Uuid, uuid::Uuid),
}

fn sql_row(c: &mut postgres::Client, job: &str) -> Option<(Status, i32, i32)> {
    c.query_opt(
        "SELECT status, attempt, max_attempts FROM lease_sched.sys_cron_executions WHERE job_name = $1",
        &[&job],
    )
    .unwrap()
    .map(|r| (Status::from_sql(r.get::<_, &str>(0)).unwrap(), r.get(1), r.get(2)))
}

fn run_trace(c: &mut postgres::Client, ops: &[Op]) -> Result<(), TestCaseError> {
    let job = unique("trace");
    let mut row: Option<Execution> = None;
    let mut held: Vec<Option<Runner>> = (0..RUNNERS).map(|_| None).collect();
    let (mut ticks, mut step, mut next_token) = (0i64, 0i64, 1u64);
    for op in ops {
        step += 1;
        let now = ticks * UNIT + step;
        match op {
            Op::Tick => {
                ticks += 1;
                c.execute(
                    "UPDATE lease_sched.sys_cron_executions
                        SET stale_after = stale_after - interval '1 hour', next_retry_at = next_retry_at - interval '1 hour',
                            started_at = started_at - interval '1 hour', heartbeat_at = heartbeat_at - interval '1 hour'
                      WHERE job_name = $1",
                    &[&job],
                )
                .unwrap();
            }
            Op::Claim { runner, reentry, max_attempts } => {
                if held[*runner].is_some() {
                    continue;
                }
                let params =
                    ClaimParams { allow_stale_reentry: *reentry, stale_timeout: 2 * UNIT, max_attempts: *max_attempts };
                let expected = model::claim(&mut row, now, params, next_token, next_token as i64);
                let got = try_claim_with(
                    c,
                    &job,
                    plan(),
                    &format!("r{runner}"),
                    &ClaimArgs {
                        stale_timeout: Duration::from_secs(7200),
                        max_attempts: *max_attempts,
                        allow_stale_reentry: *reentry,
                    },
                )
                .unwrap();
                let got_outcome = match got.outcome.as_str() {
                    "won" => ClaimOutcome::Won,
                    "stole" => ClaimOutcome::Stole,
                    _ => ClaimOutcome::Conflicted,
                };
                prop_assert_eq!(got_outcome, expected, "claim by r{} after {:?}", runner, ops);
                if expected != ClaimOutcome::Conflicted {
                    prop_assert_eq!(got.attempt, row.as_ref().map(|r| r.attempt));
                    held[*runner] = Some(Runner { model_token: next_token, sql: (got.id(), got.token()) });
                    next_token += 1;
                }
            }
            Op::Heartbeat { runner } => {
                let Some(r) = &held[*runner] else { continue };
                let expected = model::heartbeat(&mut row, r.model_token, now);
                prop_assert_eq!(heartbeat(c, r.sql.0, r.sql.1), expected, "heartbeat by r{}", runner);
                if !expected {
                    held[*runner] = None;
                }
            }
            Op::Finish { runner, success } => {
                let Some(r) = held[*runner].take() else { continue };
                let status = if *success { Status::Success } else { Status::Failed };
                let expected = model::finish(&mut row, r.model_token, now, status, UNIT);
                let got: bool = c
                    .query_one(
                        "SELECT lease_sched.lease_finish($1, $2, $3, retry_in => '1 hour')",
                        &[&r.sql.0, &r.sql.1, &status.as_sql()],
                    )
                    .unwrap()
                    .get(0);
                prop_assert_eq!(got, expected, "finish {:?} by r{}", status, runner);
            }
            Op::Sweep => {
                model::sweep(&mut row, now, UNIT);
                c.query("SELECT * FROM lease_sched.sweep()", &[]).unwrap();
            }
        }
        let expected_row = row.as_ref().map(|r| (r.status, r.attempt, r.max_attempts));
        prop_assert_eq!(sql_row(c, &job), expected_row, "row after {:?}", op);
    }
    Ok(())
}

#[test]
fn sql_and_model_agree_on_random_traces() {
    let _paused = PausedSweeper::new();
    let c = std::cell::RefCell::new(connect());
    // The sweep's retry delay for abandoned leases is the default backoff: make it one unit.
    c.borrow_mut()
        .batch_execute("SET lease_sched.retry_backoff_base = '1h'; SET lease_sched.retry_backoff_max = '1h'")
        .unwrap();
    let cases = std::env::var("LEASE_TRACE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let config = ProptestConfig { cases, max_shrink_iters: 100, ..ProptestConfig::default() };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..30))| {
        run_trace(&mut c.borrow_mut(), &ops)?;
    });
}
