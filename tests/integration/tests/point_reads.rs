//! The claim's probe and the touch's status check read their row through the index without
//! SPI (src/lookup.rs). They must see exactly what the SQL statement they replaced saw: rows
//! this transaction wrote earlier (in the same statement too), rows other sessions committed
//! before the read (READ COMMITTED), and only the transaction's snapshot in REPEATABLE READ.
use lease_sched_integration::*;

#[test]
fn a_second_claim_of_one_key_in_the_same_statement_sees_the_first() {
    let mut c = connect();
    let job = unique("point_same_stmt");
    let rows = c
        .query(
            "SELECT (lease_sched.lease_try_claim($1, '2026-01-01 03:00+00', 'a')).outcome,
                    (lease_sched.lease_try_claim($1, '2026-01-01 03:00+00', 'b')).outcome,
                    (lease_sched.lease_try_claim($1, '2026-01-01 03:00+00', 'b')).execution_id",
            &[&job],
        )
        .unwrap();
    let (first, second): (String, String) = (rows[0].get(0), rows[0].get(1));
    assert_eq!((first.as_str(), second.as_str()), ("won", "conflicted"));
    let id: Option<uuid::Uuid> = rows[0].get(2);
    let stored: uuid::Uuid =
        c.query_one("SELECT id FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job]).unwrap().get(0);
    assert_eq!(id, Some(stored), "the conflict names the row the same statement inserted");
}

#[test]
fn a_claim_later_in_the_same_transaction_sees_the_row_and_a_rollback_forgets_it() {
    let mut c = connect();
    let job = unique("point_same_xact");
    c.batch_execute("BEGIN").unwrap();
    let first = claim(&mut c, &job, plan(), "a");
    assert_eq!(first.outcome, "won");
    let again = claim(&mut c, &job, plan(), "b");
    assert_eq!(again.outcome, "conflicted");
    assert_eq!(again.execution_id, first.execution_id);
    c.batch_execute("ROLLBACK").unwrap();
    assert_eq!(claim(&mut c, &job, plan(), "c").outcome, "won", "the rolled-back row is gone");
}

#[test]
fn read_committed_sees_a_row_committed_after_the_transaction_began() {
    let mut a = connect();
    let mut b = connect();
    let job = unique("point_rc");
    a.batch_execute("BEGIN; SELECT 1").unwrap();
    let won = claim(&mut b, &job, plan(), "b");
    assert_eq!(won.outcome, "won");
    let seen = claim(&mut a, &job, plan(), "a");
    assert_eq!(seen.outcome, "conflicted");
    assert_eq!(seen.execution_id, won.execution_id, "a new statement snapshot sees b's committed row");
    a.batch_execute("COMMIT").unwrap();
}

#[test]
fn repeatable_read_does_not_see_a_row_committed_after_its_snapshot() {
    let mut a = connect();
    let mut b = connect();
    let job = unique("point_rr");
    a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1").unwrap();
    assert_eq!(claim(&mut b, &job, plan(), "b").outcome, "won");
    // The row is invisible to a's snapshot: its insert conflicts with a row it cannot see,
    // which REPEATABLE READ reports as a serialization failure (as the SQL probe did).
    let e = try_claim_with(&mut a, &job, plan(), "a", &ClaimArgs::default()).expect_err("a serialization failure");
    assert_eq!(sqlstate(&e), "40001", "{e}");
    a.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn a_touch_sees_a_runtime_registered_in_the_same_statement_and_not_a_deleted_one() {
    let mut c = connect();
    let touched: bool = c
        .query_one("SELECT lease_sched.runtime_touch(lease_sched.runtime_register($1))", &[&unique("point_rt")])
        .unwrap()
        .get(0);
    assert!(touched, "the runtime registered by this very statement is found");
    let id: uuid::Uuid = c.query_one("SELECT lease_sched.runtime_register($1)", &[&unique("point_rt")]).unwrap().get(0);
    c.execute("DELETE FROM lease_sched.runtimes WHERE id = $1", &[&id]).unwrap();
    let touched: bool = c.query_one("SELECT lease_sched.runtime_touch($1)", &[&id]).unwrap().get(0);
    assert!(!touched, "a deleted runtime is unknown");
}
