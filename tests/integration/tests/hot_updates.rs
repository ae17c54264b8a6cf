//! Heartbeats must be HOT updates (no index names a column they change). Alone in its
//! own test binary so no other test's writes move the table's statistics meanwhile.
use lease_sched_integration::*;

#[test]
fn heartbeats_are_hot_updates() {
    let job = unique("hot");
    let mut c = connect();
    let r = claim(&mut c, &job, plan(), "r1");
    c.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    let stats = |c: &mut postgres::Client| -> (i64, i64) {
        c.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
        let row = c
            .query_one(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'lease_sched.sys_cron_executions'::regclass",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    let (upd0, hot0) = stats(&mut c);
    for _ in 0..200 {
        assert!(heartbeat(&mut c, r.id(), r.token()));
    }
    let (upd1, hot1) = stats(&mut c);
    let (upd, hot) = (upd1 - upd0, hot1 - hot0);
    assert!(upd >= 200);
    assert!(hot as f64 >= 0.9 * 200.0, "HOT {hot} of {upd} updates");
}
