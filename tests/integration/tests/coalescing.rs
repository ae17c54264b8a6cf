//! The point of the touch buffer: with beats far more frequent than the flush interval,
//! row writes are a small fraction of beats. Counted with pg_stat_user_tables, alone in
//! this test binary so no other test writes the runtimes table meanwhile.
use std::time::Duration;

use lease_sched_integration::*;

fn runtime_updates(c: &mut postgres::Client) -> (i64, i64) {
    c.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
    let r = c
        .query_one(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = 'lease_sched.runtimes'::regclass",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn beats_coalesce_into_a_fraction_of_row_writes() {
    let mut c = connect();
    let ids: Vec<uuid::Uuid> = (0..5).map(|_| register_runtime(&mut c)).collect();
    flush(&mut c);
    let (upd0, hot0) = runtime_updates(&mut c);
    let mut beats = 0;
    for _ in 0..30 {
        for id in &ids {
            assert!(touch(&mut c, *id));
            beats += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (upd1, _) = runtime_updates(&mut c);
    assert_eq!(upd1 - upd0, 0, "{beats} beats, no row written before the flush");
    assert_eq!(flush(&mut c), 5);
    let (upd2, hot2) = runtime_updates(&mut c);
    assert_eq!(upd2 - upd0, 5, "{beats} beats cost 5 row writes");
    assert_eq!(hot2 - hot0, 5, "and every one of them is a HOT update");
}
