//! Shared helpers for the integration tests: connections to the cluster that
//! scripts/test.sh started, the lease API called by name as users call it, and the
//! assertions several test files make. Set-up of things beside that cluster (pgbouncer,
//! clusters of a test's own, scratch databases and roles) is in `fixtures`.
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use postgres::{Client, NoTls, Row};
use uuid::Uuid;

pub mod fixtures;

pub fn dsn() -> String {
    std::env::var("LEASE_SCHED_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=55440 dbname=lease_sched user=postgres".into())
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
    let args =
        ClaimArgs { stale_timeout: Duration::from_millis(200), allow_stale_reentry: false, ..Default::default() };
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

/// True (after printing a skip line with the reason) when the edition under test is the
/// native one and the test checks what only the portable edition has (its install script,
/// its plain tables in pg_dump, its pg_cron helpers).
pub fn portable_only(test: &str, why: &str) -> bool {
    if portable() {
        return false;
    }
    skip(test, &format!("portable edition only: {why}"));
    true
}

/// The released 0.2.0, by commit (releases are commits of main, not tags).
pub const RELEASED_0_2_0: &str = "97628a9";

/// The files under `paths` exactly as 0.2.0 released them, extracted from this checkout's git
/// history into a fresh directory, with 0.2.0's Cargo.lock and a workspace root over
/// clients/rust and examples (so released Rust code builds with the versions it was released
/// with). None, after a skip line, when the checkout has no such history (a tarball, a
/// shallow clone): nothing released can be run then.
pub fn released_0_2_0(test: &str, paths: &[&str]) -> Option<std::path::PathBuf> {
    use std::process::{Command, Stdio};
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let git = |args: &[&str]| Command::new("git").arg("-C").arg(&repo).args(args).stderr(Stdio::null()).output();
    let have = git(&["cat-file", "-e", &format!("{RELEASED_0_2_0}^{{commit}}")]).map(|o| o.status.success());
    if !have.unwrap_or(false) {
        skip(test, &format!("this checkout has no git history with 0.2.0 ({RELEASED_0_2_0})"));
        return None;
    }
    let dir = std::env::temp_dir().join(format!("lease_sched_released_0_2_0_{}", unique("src")));
    std::fs::create_dir_all(&dir).unwrap();
    let mut archive = vec!["archive", "--format=tar", RELEASED_0_2_0];
    archive.extend_from_slice(paths);
    let tar = git(&archive).expect("git archive");
    assert!(tar.status.success(), "git archive {paths:?} failed");
    let mut untar = Command::new("tar").arg("-x").arg("-C").arg(&dir).stdin(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(untar.stdin.as_mut().unwrap(), &tar.stdout).unwrap();
    assert!(untar.wait().unwrap().success());
    let lock = git(&["show", &format!("{RELEASED_0_2_0}:Cargo.lock")]).unwrap();
    std::fs::write(dir.join("Cargo.lock"), lock.stdout).unwrap();
    let members: Vec<String> = ["clients/rust", "examples"]
        .iter()
        .filter(|m| dir.join(m).join("Cargo.toml").exists())
        .map(|m| format!("{m:?}"))
        .collect();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!("[workspace]\nresolver = \"2\"\nmembers = [{}]\n", members.join(", ")),
    )
    .unwrap();
    Some(dir)
}

/// (SQLSTATE, message) of a failed call.
pub fn db_error(e: &postgres::Error) -> (String, String) {
    (sqlstate(e), e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))
}

/// Assert `r` failed with LS001 and a message containing every one of `needles`.
pub fn assert_ls001<T: std::fmt::Debug>(r: Result<T, postgres::Error>, needles: &[&str], what: &str) {
    let e = r.expect_err(what);
    let (code, message) = db_error(&e);
    assert_eq!(code, "LS001", "{what}: SQLSTATE {code} ({message})");
    for n in needles {
        assert!(message.contains(n), "{what}: message {message:?} should contain {n:?}");
    }
}

/// An error a user provoked is PostgreSQL's own: no Rust internals in its message, detail
/// or hint, and not XX000.
pub fn assert_clean_error(e: &postgres::Error, what: &str) {
    let Some(db) = e.as_db_error() else { panic!("{what}: not a server error: {e}") };
    for text in [Some(db.message()), db.detail(), db.hint()].into_iter().flatten() {
        for bad in ["backtrace", ".rs:", "pgrx", "panicked"] {
            assert!(!text.contains(bad), "{what}: the error carries {bad:?}: {text}");
        }
    }
    assert_ne!(db.code().code(), "XX000", "{what}: an internal error: {}", db.message());
}

/// The first column of the first row, as a number (a count).
pub fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// lock_acquire for an hour: (lock_token, fencing_token) when acquired.
pub fn lock_acquire(c: &mut Client, name: &str, holder: &str) -> Option<(Uuid, i64)> {
    let r = c
        .query_one(
            "SELECT acquired, lock_token, fencing_token FROM lease_sched.lock_acquire($1, $2, '1 hour')",
            &[&name, &holder],
        )
        .unwrap();
    if r.get::<_, bool>(0) {
        Some((r.get(1), r.get(2)))
    } else {
        None
    }
}

/// Let a lock's ttl run out now.
pub fn expire_lock(c: &mut Client, name: &str) {
    c.execute("UPDATE lease_sched.locks SET expires_at = now() - interval '1 second' WHERE name = $1", &[&name])
        .unwrap();
}

/// Make a lease stale now.
pub fn make_stale(c: &mut Client, id: Uuid) {
    c.execute(
        "UPDATE lease_sched.sys_cron_executions SET stale_after = now() - interval '1 second' WHERE id = $1",
        &[&id],
    )
    .unwrap();
}

pub fn lock_fence(c: &mut Client, name: &str, token: i64) -> Result<(), postgres::Error> {
    c.execute("SELECT lease_sched.lock_fence($1, $2)", &[&name, &token]).map(|_| ())
}

pub fn lease_fence(c: &mut Client, id: Uuid, token: i64) -> Result<(), postgres::Error> {
    c.execute("SELECT lease_sched.lease_fence($1, $2)", &[&id, &token]).map(|_| ())
}

/// Grant `n` lease tokens and `n` lock tokens; return the highest.
pub fn grant_tokens(c: &mut Client, n: i64, tag: &str) -> i64 {
    let mut highest = 0;
    for i in 0..n {
        let r = claim(c, &format!("{tag}_job"), plan() + chrono::Duration::seconds(i), "r");
        assert_eq!(r.outcome, "won");
        highest = highest.max(r.fencing_token.unwrap());
        let (_, t) = lock_acquire(c, &format!("{tag}_lock_{i}"), "h").unwrap();
        highest = highest.max(t);
    }
    highest
}

/// A lease of a fresh job with max_attempts 40, pushed to `attempt` by hand.
pub fn lease_at_attempt(c: &mut Client, attempt: i32, stale_timeout: Duration) -> Claim {
    let args = ClaimArgs { max_attempts: 40, stale_timeout, allow_stale_reentry: false };
    let l = claim_with(c, &unique("backoff"), plan(), "r1", &args);
    c.execute("UPDATE lease_sched.sys_cron_executions SET attempt = $2 WHERE id = $1", &[&l.id(), &attempt]).unwrap();
    l
}

/// Whether a FAILED run's retry is due exactly retry_backoff_max after it finished.
pub fn retry_at_backoff_max(c: &mut Client, id: Uuid) -> bool {
    c.query_one(
        "SELECT next_retry_at = finished_at + current_setting('lease_sched.retry_backoff_max')::interval
           FROM lease_sched.sys_cron_executions WHERE id = $1",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// The pid of the background sweeper of the test database, if one runs.
pub fn sweeper_pid(c: &mut Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'lease_sched sweeper'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Tests of one file that share server-wide state (the touch buffer, the sweeper, a
/// restart) take this, so they run one at a time; test files run one after another.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path in this checkout (the repository root, then `path`).
pub fn checkout(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

/// How many runs of `job` finished SUCCESS.
pub fn successes(c: &mut Client, job: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM lease_sched.sys_cron_executions WHERE job_name = $1 AND status = 'SUCCESS'",
        &[&job],
    )
    .unwrap()
    .get(0)
}

/// Whether `job` has exactly one SUCCESS run.
pub fn succeeded_once(job: &str) -> bool {
    successes(&mut connect(), job) == 1
}
