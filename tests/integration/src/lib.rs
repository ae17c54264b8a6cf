//! Shared helpers for the integration tests: connections to the cluster that
//! scripts/test.sh started, and the lease API called by name as users call it.
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use postgres::{Client, NoTls, Row};
use uuid::Uuid;

pub fn dsn() -> String {
    std::env::var("LEASE_SCHED_DSN").unwrap_or_else(|_| "host=127.0.0.1 port=55440 dbname=lease_sched user=postgres".into())
}

pub fn connect() -> Client {
    let mut c = Client::connect(&dsn(), NoTls).expect("connect to the test cluster (run scripts/test.sh)");
    c.batch_execute("CREATE EXTENSION IF NOT EXISTS lease_sched").ok();
    c
}

pub fn connect_as(role: &str) -> Client {
    Client::connect(&dsn().replace("user=postgres", &format!("user={role}")), NoTls).expect("connect as role")
}

/// N distinct TCP ports nobody on this machine listens on now, chosen by the kernel. Tests
/// that start clusters of their own take their ports from here: a fixed port collides with
/// whatever else runs on a shared machine (another checkout's suite, a scratch cluster).
/// Every socket is held until all N are chosen, so the ports differ.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> =
        (0..N).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// A name no other test uses, so tests can share one database and run in parallel.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &Uuid::new_v4().simple().to_string()[..12])
}

pub fn plan() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 3, 0, 0).unwrap()
}

#[derive(Debug, Clone)]
pub struct Claim {
    pub outcome: String,
    pub execution_id: Option<Uuid>,
    pub lease_token: Option<Uuid>,
    pub attempt: Option<i32>,
    pub fencing_token: Option<i64>,
    pub stale_after: Option<DateTime<Utc>>,
}

impl Claim {
    fn from_row(r: &Row) -> Claim {
        Claim {
            outcome: r.get("outcome"),
            execution_id: r.get("execution_id"),
            lease_token: r.get("lease_token"),
            attempt: r.get("attempt"),
            fencing_token: r.get("fencing_token"),
            stale_after: r.get("stale_after"),
        }
    }
    pub fn id(&self) -> Uuid {
        self.execution_id.unwrap()
    }
    pub fn token(&self) -> Uuid {
        self.lease_token.unwrap()
    }
}

pub struct ClaimArgs {
    pub stale_timeout: Duration,
    pub max_attempts: i32,
    pub allow_stale_reentry: bool,
}

impl Default for ClaimArgs {
    fn default() -> Self {
        ClaimArgs { stale_timeout: Duration::from_secs(300), max_attempts: 3, allow_stale_reentry: true }
    }
}

pub fn secs(d: Duration) -> String {
    format!("{} microseconds", d.as_micros())
}

pub fn claim_with(c: &mut Client, job: &str, plan: DateTime<Utc>, runner: &str, a: &ClaimArgs) -> Claim {
    try_claim_with(c, job, plan, runner, a).expect("lease_try_claim")
}

pub fn try_claim_with(
    c: &mut Client,
    job: &str,
    plan: DateTime<Utc>,
    runner: &str,
    a: &ClaimArgs,
) -> Result<Claim, postgres::Error> {
    let rows = c.query(
        "SELECT * FROM lease_sched.lease_try_claim(job_name => $1, plan_time => $2, runner_id => $3,
             stale_timeout => $4::text::interval, max_attempts => $5, allow_stale_reentry => $6)",
        &[&job, &plan, &runner, &secs(a.stale_timeout), &a.max_attempts, &a.allow_stale_reentry],
    )?;
    assert_eq!(rows.len(), 1, "lease_try_claim returns exactly one row");
    Ok(Claim::from_row(&rows[0]))
}

pub fn claim(c: &mut Client, job: &str, plan: DateTime<Utc>, runner: &str) -> Claim {
    claim_with(c, job, plan, runner, &ClaimArgs::default())
}

pub fn heartbeat(c: &mut Client, id: Uuid, token: Uuid) -> bool {
    c.query_one("SELECT lease_sched.lease_heartbeat(execution_id => $1, lease_token => $2)", &[&id, &token])
        .unwrap()
        .get(0)
}

pub fn finish_ok(c: &mut Client, id: Uuid, token: Uuid) -> bool {
    c.query_one(
        "SELECT lease_sched.lease_finish(execution_id => $1, lease_token => $2, status => 'SUCCESS')",
        &[&id, &token],
    )
    .unwrap()
    .get(0)
}

/// FAILED with an explicit retry delay.
pub fn finish_failed(c: &mut Client, id: Uuid, token: Uuid, retry_in: Duration) -> bool {
    c.query_one(
        "SELECT lease_sched.lease_finish(execution_id => $1, lease_token => $2, status => 'FAILED',
             retry_in => $3::text::interval)",
        &[&id, &token, &secs(retry_in)],
    )
    .unwrap()
    .get(0)
}

pub fn status_of(c: &mut Client, id: Uuid) -> String {
    c.query_one("SELECT status FROM lease_sched.sys_cron_executions WHERE id = $1", &[&id]).unwrap().get(0)
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

pub fn wait_until(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pred()
}

/// Run pg_ctl on the test cluster as the postgres user.
pub fn pg_ctl(args: &[&str]) {
    let bin = pgbin();
    let data = std::env::var("LEASE_SCHED_PGDATA").expect("LEASE_SCHED_PGDATA (set by scripts/test.sh)");
    let log = std::env::var("LEASE_SCHED_LOG").unwrap_or_else(|_| "/dev/null".into());
    let status = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{bin}/pg_ctl"), "-D", &data, "-l", &log, "-w"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("pg_ctl");
    assert!(status.success(), "pg_ctl {args:?}");
}

/// Wait until the server accepts connections again (after a restart or crash).
pub fn wait_for_server() -> Client {
    connect_retrying(&dsn())
}

/// One counter from lease_sched.stats().
pub fn stat(c: &mut Client, name: &str) -> i64 {
    c.query_one("SELECT value FROM lease_sched.stats() WHERE name = $1", &[&name]).unwrap().get(0)
}

pub fn register_runtime(c: &mut Client) -> Uuid {
    c.query_one("SELECT lease_sched.runtime_register($1)", &[&unique("rt")]).unwrap().get(0)
}

pub fn touch(c: &mut Client, id: Uuid) -> bool {
    c.query_one("SELECT lease_sched.runtime_touch($1)", &[&id]).unwrap().get(0)
}

pub fn pending(c: &mut Client) -> i64 {
    c.query_one("SELECT lease_sched.runtime_pending()", &[]).unwrap().get(0)
}

pub fn flush(c: &mut Client) -> i64 {
    c.query_one("SELECT lease_sched.runtime_flush()", &[]).unwrap().get(0)
}

/// (status, seconds since last_seen_at) of a runtime.
pub fn runtime_state(c: &mut Client, id: Uuid) -> (String, f64) {
    let r = c
        .query_one(
            "SELECT status, extract(epoch FROM now() - last_seen_at)::float8 FROM lease_sched.runtimes WHERE id = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

pub fn set_last_seen_ago(c: &mut Client, id: Uuid, secs: i64) {
    c.execute(
        "UPDATE lease_sched.runtimes SET last_seen_at = now() - make_interval(secs => $2) WHERE id = $1",
        &[&id, &(secs as f64)],
    )
    .unwrap();
}

/// A call that must fail with a class-22 SQLSTATE whose message names `argument`.
pub fn assert_rejects(c: &mut Client, sql: &str, argument: &str) {
    let e = c.query(sql, &[]).expect_err(sql);
    assert!(sqlstate(&e).starts_with("22"), "{sql}: SQLSTATE {} ({e})", sqlstate(&e));
    let message = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(message.contains(argument), "{sql}: message {message:?} should name {argument}");
}

/// Connect to `dsn`, retrying while the server starts (up to 30 s).
pub fn connect_retrying(dsn: &str) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(dsn, NoTls) {
            Ok(c) => return c,
            Err(e) if std::time::Instant::now() > deadline => panic!("connect {dsn}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A lease that goes stale in 200 ms and may not be stolen: the sweep must fail it.
pub fn abandoned_lease(c: &mut Client) -> Claim {
    let args = ClaimArgs { stale_timeout: Duration::from_millis(200), allow_stale_reentry: false, ..Default::default() };
    claim_with(c, &unique("abandoned"), plan(), "r1", &args)
}

/// The major version of the PostgreSQL under test (scripts/test.sh exports
/// LEASE_SCHED_PG_MAJOR; 15 when run by hand without it).
pub fn pg_major() -> u32 {
    std::env::var("LEASE_SCHED_PG_MAJOR").ok().and_then(|v| v.parse().ok()).unwrap_or(15)
}

/// The bin directory of the PostgreSQL under test (psql, pg_dump, pg_ctl, pg_basebackup of
/// the same major as the server): LEASE_SCHED_PGBIN, set by scripts/test.sh per major. The
/// one place the tests learn it: no default, since a guessed path would run another major's
/// tools against the server.
pub fn pgbin() -> String {
    std::env::var("LEASE_SCHED_PGBIN")
        .expect("LEASE_SCHED_PGBIN: the bin directory of the PostgreSQL under test (scripts/test.sh sets it; scripts/cluster.sh pgbin MAJOR prints it)")
}

/// Whether the test cluster preloads pg_cron (scripts/test.sh exports
/// LEASE_SCHED_HAS_PG_CRON=0 for PostgreSQL 18, which has no pg_cron here).
pub fn has_pg_cron() -> bool {
    std::env::var("LEASE_SCHED_HAS_PG_CRON").map(|v| v != "0").unwrap_or(true)
}

/// Say that a test skipped itself, and why. Written straight to stderr (libtest does not
/// capture that), so it shows in the log; scripts/test.sh counts these lines as skipped.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\nskipped test: {test}: {why}");
}

/// True (after printing a skip line) when the cluster has no pg_cron.
pub fn skip_without_pg_cron(test: &str) -> bool {
    if has_pg_cron() {
        return false;
    }
    skip(test, &format!("PostgreSQL {} here has no pg_cron", pg_major()));
    true
}

/// The edition under test: `portable` when scripts/portable_test.sh runs these tests against
/// the portable edition (SQL and PL/pgSQL only, docs/portable.md), else `native`.
pub fn edition() -> String {
    std::env::var("LEASE_SCHED_EDITION").unwrap_or_else(|_| "native".into())
}

pub fn portable() -> bool {
    edition() == "portable"
}

/// True (after printing a skip line with the reason) when the edition under test is the
/// portable one and the test checks behaviour only the native edition has (shared memory,
/// the background worker, its counters, the statement timer of run()).
pub fn native_only(test: &str, why: &str) -> bool {
    if !portable() {
        return false;
    }
    skip(test, &format!("native edition only: {why}"));
    true
}
