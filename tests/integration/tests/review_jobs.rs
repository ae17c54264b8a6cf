//! Hostile review of 0.2.0's job definitions (docs/api.md, "Jobs"). Each test is a hole
//! found by review: it fails on the build under review.
//!
//! job_define accepts any positive `every`, down to one microsecond. Under the default
//! misfire policy ('latest') a gap after the last plan is recorded as SKIPPED rows, at most
//! 1000 per lease_next_plan call, each call returning NULL "until the backlog is written".
//! With an `every` short enough that more than 1000 slots pass between two calls, the
//! backlog grows faster than it is written: the job never runs again, and every call (every
//! pg_cron tick of run()) writes another 1000 rows, forever.
use std::time::Duration;

use lease_sched_integration::*;

#[test]
fn review_a_job_with_a_tiny_every_never_runs_again_after_a_gap() {
    let mut c = connect();
    let job = unique("review_tiny_every");
    let defined = c.query_one("SELECT lease_sched.job_define($1, every => '1 millisecond')", &[&job]);
    if let Err(e) = &defined {
        // Refusing such an `every` (22023 naming it) closes the hole too.
        assert_eq!(sqlstate(e), "22023", "{e}");
        return;
    }
    // One run, finished.
    let plan: chrono::DateTime<chrono::Utc> = c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&job]).unwrap().get(0);
    let won = claim(&mut c, &job, plan, "runner");
    assert_eq!(won.outcome, "won");
    assert!(finish_ok(&mut c, won.id(), won.token()));

    // The runner comes back after two seconds (2000 slots) and asks once a second: as pg_cron would.
    std::thread::sleep(Duration::from_secs(2));
    let mut offered = None;
    for _ in 0..5 {
        let p: Option<chrono::DateTime<chrono::Utc>> = c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&job]).unwrap().get(0);
        if p.is_some() {
            offered = p;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let skipped: i64 = c
        .query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SKIPPED'", &[&job])
        .unwrap()
        .get(0);
    let _ = c.execute("DELETE FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&job]);
    let _ = c.execute("SELECT lease_sched.job_drop($1)", &[&job]);
    assert!(
        offered.is_some(),
        "job_define accepted every => '1 millisecond'; after a 2 s gap five lease_next_plan calls (one a second) \
         returned NULL and wrote {skipped} SKIPPED rows: the 1000-row bound per call never catches up, so the job \
         never runs again"
    );
}

/// job_define accepts a name whose definition fits lease_sched.jobs' key but whose runs do
/// not fit sys_cron_executions' unique key (8 bytes more: plan_time): the job is defined and
/// every run of it fails with an index-size error that names no argument.
#[test]
fn review_job_define_accepts_a_job_that_can_never_be_claimed() {
    let mut c = connect();
    // ~2684 bytes of incompressible text.
    let name: String = c
        .query_one(
            "SELECT left(string_agg(md5(random()::text || g), ''), 2684) FROM generate_series(1, 90) g",
            &[],
        )
        .unwrap()
        .get(0);
    let defined = c.execute("SELECT lease_sched.job_define($1, '1 hour')", &[&name]);
    if let Err(e) = &defined {
        let code = sqlstate(e);
        assert!(code == "22023" || code == "54000", "refused with {code}: {e}");
        return;
    }
    let plan: chrono::DateTime<chrono::Utc> = c.query_one("SELECT lease_sched.lease_next_plan($1)", &[&name]).unwrap().get(0);
    let claimed = c.query_one("SELECT outcome FROM lease_sched.lease_try_claim($1, $2, 'runner')", &[&name, &plan]);
    let _ = c.execute("SELECT lease_sched.job_drop($1)", &[&name]);
    let _ = c.execute("DELETE FROM lease_sched.sys_cron_executions WHERE job_name = $1", &[&name]);
    assert!(
        claimed.is_ok(),
        "job_define accepted a {}-byte job name, but no run of the job can ever be claimed: {:?}",
        name.len(),
        claimed.err().map(|e| e.to_string())
    );
}
