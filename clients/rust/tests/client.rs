//! lease-sched-client against a real cluster (LEASE_SCHED_DSN), with real failures: killed
//! heartbeat backends, a network cut by stopping a TCP proxy, steals, 32 concurrent holders.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use lease_sched_client::{Client, Error, Outcome};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::NoTls;
use uuid::Uuid;

fn dsn() -> String {
    std::env::var("LEASE_SCHED_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=55440 dbname=lease_sched user=postgres".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12])
}

fn plan(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 3, minute, 0).unwrap()
}

async fn db() -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&dsn(), NoTls).await.expect("connect to the test cluster");
    tokio::spawn(conn);
    c
}

/// (status, runner_id, attempt, error_code, error_msg)
async fn row_of(db: &tokio_postgres::Client, id: Uuid) -> (String, String, i32, Option<String>, Option<String>) {
    let r = db
        .query_one(
            "SELECT status, runner_id, attempt, error_code, error_msg FROM lease_sched.sys_cron_executions WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

async fn backend_pid(db: &tokio_postgres::Client, app: &str) -> i32 {
    for _ in 0..200 {
        if let Some(r) =
            db.query_opt("SELECT pid FROM pg_stat_activity WHERE application_name = $1 LIMIT 1", &[&app]).await.unwrap()
        {
            return r.get(0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no backend named {app}");
}

/// Another runner steals: stale now (same transaction, so no heartbeat slips in), then claim.
async fn steal(
    db: &mut tokio_postgres::Client,
    job: &str,
    when: DateTime<Utc>,
    id: Uuid,
    force: bool,
) -> (String, Option<Uuid>) {
    let tx = db.transaction().await.unwrap();
    if force {
        tx.execute(
            "UPDATE lease_sched.sys_cron_executions SET stale_after = clock_timestamp() - interval '1 second' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    }
    let r = tx
        .query_one(
            "SELECT outcome, lease_token FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2,
                 runner_id => 'thief', stale_timeout => '1 minute')",
            &[&job, &when],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    (r.get(0), r.get(1))
}

/// A TCP proxy to the server; `stop` cuts every connection and refuses new ones.
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let kv = |k: &str| dsn().split_whitespace().find_map(|p| p.strip_prefix(k).map(str::to_string));
        let target = format!("{}:{}", kv("host=").unwrap_or("127.0.0.1".into()), kv("port=").unwrap_or("5432".into()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                let target = target.clone();
                t.lock().unwrap().spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        Proxy { port, tasks, accept }
    }
    fn dsn(&self) -> String {
        let rest: Vec<String> = dsn()
            .split_whitespace()
            .filter(|p| !p.starts_with("host=") && !p.starts_with("port="))
            .map(str::to_string)
            .collect();
        format!("host=127.0.0.1 port={} {}", self.port, rest.join(" "))
    }
    fn stop(&self) {
        self.accept.abort();
        self.tasks.lock().unwrap().abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_far_past_its_stale_timeout() {
    let (client, db, job) = (Client::connect(&dsn()).await.unwrap(), db().await, unique("rs_survive"));
    let lease = client.try_claim(&job, plan(0), "holder", Duration::from_secs(1)).await.unwrap().expect("won");
    let work = client.connect_more().await.unwrap();
    let thief = {
        let (client, job) = (client.clone(), job.clone());
        tokio::spawn(async move {
            let mut outcomes = vec![];
            for _ in 0..15 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                outcomes
                    .push(client.try_claim(&job, plan(0), "thief", Duration::from_secs(1)).await.unwrap().is_some());
            }
            outcomes
        })
    };
    work.execute("SELECT pg_sleep(4)", &[]).await.unwrap(); // 4 x stale_timeout
    assert!(thief.await.unwrap().iter().all(|won| !won), "nobody could steal a heartbeated lease");
    lease.check().unwrap();
    // Surviving 4 stale timeouts takes a beat in each; how many more is the machine's business.
    assert!(lease.heartbeats() >= 4, "{} heartbeats", lease.heartbeats());
    let id = lease.execution_id();
    lease.finish(Outcome::success_with(serde_json::json!({"rows": 3}), Some(3))).await.unwrap();
    let (status, runner, attempt, _, _) = row_of(&db, id).await;
    assert_eq!((status.as_str(), runner.as_str(), attempt), ("SUCCESS", "holder", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_finishes_failed_with_its_message() {
    let (client, db, job) = (Client::connect(&dsn()).await.unwrap(), db().await, unique("rs_fail"));
    let lease = client.try_claim(&job, plan(0), "holder", Duration::from_secs(30)).await.unwrap().unwrap();
    assert!(client.try_claim(&job, plan(0), "other", Duration::from_secs(30)).await.unwrap().is_none());
    let work = client.connect_more().await.unwrap();
    let err = work.execute("SELECT 1 / 0", &[]).await.unwrap_err();
    let id = lease.execution_id();
    lease.finish(Outcome::from_error(&err)).await.unwrap();
    let (status, _, _, code, msg) = row_of(&db, id).await;
    assert_eq!((status.as_str(), code.as_deref(), msg.as_deref()), ("FAILED", Some("22012"), Some("division by zero")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_lease_is_lost_within_one_heartbeat_its_query_cancelled_and_never_finished() {
    let (client, mut db, job) = (Client::connect(&dsn()).await.unwrap(), db().await, unique("rs_steal"));
    let ttl = Duration::from_secs(3);
    let lease = client.try_claim(&job, plan(0), "holder", ttl).await.unwrap().unwrap();
    let id = lease.execution_id();
    let work = client.connect_more().await.unwrap();
    lease.cancel_query_on_loss(&work);
    let body = tokio::spawn(async move { work.execute("SELECT pg_sleep(60)", &[]).await.map(|_| ()) });
    let pid = backend_pid(&db, &format!("lease_sched lease {id}")).await;
    db.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (outcome, thief_token) = steal(&mut db, &job, plan(0), id, true).await;
    let stolen_at = Instant::now();
    assert_eq!(outcome, "stole");
    tokio::time::timeout(ttl / 3 + Duration::from_secs(1), lease.lost())
        .await
        .expect("lost within one heartbeat interval");
    let err = tokio::time::timeout(Duration::from_secs(3), body)
        .await
        .expect("the body's query was cancelled")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(stolen_at.elapsed() < ttl / 3 + Duration::from_secs(2));
    assert!(matches!(lease.finish(Outcome::success()).await, Err(Error::Lost(_))));
    let (status, runner, attempt, _, _) = row_of(&db, id).await;
    assert_eq!(
        (status.as_str(), runner.as_str(), attempt),
        ("RUNNING", "thief", 2),
        "the lost holder finished nothing"
    );
    let ok: bool = db
        .query_one("SELECT lease_sched.lease_finish($1, $2, 'SUCCESS')", &[&id, &thief_token.unwrap()])
        .await
        .unwrap()
        .get(0);
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_the_database_knows_before_anyone_may_steal() {
    let proxy = Proxy::start().await;
    let (mut db, job) = (db().await, unique("rs_cut"));
    let client = Client::connect(&proxy.dsn()).await.unwrap();
    let ttl = Duration::from_secs(3);
    let lease = client.try_claim(&job, plan(0), "holder", ttl).await.unwrap().unwrap();
    let id = lease.execution_id();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    proxy.stop();
    let cut = Instant::now();
    tokio::time::timeout(ttl, lease.lost()).await.expect("lost by the local deadline");
    let margin: f64 = db
        .query_one(
            "SELECT extract(epoch FROM stale_after - clock_timestamp())::float8 FROM lease_sched.sys_cron_executions WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(margin > 0.0, "lost is known {margin} s before stale_after (cut {:?} ago)", cut.elapsed());
    let deadline = Instant::now() + ttl + Duration::from_secs(2);
    loop {
        if steal(&mut db, &job, plan(0), id, false).await.0 == "stole" {
            break;
        }
        assert!(Instant::now() < deadline, "stealable after stale_after");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(lease.finish(Outcome::success()).await, Err(Error::Lost(_))));
    assert_eq!(row_of(&db, id).await.1, "thief");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_holders_over_eight_plans_never_overlap() {
    let (client, db, job) = (Client::connect(&dsn()).await.unwrap(), db().await, unique("rs_many"));
    let done = Arc::new(Mutex::new(Vec::new()));
    let mut set = JoinSet::new();
    for i in 0..32u32 {
        let (client, job, done) = (client.clone(), job.clone(), done.clone());
        set.spawn(async move {
            let Some(lease) =
                client.try_claim(&job, plan(i % 8), &format!("h{i}"), Duration::from_secs(2)).await.unwrap()
            else {
                return;
            };
            tokio::time::sleep(Duration::from_millis(200 + u64::from(i) * 10)).await;
            lease.check().unwrap();
            done.lock().unwrap().push(i % 8);
            lease.finish(Outcome::success()).await.unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let mut done = done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, (0..8).collect::<Vec<_>>(), "each plan's work done exactly once");
    let n: i64 = db
        .query_one("SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SUCCESS' AND attempt = 1", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leaders_never_both_hold() {
    let client = Client::connect(&dsn()).await.unwrap();
    let name = unique("rs_leader");
    let intervals = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + Duration::from_secs(4);
    let mut set = JoinSet::new();
    for i in 0..2u64 {
        let (client, name, intervals) = (client.clone(), name.clone(), intervals.clone());
        set.spawn(async move {
            while Instant::now() < end {
                match client.try_lead(&name, &format!("c{i}"), Duration::from_secs(5)).await.unwrap() {
                    Some(leader) => {
                        let start = Instant::now();
                        tokio::time::sleep(Duration::from_millis(
                            50 + (start.elapsed().subsec_nanos() as u64 % 300) + i * 37,
                        ))
                        .await;
                        // The term ends where the holder last knew it still led: the
                        // timestamp before check(), which sees a loss before the lock can
                        // pass to the other candidate.
                        let stop = Instant::now();
                        leader.check().unwrap();
                        leader.release().await.unwrap();
                        intervals.lock().unwrap().push((start, stop, i));
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let mut v = intervals.lock().unwrap().clone();
    v.sort();
    // The lock promises terms that never overlap, not that both candidates get one (on a
    // busy machine one candidate can win every term).
    assert!(!v.is_empty(), "no candidate led in 4 s");
    for w in v.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlap: {w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_stops_heartbeating_and_the_lease_expires() {
    let (client, mut db, job) = (Client::connect(&dsn()).await.unwrap(), db().await, unique("rs_drop"));
    let lease = client.try_claim(&job, plan(0), "holder", Duration::from_secs(1)).await.unwrap().unwrap();
    let id = lease.execution_id();
    drop(lease);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(steal(&mut db, &job, plan(0), id, false).await.0, "stole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_touches_in_the_background_and_fence_is_clear_when_missing() {
    let client = Client::connect(&dsn()).await.unwrap();
    let rt = client.runtime(&unique("rs_rt"), Duration::from_millis(200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(rt.touches() >= 3, "{}", rt.touches());
    rt.stop().await;

    let db = db().await;
    let has_fence: bool = db
        .query_one("SELECT EXISTS (SELECT FROM pg_proc WHERE proname = 'lock_fence' AND pronamespace = 'lease_sched'::regnamespace)", &[])
        .await
        .unwrap()
        .get(0);
    let leader = client.try_lead(&unique("rs_fence"), "me", Duration::from_secs(10)).await.unwrap().unwrap();
    match leader.fence(&db).await {
        Ok(()) => assert!(has_fence),
        Err(Error::FenceUnavailable(what)) => assert!(!has_fence && what == "lock_fence"),
        Err(e) => panic!("{e}"),
    }
    leader.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_cannot_be_stored_still_finishes_the_run() {
    // Over 16 KiB, or refused by jsonb (a \u0000): finished SUCCESS all the same, with
    // {"result_not_stored": why}; nothing is left RUNNING to run again after stale_timeout.
    let (client, db, job) = (Client::connect(&dsn()).await.unwrap(), db().await, unique("rs_unstored"));
    let values = [serde_json::json!({"blob": "x".repeat(17 * 1024)}), serde_json::json!("nul \u{0} inside")];
    for (i, value) in values.into_iter().enumerate() {
        let lease = client.try_claim(&job, plan(i as u32), "holder", Duration::from_secs(3)).await.unwrap().unwrap();
        let id = lease.execution_id();
        lease.finish(Outcome::success_with(value, Some(7))).await.unwrap();
        let r = db
            .query_one(
                "SELECT status, result, rows_affected FROM lease_sched.sys_cron_executions WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!((r.get::<_, String>(0).as_str(), r.get::<_, Option<i64>>(2)), ("SUCCESS", Some(7)));
        let result: serde_json::Value = r.get(1);
        assert!(result["result_not_stored"].as_str().is_some_and(|w| !w.is_empty()), "{result}");
    }
}
